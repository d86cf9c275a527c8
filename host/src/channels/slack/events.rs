//! The HTTP Events API: `POST /channels/slack/<account>/events` on the gateway's server, for
//! accounts with `mode: "events"`.
//!
//! Every request is verified before anything runs: `X-Slack-Signature` must be `v0=` and the
//! hex HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}` under the app's signing secret
//! (compared in constant time by `ring::hmac::verify`), and the timestamp within five minutes of
//! now. A missing, stale or forged signature — or an account that is not an Events API account
//! of this gateway — gets 401 and nothing else happens. Then `url_verification` is answered with
//! its challenge, and an `event_callback` is answered 200 only once its message is stored (or
//! decided to be dropped); a message that could not be stored gets 503, so Slack retries, and
//! retries (`X-Slack-Retry-Num`) are recognised by `event_id`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ring::hmac;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Receiver;
use super::config::Mode;
use crate::channels::adapter::Context;
use crate::channels::webhook::{self, Hooks, text, try_later, unauthorized};
use crate::config::SecretString;
use crate::gateway::Live;

/// Oldest request timestamp accepted, either way from now.
pub const MAX_AGE_SECS: u64 = 300;

/// A running Events API account: its signing key and its receiver.
struct Hook {
    key: hmac::Key,
    rx: Arc<Receiver>,
}

/// The running Events API accounts of this process.
static HOOKS: Hooks<Hook> = Hooks::new();

/// Why a request's signature was refused (logged by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    Missing,
    Stale,
    Forged,
}

impl SigError {
    fn kind(self) -> &'static str {
        match self {
            SigError::Missing => "missing signature or timestamp",
            SigError::Stale => "timestamp older than five minutes",
            SigError::Forged => "signature does not match",
        }
    }
}

pub fn signing_key(secret: &str) -> hmac::Key {
    webhook::hmac_key(secret)
}

/// Checks a request's Slack signature v0 at `now` (Unix seconds).
pub fn verify(
    key: &hmac::Key,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), SigError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else { return Err(SigError::Missing) };
    let Ok(at) = ts.trim().parse::<u64>() else { return Err(SigError::Missing) };
    if now.abs_diff(at) > MAX_AGE_SECS {
        return Err(SigError::Stale);
    }
    let Some(tag) = sig.trim().strip_prefix("v0=") else { return Err(SigError::Forged) };
    let mut msg = Vec::with_capacity(body.len() + ts.len() + 4);
    msg.extend_from_slice(b"v0:");
    msg.extend_from_slice(ts.trim().as_bytes());
    msg.push(b':');
    msg.extend_from_slice(body);
    if webhook::verify_hex_tag(key, &msg, tag) { Ok(()) } else { Err(SigError::Forged) }
}

/// The signature of `body` at `timestamp`, as Slack sends it (for tests and the fake).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut msg = format!("v0:{timestamp}:").into_bytes();
    msg.extend_from_slice(body);
    format!("v0={}", webhook::hex_tag(secret, &msg))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The route, built once; a request finds its running account in `HOOKS`.
pub(super) fn routes(ctx: &Context) -> Router {
    Router::new().route("/channels/slack/{account}/events", post(handle)).with_state(ctx.live.clone())
}

/// Serves one account's events until it is told to stop.
pub(super) async fn serve(rx: Arc<Receiver>, secret: &SecretString, stopped: watch::Receiver<bool>) {
    let id = rx.id().to_string();
    let hook = Arc::new(Hook { key: signing_key(secret.expose()), rx });
    tracing::info!(account = %id, path = %format!("/channels/slack/{id}/events"), "Slack Events API account ready.");
    HOOKS.serve(&id, hook, stopped).await;
}

