//! Events between processes: workflow progress, adapter publications.
//! Every process publishes into one broadcast channel per topic; with Redis,
//! events travel over Redis pub/sub (fred) so a websocket on the API sees
//! what workers in other processes did, and every inference worker hears
//! of a new adapter.

use std::time::Duration;

use anyhow::Context;
use fred::{clients::SubscriberClient, prelude::*};
use serde_json::Value;
use tokio::sync::{OnceCell, broadcast};

/// Events buffered per subscriber before a slow one starts missing them
/// (it then re-reads the workflow from the store).
const BUFFER: usize = 4_096;

/// One event about one subject (a workflow id, a base model).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    pub body: Value,
}

pub struct Events {
    local: broadcast::Sender<Event>,
    redis: Option<RedisEvents>,
}

struct RedisEvents {
    config: Config,
    publisher: Client,
    channel: String,
    subscriber: OnceCell<SubscriberClient>,
}

impl Events {
    /// In-process only.
    pub fn in_process() -> Self {
        Self {
            local: broadcast::channel(BUFFER).0,
            redis: None,
        }
    }

    /// Over Redis pub/sub on `channel`.
    pub async fn redis(url: &str, channel: String) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("ORCH_REDIS_URL: invalid Redis URL")?;
        let publisher = Builder::from_config(config.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        publisher
            .init()
            .await
            .context("cannot connect to Redis for events")?;
        Ok(Self {
            local: broadcast::channel(BUFFER).0,
            redis: Some(RedisEvents {
                config,
                publisher,
                channel,
                subscriber: OnceCell::new(),
            }),
        })
    }

    /// Sends an event to every subscriber in every process. Losing an event
    /// loses nothing: the store holds the truth and subscribers re-read it.
    pub async fn publish(&self, subject: &str, body: Value) {
        match &self.redis {
            None => {
                let _ = self.local.send(Event {
                    subject: subject.to_string(),
                    body,
                });
            }
            Some(redis) => {
                let message = serde_json::json!({"subject": subject, "body": body});
                let sent: Result<i64, _> = redis
                    .publisher
                    .publish(&redis.channel, message.to_string())
                    .await;
                if let Err(err) = sent {
                    tracing::warn!(%err, channel = %redis.channel, "publishing an event failed");
                }
            }
        }
    }

    /// Every event published from now on (across processes with Redis).
    pub async fn subscribe(&self) -> anyhow::Result<broadcast::Receiver<Event>> {
        let receiver = self.local.subscribe();
        if let Some(redis) = &self.redis {
            redis
                .subscriber
                .get_or_try_init(|| forward(redis, self.local.clone()))
                .await?;
        }
        Ok(receiver)
    }
}

/// Subscribes once per process and forwards Redis messages to the local
/// broadcast channel.
async fn forward(
    redis: &RedisEvents,
    local: broadcast::Sender<Event>,
) -> anyhow::Result<SubscriberClient> {
    let subscriber = Builder::from_config(redis.config.clone())
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build_subscriber_client()?;
    subscriber.init().await?;
    subscriber.manage_subscriptions();
    subscriber.subscribe(redis.channel.clone()).await?;
    let mut messages = subscriber.message_rx();
    tokio::spawn(async move {
        while let Ok(message) = messages.recv().await {
            let Some(text) = message.value.as_string() else {
                continue;
            };
            let Ok(mut value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(subject) = value["subject"].as_str().map(str::to_string) else {
                continue;
            };
            let _ = local.send(Event {
                subject,
                body: value["body"].take(),
            });
        }
    });
    Ok(subscriber)
}
