//! Per-host politeness: a concurrency cap and a minimum gap between request starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Below this many tracked hosts no pruning happens.
const PRUNE_FLOOR: usize = 1024;

struct HostSlot {
    semaphore: Arc<Semaphore>,
    /// Earliest instant the next request to this host may start.
    next_start: Mutex<Instant>,
}

/// Held while a request to a host is in flight (including reading its body).
pub struct HostPermit {
    _permit: OwnedSemaphorePermit,
    // Keeps the slot alive so pruning cannot drop a host that is in use.
    _slot: Arc<HostSlot>,
}

struct Map {
    slots: HashMap<String, Arc<HostSlot>>,
    prune_at: usize,
}

/// Map of per-host limits. Idle hosts (no request in flight, pacing gap elapsed)
/// are forgotten once the map grows, so memory stays proportional to active hosts.
pub struct HostLimiter {
    per_host: usize,
    interval: Duration,
    map: Mutex<Map>,
}

impl HostLimiter {
    pub fn new(per_host: usize, interval: Duration) -> Self {
        Self {
            per_host: per_host.max(1),
            interval,
            map: Mutex::new(Map {
                slots: HashMap::new(),
                prune_at: PRUNE_FLOOR,
            }),
        }
    }

    /// Waits for a concurrency slot for `host`, then for its pacing turn.
    pub async fn acquire(&self, host: &str) -> HostPermit {
        let slot = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if !map.slots.contains_key(host) && map.slots.len() >= map.prune_at {
                let now = Instant::now();
                map.slots.retain(|_, s| {
                    Arc::strong_count(s) > 1
                        || *s.next_start.lock().unwrap_or_else(|e| e.into_inner()) > now
                });
                // Amortise: the next sweep waits until the map has doubled again.
                map.prune_at = (map.slots.len() * 2).max(PRUNE_FLOOR);
            }
            Arc::clone(map.slots.entry(host.to_string()).or_insert_with(|| {
                Arc::new(HostSlot {
                    semaphore: Arc::new(Semaphore::new(self.per_host)),
                    next_start: Mutex::new(Instant::now()),
                })
            }))
        };
        let permit = Arc::clone(&slot.semaphore)
            .acquire_owned()
            .await
            .expect("host semaphore is never closed");
        if !self.interval.is_zero() {
            // Reserve a start time so concurrent requests are spaced by `interval`.
            let start = {
                let mut next = slot.next_start.lock().unwrap_or_else(|e| e.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + self.interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        HostPermit {
            _permit: permit,
            _slot: slot,
        }
    }

    /// Number of hosts currently tracked.
    pub fn tracked_hosts(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slots
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limiter = HostLimiter::new(2, Duration::ZERO);
        let held = limiter.acquire("busy.example").await;
        for i in 0..(PRUNE_FLOOR * 3) {
            drop(limiter.acquire(&format!("h{i}.example")).await);
        }
        assert!(limiter.tracked_hosts() <= PRUNE_FLOOR + 1);
        // The in-use host survived pruning: its semaphore still has one permit taken.
        let map = limiter.map.lock().unwrap();
        assert_eq!(map.slots["busy.example"].semaphore.available_permits(), 1);
        drop(map);
        drop(held);
    }

    #[tokio::test]
    async fn pacing_spaces_starts() {
        let limiter = HostLimiter::new(4, Duration::from_millis(50));
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            let _p = limiter.acquire("a.example").await;
            starts.push(t0.elapsed());
        }
        assert!(starts[0] < Duration::from_millis(20), "{starts:?}");
        assert!(starts[3] >= Duration::from_millis(150), "{starts:?}");
        // Another host is not delayed by the first one's pacing.
        let t1 = Instant::now();
        let _p = limiter.acquire("b.example").await;
        assert!(t1.elapsed() < Duration::from_millis(20));
    }
}
