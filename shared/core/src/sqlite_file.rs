//! Opening the embedded SQLite files (queue, vectors) the same way: created
//! when missing, WAL so readers never block the writer, and a busy timeout
//! so another process's write waits instead of failing.

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// Opens (creating if needed) the SQLite file at `path` with a pool of
/// `connections`, then applies `schema`. `what` names the file in errors.
pub async fn open(
    path: &Path,
    connections: u32,
    schema: &'static str,
    what: &str,
) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // SQLite's own page cache size (2 MiB) is kept: with 64 MiB, a
        // queue drain spent 5% of its time in the cache's hash-table scan
        // at the end of each transaction and ran 9% slower in all.
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open {what} {}", path.display()))?;
    sqlx::raw_sql(schema).execute(&pool).await?;
    Ok(pool)
}
