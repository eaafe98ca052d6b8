//! Adapter files kept in the store next to their registry row. The trainer
//! writes an adapter to its own disk and, in the transaction that publishes
//! it, into `adapter_files`; a serving process on another machine, or with
//! another data directory, copies them into its own cache the first time it
//! loads that adapter.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use orchestrator_core::store::adapter_file_entity as files;
use orchestrator_llm::lora::CONFIG_FILE;

use crate::adapters::AdapterRow;

/// Largest adapter file kept in the store (a rank-64 adapter on every
/// projection of a 1B model is about 100 MiB).
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Stores every file of the adapter directory `dir` under `adapter_id`.
pub async fn store(txn: &impl ConnectionTrait, adapter_id: &str, dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let size = entry.metadata()?.len();
        anyhow::ensure!(
            size <= MAX_FILE_BYTES,
            "{} is over {MAX_FILE_BYTES} bytes",
            entry.path().display()
        );
        let row = files::ActiveModel {
            adapter_id: Set(adapter_id.to_string()),
            name: Set(entry.file_name().to_string_lossy().into_owned()),
            content: Set(std::fs::read(entry.path())?),
        };
        files::Entity::insert(row).exec(txn).await?;
    }
    Ok(())
}

/// A directory on this machine holding `adapter`'s files: where the trainer
/// wrote them when this process can read that, else a copy from the store
/// under `cache`.
pub async fn local_dir(
    db: &impl ConnectionTrait,
    adapter: &AdapterRow,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    let written = PathBuf::from(&adapter.location);
    if written.join(CONFIG_FILE).is_file() {
        return Ok(written);
    }
    let copy = cache.join(&adapter.id);
    if copy.join(CONFIG_FILE).is_file() {
        return Ok(copy);
    }
    let rows = files::Entity::find()
        .filter(files::Column::AdapterId.eq(&adapter.id))
        .all(db)
        .await?;
    anyhow::ensure!(
        !rows.is_empty(),
        "adapter {}'s files are neither at {} nor in the store",
        adapter.id,
        adapter.location
    );
    // Written under a private name, then renamed: a copy is whole or absent.
    let partial = cache.join(format!(
        ".partial-{}-{}",
        adapter.id,
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    for row in rows {
        // Names come from our own trainer's directory listing; refuse any
        // that would leave the directory all the same.
        anyhow::ensure!(
            !row.name.contains(['/', '\\']) && row.name != ".." && row.name != ".",
            "adapter {} has a file named {:?}",
            adapter.id,
            row.name
        );
        std::fs::write(partial.join(&row.name), &row.content)?;
    }
    if let Err(err) = std::fs::rename(&partial, &copy) {
        let _ = std::fs::remove_dir_all(&partial);
        // Another task of this process may have copied it meanwhile.
        if !copy.join(CONFIG_FILE).is_file() {
            return Err(err)
                .with_context(|| format!("cannot move the adapter to {}", copy.display()));
        }
    }
    Ok(copy)
}
