//! The `embed` queue: embeds the files of a context pack. Each job names a
//! few files with the content hash they had when queued; a file changed
//! since then is skipped here, because the change queued its own job.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use orchestrator_queue::{JobContext, JobError, JobHandler, LeasedJob, QueueDefaults};

use crate::{Memory, packs::EMBED_QUEUE};
const MAX_FILES_PER_JOB: usize = 64;

pub struct Embed {
    memory: Arc<Memory>,
}

impl Embed {
    pub fn new(memory: Arc<Memory>) -> Self {
        Self { memory }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedPayload {
    pack_id: String,
    files: Vec<FileRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRef {
    path: String,
    hash: String,
}

fn parse(payload: &Value) -> Result<EmbedPayload, String> {
    let parsed: EmbedPayload =
        serde_json::from_value(payload.clone()).map_err(|e| format!("embed payload: {e}"))?;
    uuid::Uuid::parse_str(&parsed.pack_id)
        .map_err(|_| "embed payload: pack_id must be a UUID".to_string())?;
    if parsed.files.is_empty() || parsed.files.len() > MAX_FILES_PER_JOB {
        return Err(format!("embed payload: 1 to {MAX_FILES_PER_JOB} files"));
    }
    Ok(parsed)
}

#[async_trait]
impl JobHandler for Embed {
    fn queue(&self) -> &'static str {
        EMBED_QUEUE
    }

    fn internal(&self) -> bool {
        true
    }

    fn defaults(&self) -> QueueDefaults {
        // Embedding is CPU-bound and batched inside the model: two jobs at
        // once keep both cores busy without thrashing.
        QueueDefaults {
            max_attempts: 3,
            backoff_ms: 2_000,
            concurrency: 2,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        let payload = parse(&job.payload).map_err(JobError::new)?;
        let packs = &self.memory.packs;
        let (mut indexed, mut skipped, mut chunks) = (0, 0, 0);
        for file in &payload.files {
            let row = packs
                .file(&payload.pack_id, &file.path)
                .await
                .map_err(|e| JobError::new(e.to_string()))?;
            let Some(row) = row.filter(|r| r.hash == file.hash) else {
                skipped += 1;
                continue;
            };
            let outcome = self
                .memory
                .index_document(&payload.pack_id, &row.path, &row.kind, &row.content)
                .await;
            let outcome = match outcome {
                Ok(n) => Ok(n),
                // A missing model fails the job (and retries), it is not
                // the file's fault.
                Err(err) if !self.memory.model_present() => {
                    return Err(JobError::new(format!("{err:#}")));
                }
                Err(err) => Err(format!("{err:#}")),
            };
            if let Ok(n) = outcome {
                chunks += n;
                indexed += 1;
            }
            packs
                .finish_file(&payload.pack_id, &row.path, &row.hash, outcome)
                .await
                .map_err(|e| JobError::new(e.to_string()))?;
        }
        Ok(json!({"indexed": indexed, "skipped": skipped, "chunks": chunks}))
    }
}
