//! Queue settings as pushes read them, kept for a second.
//!
//! Every push needs its queue's settings (does it exist, its default
//! attempts and backoff). Reading them from the store for every single-job
//! request cost a database round trip each; here they are read once a
//! second per queue. A change made through this process applies at once
//! (it forgets the entry); one made through another API process applies
//! within [`FRESH_FOR`]. Unknown names are never remembered, so a queue
//! created anywhere is usable at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use orchestrator_core::store::{QueueSettings, Store};

/// How long a read of a queue's settings is trusted.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct QueueCache {
    read: Arc<Mutex<HashMap<String, (Instant, QueueSettings)>>>,
}

impl QueueCache {
    /// The queue's settings, from the store when the copy here is stale.
    pub async fn get(&self, store: &Store, name: &str) -> anyhow::Result<Option<QueueSettings>> {
        if let Some((at, settings)) = self.lock().get(name)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Some(settings.clone()));
        }
        let found = store.queue(name).await?;
        let mut read = self.lock();
        match &found {
            Some(settings) => {
                read.insert(name.to_string(), (Instant::now(), settings.clone()));
            }
            None => {
                read.remove(name);
            }
        }
        Ok(found)
    }

    /// Drops the copy of a queue this process just changed.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, QueueSettings)>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }
}
