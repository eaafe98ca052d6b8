//! Feedback: what users say about outputs, checked and stored; the ones that
//! teach something (a correction, or a well-rated response) become training
//! examples and wait in the buffer until a run takes them.
//!
//! Every feedback row lives in the store. The buffer is the queue of
//! example ids waiting for a run: a Redis stream per base model with Redis
//! (so every API process feeds one buffer), the rows themselves (those no
//! run has taken) in embedded mode.

use fred::{prelude::*, types::streams::XReadValue};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::data::Example;
use orchestrator_core::{now_ms, store::feedback_entity as feedback};

/// Longest prompt, response or correction accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Ratings run from 1 (bad) to 5 (excellent); 4 and 5 make a response a
/// training target.
pub const RATINGS: std::ops::RangeInclusive<i64> = 1..=5;
pub const GOOD_RATING: i64 = 4;

/// `POST /api/v1/feedback`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// A workflow task the feedback is about: its step and output are the
    /// prompt and response unless given here.
    pub task_id: Option<String>,
    /// The local base model to train (default: the task's model, else the
    /// first local model of the registry).
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    /// 1 (bad) to 5 (excellent).
    pub rating: i64,
    /// The answer that should have been given.
    pub correction: Option<String>,
}

impl FeedbackRequest {
    /// Checks the fields that need no lookup.
    pub fn check(&self) -> Result<(), String> {
        if !RATINGS.contains(&self.rating) {
            return Err(format!("rating must be 1 to 5, not {}", self.rating));
        }
        for (name, text) in [
            ("prompt", &self.prompt),
            ("response", &self.response),
            ("correction", &self.correction),
        ] {
            if let Some(text) = text {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(format!(
                        "{name} is {} bytes; at most {MAX_TEXT_BYTES} are accepted",
                        text.len()
                    ));
                }
                if text.trim().is_empty() {
                    return Err(format!("{name} is blank"));
                }
                if text.contains('\0') {
                    return Err(format!("{name} contains a NUL character"));
                }
            }
        }
        if self.task_id.is_none() && self.prompt.is_none() {
            return Err("give a task_id or a prompt".into());
        }
        Ok(())
    }
}

/// What a stored feedback teaches, if anything: the correction, else a
/// well-rated response.
pub fn target(rating: i64, response: Option<&str>, correction: Option<&str>) -> Option<String> {
    correction
        .or(response.filter(|_| rating >= GOOD_RATING))
        .map(str::to_string)
}

/// One feedback, resolved against its task and model.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub task_id: Option<String>,
    pub base_model: String,
    pub prompt: String,
    pub response: Option<String>,
    pub rating: i64,
    pub correction: Option<String>,
    pub synthetic: bool,
}

/// Feedback the API answers with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stored {
    pub id: String,
    pub base_model: String,
    /// True when the feedback became a training example.
    pub example: bool,
    /// Examples waiting for a run for this base model.
    pub buffered: u64,
}

/// The feedback store and buffer.
pub struct Feedback {
    db: DatabaseConnection,
    buffer: Buffer,
}

enum Buffer {
    Table,
    Redis { client: Client, prefix: String },
}

impl Feedback {
    /// A buffer in the store's feedback table.
    pub fn embedded(db: DatabaseConnection) -> Self {
        Self {
            db,
            buffer: Buffer::Table,
        }
    }

