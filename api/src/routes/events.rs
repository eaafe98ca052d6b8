//! `GET /ws/events` and `GET /api/v1/events`: the live events of
//! [`crate::live`], over a websocket (the console) or as server-sent events
//! (curl). Browsers cannot set headers on either, so the API key may also
//! come as a `token` query parameter or a `bearer.<key>` websocket
//! subprotocol (see [`crate::auth`]).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{
    error::{ApiResult, ErrorBody},
    limits::WEBSOCKET_MAX_MESSAGE,
    live::LiveEvent,
    state::AppState,
};

/// The subprotocol answered when a browser offers it (a browser that offers
/// subprotocols closes a websocket whose answer names none).
pub const SUBPROTOCOL: &str = "orchestrator.v1";

/// Live events as websocket text messages, one JSON object each:
/// `{"type": "status"|"warning"|"error", "code", "message", "at", "data"}`.
/// A `status` event every 2 s carries the snapshot of `GET /api/v1/status`.
#[utoipa::path(
    get, path = "/ws/events", tag = "system",
    params(("token" = Option<String>, Query, description = "The API key, for browsers (or the subprotocol `bearer.<key>` beside `orchestrator.v1`)")),
    responses(
        (status = 101, description = "Switching Protocols: events follow", body = LiveEvent),
        (status = 400, description = "Not a websocket handshake", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded (not HTTP/1.1)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn websocket(
    State(state): State<AppState>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let slot = state.limits.websocket()?;
    let events = state.live.subscribe();
    let closing = state.live.closing();
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(WEBSOCKET_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            forward(socket, events, closing).await;
            drop(slot);
        }))
}

async fn forward(
    mut socket: WebSocket,
    mut events: Receiver<Arc<LiveEvent>>,
    closing: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = closing.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            event = events.recv() => match event {
                Ok(event) => {
                    let text = serde_json::to_string(&*event).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // A slow reader misses some; the next status catches it up.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// One server-sent event as it goes over the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventFrame {
    /// `status`, `warning` or `error`: the event's `type`.
    pub event: String,
    /// The event as one line of JSON, shaped as `LiveEvent`.
    pub data: String,
}

/// The same events as server-sent events (`event: status|warning|error`,
/// `data:` the JSON object), for `curl -N`.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "system",
    params(("token" = Option<String>, Query, description = "The API key, for browsers' EventSource")),
    responses((status = 200, description = "text/event-stream of live events: `event` is the type, `data` a LiveEvent as JSON",
        body = EventFrame, content_type = "text/event-stream")),
    security(("bearer" = []))
)]
pub async fn server_sent(State(state): State<AppState>) -> ApiResult<Response> {
    let slot = state.limits.websocket()?;
    let events = state.live.subscribe();
    let stream = sse_stream(events, state.live.closing(), slot);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse_stream<Slot: Send + 'static>(
    events: Receiver<Arc<LiveEvent>>,
    closing: CancellationToken,
    slot: Slot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (events, closing, slot);
    futures::stream::unfold(start, |(mut events, closing, slot)| async move {
        loop {
            let received = tokio::select! {
                received = events.recv() => received,
                _ = closing.cancelled() => return None,
            };
            match received {
                Ok(event) => {
                    let sse = Event::default()
                        .event(event.kind.clone())
                        .json_data(&*event)
                        .unwrap_or_default();
                    return Some((Ok(sse), (events, closing, slot)));
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