async fn handle(State(live): State<Live>, Path(account): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hook) = HOOKS.get(&account) else {
        let configured = super::settings(&live.load().runtime.config)
            .and_then(|s| s.account(&account))
            .is_some_and(|a| matches!(a.mode, Mode::Events { .. }));
        return webhook::not_running(configured);
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = hook.rx.id();
    if let Err(e) = verify(&hook.key, header("x-slack-request-timestamp"), header("x-slack-signature"), &body, now()) {
        tracing::warn!(account = %id, kind = e.kind(), "Refused a Slack Events API request: its signature was not verified.");
        return unauthorized();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        tracing::warn!(account = %id, kind = "not JSON", "Skipped a malformed Slack Events API request.");
        return text(StatusCode::BAD_REQUEST, "body is not JSON\n");
    };
    match payload["type"].as_str() {
        Some("url_verification") => match payload["challenge"].as_str() {
            Some(c) if c.len() <= 256 => axum::Json(json!({ "challenge": c })).into_response(),
            _ => text(StatusCode::BAD_REQUEST, "url_verification without a challenge\n"),
        },
        Some("event_callback") => {
            if let Some(n) = header("x-slack-retry-num") {
                tracing::debug!(account = %id, retry = n, reason = header("x-slack-retry-reason").unwrap_or(""), "Slack delivered an event again.");
            }
            // Its own task: a slow store is never cut off half-way when Slack gives up waiting
            // (a retry waits for it and is then recognised).
            let rx = hook.rx.clone();
            match webhook::store_within(async move { rx.handle(&payload).await }).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(why) => {
                    tracing::warn!(account = %id, reason = %why, "Slack event not stored; answered 503 so Slack delivers it again.");
                    try_later()
                }
            }
        }
        other => {
            tracing::debug!(account = %id, kind = other.unwrap_or("no type"), "Slack Events API request not handled.");
            StatusCode::OK.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn slack_signatures_are_verified_in_time_and_in_full() {
        let key = signing_key(SECRET);
        let body = br#"{"type":"event_callback","event":{"text":"hi"}}"#;
        let ts = 1_700_000_000u64;
        let sig = sign(SECRET, ts, body);
        let ts_s = ts.to_string();
        assert_eq!(verify(&key, Some(&ts_s), Some(&sig), body, ts), Ok(()));
        assert_eq!(verify(&key, Some(&ts_s), Some(&sig), body, ts + MAX_AGE_SECS), Ok(()));
        assert_eq!(verify(&key, Some(&ts_s), Some(&sig.to_uppercase().replace("V0=", "v0=")), body, ts), Ok(()));
        assert_eq!(verify(&key, Some(&ts_s), Some(&sig), body, ts + MAX_AGE_SECS + 1), Err(SigError::Stale));
        assert_eq!(verify(&key, Some(&ts_s), Some(&sig), body, ts - MAX_AGE_SECS - 1), Err(SigError::Stale));
        // One byte of the body, the timestamp, the secret or the tag changed: refused.
        assert_eq!(
            verify(&key, Some(&ts_s), Some(&sig), br#"{"type":"event_callback","event":{"text":"hI"}}"#, ts),
            Err(SigError::Forged)
        );
        assert_eq!(verify(&key, Some(&(ts + 1).to_string()), Some(&sig), body, ts), Err(SigError::Forged));
        assert_eq!(verify(&signing_key("other"), Some(&ts_s), Some(&sig), body, ts), Err(SigError::Forged));
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify(&key, Some(&ts_s), Some(std::str::from_utf8(&flipped).unwrap()), body, ts),
            Err(SigError::Forged)
        );
        for bad in ["", "v0=", "v1=abcd", "v0=zz", &sig[..sig.len() - 2], "abc"] {
            assert_eq!(verify(&key, Some(&ts_s), Some(bad), body, ts), Err(SigError::Forged), "{bad:?}");
        }
        assert_eq!(verify(&key, None, Some(&sig), body, ts), Err(SigError::Missing));
        assert_eq!(verify(&key, Some(&ts_s), None, body, ts), Err(SigError::Missing));
        assert_eq!(verify(&key, Some("soon"), Some(&sig), body, ts), Err(SigError::Missing));
    }
}