    /// A buffer in Redis streams `{prefix}:feedback:{base_model}`.
    pub async fn redis(db: DatabaseConnection, url: &str, prefix: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = std::time::Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.init().await?;
        Ok(Self {
            db,
            buffer: Buffer::Redis {
                client,
                prefix: prefix.to_string(),
            },
        })
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Stores one feedback and, when it teaches something, buffers it.
    pub async fn add(&self, new: NewFeedback) -> anyhow::Result<Stored> {
        let id = uuid::Uuid::now_v7().to_string();
        let target = target(
            new.rating,
            new.response.as_deref(),
            new.correction.as_deref(),
        );
        let example = target.is_some();
        let row = feedback::ActiveModel {
            id: Set(id.clone()),
            task_id: Set(new.task_id),
            base_model: Set(new.base_model.clone()),
            prompt: Set(new.prompt),
            response: Set(new.response),
            rating: Set(new.rating as i32),
            correction: Set(new.correction),
            target: Set(target),
            synthetic: Set(new.synthetic),
            run_id: Set(None),
            created_at_ms: Set(now_ms() as i64),
        };
        feedback::Entity::insert(row).exec(&self.db).await?;
        if example && let Buffer::Redis { client, prefix } = &self.buffer {
            let _: String = client
                .xadd(
                    stream(prefix, &new.base_model),
                    false,
                    None,
                    "*",
                    ("id", id.as_str()),
                )
                .await?;
        }
        Ok(Stored {
            id,
            buffered: self.buffered(&new.base_model).await?,
            base_model: new.base_model,
            example,
        })
    }

    /// Examples waiting for a run of `base_model` (the store's rows are the
    /// truth in both modes; the stream holds their ids in order).
    pub async fn buffered(&self, base_model: &str) -> anyhow::Result<u64> {
        Ok(waiting(base_model).count(&self.db).await?)
    }

    /// Buffered examples of `base_model` given by people, and made up by the
    /// trainer (self-play), counted apart.
    pub async fn buffered_by_origin(&self, base_model: &str) -> anyhow::Result<(u64, u64)> {
        let count = |synthetic: bool| {
            waiting(base_model)
                .filter(feedback::Column::Synthetic.eq(synthetic))
                .count(&self.db)
        };
        Ok((count(false).await?, count(true).await?))
    }

    /// The `nth` (wrapping) buffered human example of `base_model`.
    pub async fn buffered_human(
        &self,
        base_model: &str,
        nth: u64,
    ) -> anyhow::Result<Option<Example>> {
        let (human, _) = self.buffered_by_origin(base_model).await?;
        if human == 0 {
            return Ok(None);
        }
        let row = waiting(base_model)
            .filter(feedback::Column::Synthetic.eq(false))
            .offset(nth % human)
            .one(&self.db)
            .await?;
        Ok(row.and_then(|r| {
            Some(Example {
                prompt: r.prompt,
                target: r.target?,
                synthetic: false,
                held_out: false,
            })
        }))
    }

    /// Hands up to `limit` buffered examples of `base_model` to run `run_id`
    /// inside `txn`: their rows name the run, so they leave the buffer when
    /// `txn` commits. Returns the examples and their buffer entries, which
    /// [`Feedback::forget`] drops from a Redis stream after the commit.
    pub async fn take(
        &self,
        txn: &impl ConnectionTrait,
        base_model: &str,
        run_id: &str,
        limit: u64,
    ) -> anyhow::Result<(Vec<Example>, Vec<String>)> {
        let (ids, entries) = match &self.buffer {
            Buffer::Table => {
                let ids: Vec<String> = waiting(base_model)
                    .select_only()
                    .column(feedback::Column::Id)
                    .limit(limit)
                    .into_tuple()
                    .all(txn)
                    .await?;
                (ids, Vec::new())
            }
            Buffer::Redis { client, prefix } => {
                let read: Vec<XReadValue<String, String, String>> = client
                    .xrange_values(stream(prefix, base_model), "-", "+", Some(limit))
                    .await?;
                let mut ids = Vec::new();
                let mut entries = Vec::new();
                for (entry, fields) in read {
                    if let Some(id) = fields.get("id") {
                        ids.push(id.clone());
                    }
                    entries.push(entry);
                }
                (ids, entries)
            }
        };
        // Claim first, then read what this run got: a concurrent take that
        // saw the same rows finds them claimed (`run_id` no longer null).
        feedback::Entity::update_many()
            .col_expr(
                feedback::Column::RunId,
                sea_orm::sea_query::Expr::value(run_id.to_string()),
            )
            .filter(feedback::Column::Id.is_in(ids))
            .filter(feedback::Column::RunId.is_null())
            .filter(feedback::Column::Target.is_not_null())
            .exec(txn)
            .await?;
        let rows = feedback::Entity::find()
            .filter(feedback::Column::BaseModel.eq(base_model))
            .filter(feedback::Column::RunId.eq(run_id))
            .order_by_asc(feedback::Column::CreatedAtMs)
            .all(txn)
            .await?;
        let examples = rows
            .into_iter()
            .filter_map(|r| {
                Some(Example {
                    prompt: r.prompt,
                    target: r.target?,
                    synthetic: r.synthetic,
                    held_out: false,
                })
            })
            .collect();
        Ok((examples, entries))
    }

    /// Drops stream entries whose examples a committed run holds.
    pub async fn forget(&self, base_model: &str, entries: &[String]) -> anyhow::Result<()> {
        if let Buffer::Redis { client, prefix } = &self.buffer
            && !entries.is_empty()
        {
            let _: i64 = client
                .xdel(stream(prefix, base_model), entries.to_vec())
                .await?;
        }
        Ok(())
    }
}

fn stream(prefix: &str, base_model: &str) -> String {
    format!("{prefix}:feedback:{base_model}")
}

/// Feedback rows that are examples no run has taken.
fn waiting(base_model: &str) -> sea_orm::Select<feedback::Entity> {
    feedback::Entity::find()
        .filter(feedback::Column::BaseModel.eq(base_model))
        .filter(feedback::Column::Target.is_not_null())
        .filter(feedback::Column::RunId.is_null())
        .order_by_asc(feedback::Column::CreatedAtMs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_and_good_responses_are_targets() {
        assert_eq!(target(1, Some("bad"), Some("good")), Some("good".into()));
        assert_eq!(target(5, Some("great"), None), Some("great".into()));
        assert_eq!(target(3, Some("meh"), None), None);
        assert_eq!(target(5, None, None), None);
    }

    #[test]
    fn bad_requests_are_named() {
        let request = |json: &str| serde_json::from_str::<FeedbackRequest>(json).unwrap();
        let huge = "x".repeat(MAX_TEXT_BYTES + 1);
        let cases = [
            (r#"{"prompt": "p", "rating": 9}"#.to_string(), "rating"),
            (r#"{"prompt": "p", "rating": 0}"#.to_string(), "rating"),
            (format!(r#"{{"prompt": "{huge}", "rating": 5}}"#), "at most"),
            (r#"{"prompt": "  ", "rating": 5}"#.to_string(), "blank"),
            (r#"{"rating": 5}"#.to_string(), "task_id or a prompt"),
        ];
        for (json, want) in cases {
            let err = request(&json).check().unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
