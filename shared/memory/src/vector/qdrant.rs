//! Qdrant behind [`VectorStore`], for deployments that outgrow one machine.
//! One collection holds every chunk (cosine distance, the embedder's size),
//! with keyword indexes on the fields filters use.

use anyhow::Context;
use async_trait::async_trait;
use qdrant_client::{
    Payload, Qdrant,
    qdrant::{
        Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
        DeletePointsBuilder, Distance, FieldType, Filter as QdrantFilter, PointStruct,
        SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
        point_id::PointIdOptions,
    },
};

use super::{ChunkPayload, Filter, Hit, Point, SearchMode, VectorStore};

/// Points per upsert request: large enough to amortise the round trip,
/// small enough to stay far below gRPC's message limit.
const UPSERT_BATCH: usize = 256;
const FILTER_FIELDS: [&str; 3] = ["pack", "source", "kind"];

pub struct QdrantStore {
    client: Qdrant,
    collection: String,
}

impl QdrantStore {
    /// Connects and makes sure the collection and its payload indexes exist.
    /// `QDRANT_API_KEY`, when set, authenticates.
    pub async fn connect(url: &str, collection: &str, dimension: usize) -> anyhow::Result<Self> {
        let client = Qdrant::from_url(url)
            .api_key(std::env::var("QDRANT_API_KEY").ok())
            .skip_compatibility_check()
            .build()
            .with_context(|| format!("QDRANT_URL: cannot use {url:?}"))?;
        let exists = client
            .collection_exists(collection)
            .await
            .with_context(|| format!("cannot reach Qdrant at {url}"))?;
        if !exists {
            client
                .create_collection(
                    CreateCollectionBuilder::new(collection).vectors_config(
                        VectorParamsBuilder::new(dimension as u64, Distance::Cosine),
                    ),
                )
                .await
                .with_context(|| format!("creating Qdrant collection {collection}"))?;
            for field in FILTER_FIELDS {
                client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(
                            collection,
                            field,
                            FieldType::Keyword,
                        )
                        .wait(true),
                    )
                    .await?;
            }
        }
        Ok(Self {
            client,
            collection: collection.to_string(),
        })
    }
}

fn to_qdrant(filter: &Filter) -> QdrantFilter {
    let mut conditions = Vec::new();
    if let Some(packs) = &filter.packs {
        conditions.push(Condition::matches("pack", packs.clone()));
    }
    if let Some(source) = &filter.source {
        conditions.push(Condition::matches("source", source.clone()));
    }
    if let Some(kind) = &filter.kind {
        conditions.push(Condition::matches("kind", kind.clone()));
    }
    QdrantFilter::must(conditions)
}

#[async_trait]
impl VectorStore for QdrantStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn upsert(&self, points: Vec<Point>) -> anyhow::Result<()> {
        for batch in points.chunks(UPSERT_BATCH) {
            let structs = batch
                .iter()
                .map(|p| {
                    let payload = Payload::try_from(serde_json::to_value(&p.payload)?)?;
                    Ok(PointStruct::new(
                        p.id.to_string(),
                        p.vector.clone(),
                        payload,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.collection, structs).wait(true))
                .await?;
        }
        Ok(())
    }

    async fn delete(&self, filter: &Filter) -> anyhow::Result<()> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(to_qdrant(filter))
                    .wait(true),
            )
            .await?;
        Ok(())
    }

    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        let request = SearchPointsBuilder::new(&self.collection, vector.to_vec(), k as u64)
            .filter(to_qdrant(filter))
            .with_payload(true)
            .params(SearchParamsBuilder::default().exact(mode == SearchMode::Exact));
        let response = self.client.search_points(request).await?;
        response
            .result
            .into_iter()
            .map(|point| {
                let id = match point.id.and_then(|id| id.point_id_options) {
                    Some(PointIdOptions::Uuid(raw)) => uuid::Uuid::parse_str(&raw)?,
                    other => anyhow::bail!("unexpected point id {other:?} in Qdrant"),
                };
                let payload: ChunkPayload = Payload::from(point.payload).deserialize()?;
                Ok(Hit {
                    id,
                    score: point.score,
                    payload,
                })
            })
            .collect()
    }

    async fn count(&self, filter: &Filter) -> anyhow::Result<u64> {
        let response = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(to_qdrant(filter))
                    .exact(true),
            )
            .await?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}
