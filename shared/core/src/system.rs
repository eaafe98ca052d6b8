//! The system switch: whether the fleet takes and runs work.
//!
//! `POST /api/v1/system/stop` turns it to `stopping` (intake refused, no
//! worker leases another job, running jobs finish and are acknowledged) and
//! then `stopped` once the fleet is idle; `POST /api/v1/system/start` turns
//! it to `starting` (work resumes at once) and `running` when the start-up
//! phases are done. With Redis the state is one key every process reads at
//! start, is told of over pub/sub when it changes, and re-reads every
//! [`POLL`] in case a notice was missed; embedded, it lives in the process.
//!
//! Each process mirrors the fleet-wide state in a local watch channel
//! ([`current`], [`wait_until_running`]) so the hot paths (a worker's fetch
//! loop, the API's intake) read it without a round trip.

use std::{
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{events::Events, fleet};

/// How often a process re-reads the state (a notice may have been lost).
pub const POLL: Duration = Duration::from_secs(2);

/// Where the system is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Stopping,
    Stopped,
    Starting,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Starting => "starting",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            State::Running,
            State::Stopping,
            State::Stopped,
            State::Starting,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// Whether work is taken and run in this state.
    pub fn runs_work(self) -> bool {
        matches!(self, State::Running | State::Starting)
    }
}

/// The state as stored, with when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Record {
    pub state: State,
    /// Milliseconds since the Unix epoch; 0 when it never changed.
    pub changed_at: u64,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            state: State::Running,
            changed_at: 0,
        }
    }
}

static LOCAL: LazyLock<watch::Sender<State>> = LazyLock::new(|| watch::channel(State::Running).0);

/// This process's view of the fleet-wide state.
pub fn current() -> State {
    *LOCAL.borrow()
}

/// Changes of this process's view.
pub fn watch() -> watch::Receiver<State> {
    LOCAL.subscribe()
}

fn set_local(state: State) {
    LOCAL.send_if_modified(|now| {
        let changed = *now != state;
        if changed {
            tracing::info!(from = now.as_str(), to = state.as_str(), "system state");
            *now = state;
        }
        changed
    });
}

/// Waits until work may run; false when `shutdown` came first.
pub async fn wait_until_running(shutdown: &CancellationToken) -> bool {
    let mut changes = watch();
    tokio::select! {
        ok = changes.wait_for(|state| state.runs_work()) => ok.is_ok(),
        _ = shutdown.cancelled() => false,
    }
}

/// Reads and turns the fleet-wide state.
#[derive(Clone)]
pub struct Switch {
    stored: Stored,
    notices: Arc<Events>,
}

#[derive(Clone)]
enum Stored {
    InProcess(Arc<Mutex<Record>>),
    Redis { client: Client, key: String },
}

/// Moves the state from `ARGV[1]` to the record `ARGV[2]` if it is there
/// (an absent key is `running`), answering `ok` or the state it found.
const TRANSITION: &str = r#"
local found = 'running'
local raw = redis.call('GET', KEYS[1])
if raw then found = cjson.decode(raw).state end
if found ~= ARGV[1] then return found end
redis.call('SET', KEYS[1], ARGV[2])
return 'ok'
"#;

impl Switch {
    /// Stored beside the fleet registry: in Redis when it is there.
    pub fn new(registry: &fleet::Registry, notices: Events) -> Self {
        let stored = match registry {
            fleet::Registry::InProcess(_) => Stored::InProcess(Arc::default()),
            fleet::Registry::Redis { client, prefix } => Stored::Redis {
                client: client.clone(),
                key: format!("{prefix}:system"),
            },
        };
        Self {
            stored,
            notices: Arc::new(notices),
        }
    }

    /// The fleet-wide state.
    pub async fn read(&self) -> anyhow::Result<Record> {
        match &self.stored {
            Stored::InProcess(record) => Ok(*record.lock().expect("system record")),
            Stored::Redis { client, key } => {
                let raw: Option<String> = client.get(key).await?;
                Ok(match raw {
                    Some(raw) => serde_json::from_str(&raw)?,
                    None => Record::default(),
                })
            }
        }
    }

    /// Moves the state from `from` to `to` and tells every process;
    /// `Ok(Err(found))` when it was not in `from`.
    pub async fn transition(
        &self,
        from: State,
        to: State,
    ) -> anyhow::Result<Result<Record, State>> {
        let record = Record {
            state: to,
            changed_at: crate::now_ms(),
        };
        match &self.stored {
            Stored::InProcess(stored) => {
                let mut stored = stored.lock().expect("system record");
                if stored.state != from {
                    return Ok(Err(stored.state));
                }
                *stored = record;
            }
            Stored::Redis { client, key } => {
                let answer: String = client
                    .eval(
                        TRANSITION,
                        vec![key.clone()],
                        vec![from.as_str().to_string(), serde_json::to_string(&record)?],
                    )
                    .await?;
                if answer != "ok" {
                    let found = State::parse(&answer)
                        .ok_or_else(|| anyhow::anyhow!("unknown system state {answer:?}"))?;
                    return Ok(Err(found));
                }
            }
        }
        set_local(to);
        self.notices
            .publish("system", serde_json::to_value(record)?)
            .await;
        Ok(Ok(record))
    }

    /// Mirrors the fleet-wide state into this process until `shutdown`:
    /// read now, then on every notice and every [`POLL`].
    pub async fn follow(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        set_local(self.read().await?.state);
        let mut notices = self.notices.subscribe().await?;
        let switch = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    heard = notices.recv() => {
                        if let Ok(event) = heard
                            && let Ok(record) = serde_json::from_value::<Record>(event.body)
                        {
                            set_local(record.state);
                            continue;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => return,
                }
                match switch.read().await {
                    Ok(record) => set_local(record.state),
                    Err(err) => tracing::debug!("reading the system state: {err:#}"),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transition_from_the_wrong_state_changes_nothing() {
        let switch = Switch::new(&fleet::Registry::in_process(), Events::in_process());
        assert_eq!(
            switch
                .transition(State::Stopped, State::Starting)
                .await
                .unwrap(),
            Err(State::Running)
        );
        assert_eq!(switch.read().await.unwrap().state, State::Running);
        let moved = switch
            .transition(State::Running, State::Stopping)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.state, State::Stopping);
        assert_eq!(switch.read().await.unwrap().state, State::Stopping);
        assert_eq!(
            switch
                .transition(State::Running, State::Stopping)
                .await
                .unwrap(),
            Err(State::Stopping)
        );
    }
}
