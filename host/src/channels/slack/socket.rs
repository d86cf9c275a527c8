//! Socket Mode: `apps.connections.open` with the app-level token gives a one-time `wss` URL
//! (never logged: it holds a ticket); the connection says `hello`, then carries `events_api`
//! envelopes, each acknowledged by its `envelope_id` only once its message is stored in the
//! inbox (or decided to be dropped). A `disconnect` (Slack refreshes connections every few
//! hours), a dropped socket or a silent one (no frame for `SILENT`) opens a new connection;
//! `link_disabled` (Socket Mode turned off for the app) stops the account.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_websockets::{ClientBuilder, Connector, Limits, Message};

use super::api::{Api, ApiError};
use super::{MAX_BACKOFF, Receiver};
use crate::channels::net::pause as wait;
use crate::config::SecretString;

/// Ping interval; a connection with no frame at all for `SILENT` is replaced.
const PING: Duration = Duration::from_secs(10);
const SILENT: Duration = Duration::from_secs(35);
/// Time allowed for connecting and for the `hello` frame.
const CONNECT: Duration = Duration::from_secs(15);
/// Largest frame taken (Slack's events are a few KiB).
const MAX_FRAME: usize = 1 << 20;

/// Why a connection ended.
enum End {
    Stopped,
    /// Open a new one; `true` when this one had said hello (the backoff starts over).
    Reconnect(&'static str, bool),
    LinkDisabled,
}

/// One Socket Mode connection of the account (`n` counts them from 0), kept open until the
/// account stops.
pub(super) async fn run(
    rx: Arc<Receiver>,
    api: Api,
    app_token: SecretString,
    mut stopped: watch::Receiver<bool>,
    n: usize,
) {
    let id = rx.id().to_string();
    let connector = match Connector::new() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(account = %id, error = %e, "Cannot set up TLS for Slack Socket Mode; this account is stopped.");
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stopped.borrow() {
            return;
        }
        let opened = tokio::select! {
            r = api.connections_open(app_token.expose()) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let url = match opened {
            Ok(url) => url,
            Err(ApiError::Auth(code)) => {
                tracing::error!(account = %id, error = %code, "Slack rejected the app-level token of this account (apps.connections.open): it is wrong, revoked or lacks connections:write. This account is stopped; other accounts are unaffected.");
                return;
            }
            Err(e) => {
                let pause = if let ApiError::RetryAfter(d) = e { d } else { backoff };
                tracing::warn!(account = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "Slack apps.connections.open failed; retrying.");
                if !wait(pause, &mut stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let builder = match ClientBuilder::new().uri(&url) {
            Ok(b) => b.connector(&connector).limits(Limits::default().max_payload_len(Some(MAX_FRAME))),
            Err(_) => {
                tracing::warn!(account = %id, "Slack sent a Socket Mode URL that cannot be parsed; retrying.");
                if !wait(backoff, &mut stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let connected = tokio::select! {
            r = tokio::time::timeout(CONNECT, builder.connect()) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let ws = match connected {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                tracing::warn!(account = %id, error = %e, "Cannot connect to Slack Socket Mode; retrying.");
                if !wait(backoff, &mut stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!(account = %id, "Connecting to Slack Socket Mode timed out; retrying.");
                continue;
            }
        };
        match session(&rx, ws, &mut stopped, n).await {
            End::Stopped => return,
            End::LinkDisabled => {
                tracing::error!(account = %id, "Slack disabled Socket Mode for this app (link_disabled). This account is stopped; turn Socket Mode on in the app's settings, or use mode \"events\".");
                return;
            }
            End::Reconnect(why, greeted) => {
                tracing::info!(account = %id, connection = n, reason = why, "Slack Socket Mode connection ended; reconnecting.");
                if greeted {
                    backoff = Duration::from_secs(1);
                } else {
                    if !wait(backoff, &mut stopped).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// One connection, until it ends.
async fn session<S>(
    rx: &Receiver,
    mut ws: tokio_websockets::WebSocketStream<S>,
    stopped: &mut watch::Receiver<bool>,
    n: usize,
) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = rx.id();
    let mut greeted = false;
    let mut last_seen = Instant::now();
    let started = Instant::now();
    let mut ping = tokio::time::interval(PING);
    ping.tick().await;
    enum Step<F> {
        Frame(F),
        Ping,
        Stop,
    }
    loop {
        let step = tokio::select! {
            f = ws.next() => Step::Frame(f),
            _ = ping.tick() => Step::Ping,
            _ = stopped.wait_for(|s| *s) => Step::Stop,
        };
        let frame = match step {
            Step::Frame(f) => f,
            Step::Ping => {
                if last_seen.elapsed() > SILENT || (!greeted && started.elapsed() > CONNECT) {
                    return End::Reconnect(if greeted { "no traffic" } else { "no hello" }, greeted);
                }
                if ws.send(Message::ping("")).await.is_err() {
                    return End::Reconnect("the socket dropped", greeted);
                }
                continue;
            }
            Step::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                return End::Stopped;
            }
        };
        let msg = match frame {
            None => return End::Reconnect("the socket closed", greeted),
            Some(Err(_)) => return End::Reconnect("the socket dropped", greeted),
            Some(Ok(m)) => m,
        };
        last_seen = Instant::now();
        if msg.is_close() {
            return End::Reconnect("Slack closed the socket", greeted);
        }
        let Some(text) = msg.as_text() else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(account = %id, kind = "not JSON", "Skipped a malformed Socket Mode frame.");
            continue;
        };
        let envelope = frame["envelope_id"].as_str().map(str::to_string);
        match frame["type"].as_str() {
            Some("hello") => {
                greeted = true;
                tracing::info!(account = %id, connection = n, "Slack Socket Mode connected.");
            }
            Some("disconnect") => {
                return match frame["reason"].as_str() {
                    Some("link_disabled") => End::LinkDisabled,
                    _ => End::Reconnect("Slack asked to reconnect", greeted),
                };
            }
            Some("events_api") => {
                let Some(envelope) = envelope else {
                    tracing::warn!(account = %id, kind = "events_api without envelope_id", "Skipped a malformed Socket Mode frame.");
                    continue;
                };
                if !frame["payload"].is_object() {
                    tracing::warn!(account = %id, kind = "events_api without payload", "Skipped a malformed Socket Mode frame.");
                } else if let Err(why) = rx.handle(&frame["payload"]).await {
                    // Not acknowledged: Slack delivers it again.
                    tracing::warn!(account = %id, reason = %why.0, "Slack event not stored; not acknowledged, so Slack delivers it again.");
                    continue;
                }
                if ws.send(Message::text(json!({ "envelope_id": envelope }).to_string())).await.is_err() {
                    return End::Reconnect("the socket dropped", greeted);
                }
            }
            other => {
                tracing::debug!(account = %id, kind = other.unwrap_or("no type"), "Socket Mode envelope not handled; acknowledged.");
                if let Some(envelope) = envelope
                    && ws.send(Message::text(json!({ "envelope_id": envelope }).to_string())).await.is_err()
                {
                    return End::Reconnect("the socket dropped", greeted);
                }
            }
        }
    }
}
