//! Worker slots: how `max_workers` holds across the whole fleet. A worker
//! serves a campaign only while it holds one of the campaign's slots; a slot
//! is a lease renewed every few seconds, so a killed worker's slot frees
//! itself. When `max_workers` drops, the most recently joined workers lose
//! their slots at their next renewal and stop serving.
//!
//! With Redis the slots live in Redis (one sorted set of holders by join
//! time and one hash of lease expiries per campaign, changed by one script);
//! in embedded mode every worker is in-process and a map suffices.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use fred::prelude::*;

use super::model::WorkerView;
use orchestrator_core::now_ms;

/// How long a slot lasts without renewal.
pub const SLOT_LEASE: Duration = Duration::from_secs(10);

/// The fleet-wide slot table.
#[async_trait]
pub trait Slots: Send + Sync + 'static {
    /// Takes or renews `worker`'s slot of `campaign` while at most `max`
    /// workers hold one; `false` means the worker must not (or no longer)
    /// serve the campaign. A holder ranked `max` or later by join time
    /// loses its slot here, which is how scaling down takes effect.
    async fn hold(&self, campaign: &str, worker: &str, max: u32) -> anyhow::Result<bool>;

    /// Gives a slot back (clean shutdown, campaign ended).
    async fn release(&self, campaign: &str, worker: &str) -> anyhow::Result<()>;

    /// The workers holding a live slot, earliest first.
    async fn holders(&self, campaign: &str) -> anyhow::Result<Vec<WorkerView>>;
}

/// Opens the slot table the configuration calls for.
pub async fn open(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Arc<dyn Slots>> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisSlots::connect(url, prefix).await?),
        None => Arc::new(LocalSlots::default()),
    })
}

/// A campaign's holders: worker -> (joined ms, lease expiry ms).
type Holders = HashMap<String, (u64, u64)>;

/// In-process slots (embedded mode).
#[derive(Default)]
pub struct LocalSlots {
    table: Mutex<HashMap<String, Holders>>,
}

#[async_trait]
impl Slots for LocalSlots {
    async fn hold(&self, campaign: &str, worker: &str, max: u32) -> anyhow::Result<bool> {
        let now = now_ms();
        let mut table = self.table.lock().expect("slot table lock");
        let holders = table.entry(campaign.to_string()).or_default();
        holders.retain(|_, (_, expires)| *expires > now);
        let expires = now + SLOT_LEASE.as_millis() as u64;
        if let Some(&(joined, _)) = holders.get(worker) {
            let rank = holders
                .iter()
                .filter(|(id, (j, _))| (*j, id.as_str()) < (joined, worker))
                .count();
            if rank >= max as usize {
                holders.remove(worker);
                return Ok(false);
            }
            holders.insert(worker.to_string(), (joined, expires));
            return Ok(true);
        }
        if holders.len() >= max as usize {
            return Ok(false);
        }
        holders.insert(worker.to_string(), (now, expires));
        Ok(true)
    }

    async fn release(&self, campaign: &str, worker: &str) -> anyhow::Result<()> {
        if let Some(holders) = self
            .table
            .lock()
            .expect("slot table lock")
            .get_mut(campaign)
        {
            holders.remove(worker);
        }
        Ok(())
    }

    async fn holders(&self, campaign: &str) -> anyhow::Result<Vec<WorkerView>> {
        let now = now_ms();
        let table = self.table.lock().expect("slot table lock");
        let mut live: Vec<WorkerView> = table
            .get(campaign)
            .into_iter()
            .flatten()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(id, (joined, _))| WorkerView {
                id: id.clone(),
                since_ms: *joined,
            })
            .collect();
        live.sort_by(|a, b| (a.since_ms, &a.id).cmp(&(b.since_ms, &b.id)));
        Ok(live)
    }
}

/// Drops expired holders, then takes or renews one slot. KEYS: joined
/// (zset worker -> join ms), expiry (hash worker -> expiry ms). ARGV:
/// worker, now, lease ms, max. Returns 1 when the worker holds a slot.
const HOLD_SCRIPT: &str = r#"
local joined, expiry = KEYS[1], KEYS[2]
local worker, now, lease, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local all = redis.call('HGETALL', expiry)
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', expiry, all[i])
    redis.call('ZREM', joined, all[i])
  end
end
local rank = redis.call('ZRANK', joined, worker)
if rank then
  if rank >= max then
    redis.call('ZREM', joined, worker)
    redis.call('HDEL', expiry, worker)
    return 0
  end
elseif redis.call('ZCARD', joined) >= max then
  return 0
else
  redis.call('ZADD', joined, now, worker)
end
redis.call('HSET', expiry, worker, now + lease)
redis.call('PEXPIRE', joined, lease * 6)
redis.call('PEXPIRE', expiry, lease * 6)
return 1
"#;

/// Slots in Redis, shared by every process of the fleet.
pub struct RedisSlots {
    client: Client,
    prefix: String,
}

impl RedisSlots {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = Builder::from_config(Config::from_url(url)?)
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.init().await?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
        })
    }

    fn keys(&self, campaign: &str) -> Vec<String> {
        vec![
            format!("{}:campaign:{campaign}:slots", self.prefix),
            format!("{}:campaign:{campaign}:slot-expiry", self.prefix),
        ]
    }
}

#[async_trait]
impl Slots for RedisSlots {
    async fn hold(&self, campaign: &str, worker: &str, max: u32) -> anyhow::Result<bool> {
        let args: Vec<String> = vec![
            worker.to_string(),
            now_ms().to_string(),
            SLOT_LEASE.as_millis().to_string(),
            max.to_string(),
        ];
        let held: i64 = self
            .client
            .eval(HOLD_SCRIPT, self.keys(campaign), args)
            .await?;
        Ok(held == 1)
    }

    async fn release(&self, campaign: &str, worker: &str) -> anyhow::Result<()> {
        let keys = self.keys(campaign);
        let _: i64 = self.client.zrem(&keys[0], worker).await?;
        let _: i64 = self.client.hdel(&keys[1], worker).await?;
        Ok(())
    }

    async fn holders(&self, campaign: &str) -> anyhow::Result<Vec<WorkerView>> {
        let keys = self.keys(campaign);
        let joined: Vec<(String, f64)> = self
            .client
            .zrange(&keys[0], 0, -1, None, false, None, true)
            .await?;
        let expiry: HashMap<String, u64> = self.client.hgetall(&keys[1]).await?;
        let now = now_ms();
        Ok(joined
            .into_iter()
            .filter(|(id, _)| expiry.get(id).is_some_and(|e| *e > now))
            .map(|(id, since)| WorkerView {
                id,
                since_ms: since as u64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_slots_cap_holders_and_shed_the_newest_on_scale_down() {
        let slots = LocalSlots::default();
        assert!(slots.hold("c", "w1", 2).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(slots.hold("c", "w2", 2).await.unwrap());
        assert!(
            !slots.hold("c", "w3", 2).await.unwrap(),
            "a third worker over max 2"
        );
        // Scale down to one: the newest holder loses its slot, the oldest keeps it.
        assert!(!slots.hold("c", "w2", 1).await.unwrap());
        assert!(slots.hold("c", "w1", 1).await.unwrap());
        let holders = slots.holders("c").await.unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].id, "w1");
        slots.release("c", "w1").await.unwrap();
        assert!(slots.holders("c").await.unwrap().is_empty());
    }
}
