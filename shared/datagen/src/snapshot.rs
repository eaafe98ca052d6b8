//! Snapshots of what the store-reading sources draw from, taken when a run
//! is created and kept beside it, so every shard sees the same records.

use orchestrator_core::store::{
    campaign_entity as campaigns, campaign_result_entity as results, feedback_entity as feedback,
    pack_entity as packs, pack_file_entity as pack_files, workflow_task_entity as tasks,
};
use orchestrator_models::{Models, ProviderKind};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;

use crate::{
    PlanError, SourceWeight,
    sources::{self, Material, Record},
};

/// Most records one source keeps in its snapshot.
pub const MAX_RECORDS: usize = 100_000;
/// Most bytes of text one source keeps.
const MAX_BYTES: usize = 64 << 20;

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Invalid(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] sea_orm::DbErr),
}

fn refused(message: String) -> SnapshotError {
    PlanError {
        field: "sources",
        message,
    }
    .into()
}

/// The records `entry` draws from; `None` for the sources that need none
/// (`synthetic`, `llm`). A campaign or pack that does not exist, a source
/// with nothing to draw from, or an `llm` model that cannot answer here
/// is refused, naming it.
pub async fn take(
    db: &impl ConnectionTrait,
    models: &Models,
    entry: &SourceWeight,
) -> Result<Option<Material>, SnapshotError> {
    let material = match entry.source.as_str() {
        "campaign" => campaign(db, entry.campaign.as_deref().unwrap_or_default()).await?,
        "context_pack" => context_pack(db, entry.pack.as_deref().unwrap_or_default()).await?,
        "workflows" => workflows(db).await?,
        "feedback" => rated(db, entry.model.as_deref()).await?,
        "llm" => {
            for id in [&entry.model, &entry.validator].into_iter().flatten() {
                usable(models, id)?;
            }
            return Ok(None);
        }
        _ => return Ok(None),
    };
    if material.records.is_empty() {
        return Err(refused(format!(
            "{} has nothing to generate from yet{}",
            entry.source,
            match entry.source.as_str() {
                "campaign" => ": the campaign has found no items",
                "context_pack" => ": the pack holds no text",
                "workflows" => ": no workflow task has finished with an answer",
                _ => ": no feedback carries a corrected or approved answer",
            }
        )));
    }
    Ok(Some(material))
}

/// A model that can answer in this process: in the registry, and for a
/// local model, its weights on disk.
fn usable(models: &Models, id: &str) -> Result<(), SnapshotError> {
    let Some(spec) = models.resolve(id) else {
        return Err(refused(format!(
            "llm: no model {:?} in the registry",
            id.chars().take(64).collect::<String>()
        )));
    };
    if spec.provider == ProviderKind::Local && !models.weights_path(&spec).is_file() {
        return Err(refused(format!(
            "llm: the weights of {} are not on this machine (fetch them with deploy/scripts/fetch-models.sh)",
            spec.id
        )));
    }
    Ok(())
}

/// Adds records while the snapshot's limits allow.
struct Collect {
    material: Material,
    bytes: usize,
}

impl Collect {
    fn new() -> Self {
        Self {
            material: Material::default(),
            bytes: 0,
        }
    }

    /// False once full.
    fn add(&mut self, record: Record) -> bool {
        if self.material.records.len() >= MAX_RECORDS || self.bytes >= MAX_BYTES {
            return false;
        }
        self.bytes += record.title.len() + record.text.len() + record.data.to_string().len();
        self.material.records.push(record);
        true
    }
}

async fn campaign(db: &impl ConnectionTrait, id: &str) -> Result<Material, SnapshotError> {
    if campaigns::Entity::find_by_id(id).one(db).await?.is_none() {
        return Err(refused(format!(
            "campaign: no campaign {:?}",
            id.chars().take(64).collect::<String>()
        )));
    }
    let rows = results::Entity::find()
        .filter(results::Column::CampaignId.eq(id))
        .order_by_asc(results::Column::Id)
        .limit(MAX_RECORDS as u64)
        .all(db)
        .await?;
    let mut out = Collect::new();
    for row in rows {
        let data: Value = serde_json::from_str(&row.data).unwrap_or(Value::Null);
        let title = ["name", "title", "headline"]
            .iter()
            .find_map(|key| data.get(*key).and_then(Value::as_str))
            .unwrap_or_default()
            .to_string();
        if !out.add(Record {
            kind: row.kind,
            title,
            text: row.url,
            data,
        }) {
            break;
        }
    }
    Ok(out.material)
}

async fn context_pack(db: &impl ConnectionTrait, id: &str) -> Result<Material, SnapshotError> {
    if packs::Entity::find_by_id(id).one(db).await?.is_none() {
        return Err(refused(format!(
            "context_pack: no pack {:?}",
            id.chars().take(64).collect::<String>()
        )));
    }
    let files = pack_files::Entity::find()
        .filter(pack_files::Column::PackId.eq(id))
        .order_by_asc(pack_files::Column::Path)
        .all(db)
        .await?;
    let mut out = Collect::new();
    for file in files {
        for section in sources::sections(&file.path, &file.content) {
            if !out.add(section) {
                return Ok(out.material);
            }
        }
    }
    Ok(out.material)
}

async fn workflows(db: &impl ConnectionTrait) -> Result<Material, SnapshotError> {
    let rows = tasks::Entity::find()
        .filter(tasks::Column::Status.eq("done"))
        .filter(tasks::Column::Output.is_not_null())
        .order_by_desc(tasks::Column::UpdatedAtMs)
        .limit(MAX_RECORDS as u64)
        .all(db)
        .await?;
    Ok(answered(rows.into_iter().map(|row| {
        (
            row.task_type,
            row.description,
            row.output.unwrap_or_default(),
        )
    })))
}

async fn rated(db: &impl ConnectionTrait, model: Option<&str>) -> Result<Material, SnapshotError> {
    let mut query = feedback::Entity::find().filter(feedback::Column::Target.is_not_null());
    if let Some(model) = model {
        query = query.filter(feedback::Column::BaseModel.eq(model));
    }
    let rows = query
        .order_by_asc(feedback::Column::CreatedAtMs)
        .limit(MAX_RECORDS as u64)
        .all(db)
        .await?;
    Ok(answered(rows.into_iter().map(|row| {
        (row.base_model, row.prompt, row.target.unwrap_or_default())
    })))
}

/// (kind, prompt, answer) triples as records, leaving out those with an
/// empty prompt or answer.
fn answered(rows: impl Iterator<Item = (String, String, String)>) -> Material {
    let mut out = Collect::new();
    for (kind, prompt, answer) in rows {
        if prompt.trim().is_empty() || answer.trim().is_empty() {
            continue;
        }
        let record = Record {
            kind,
            title: prompt,
            text: answer,
            data: Value::Null,
        };
        if !out.add(record) {
            break;
        }
    }
    out.material
}
