//! BlueBubbles webhooks: `POST /channels/imessage/<account>/webhook` on the gateway's server.
//!
//! BlueBubbles signs nothing and lets the operator configure only a URL, so the account's
//! `webhookSecret` travels in that URL, as `?secret=<webhookSecret>` (a proxy in front may send
//! `Authorization: Bearer <webhookSecret>` instead). It is compared in constant time on every
//! delivery before anything else runs; a missing or wrong secret, or an account that is not an
//! iMessage account of this gateway, gets 401 and nothing happens. The gateway logs no request
//! URL, query or header, so the secret is never in its logs. A verified `new-message` is
//! answered 200 only once its message is stored (or decided to be dropped), 503 otherwise.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::watch;

use super::Receiver;
use crate::channels::adapter::Context;
use crate::channels::webhook::{self, Hooks, text, try_later, unauthorized};
use crate::config::SecretString;
use crate::gateway::Live;

/// A running account: its webhook secret and its receiver.
struct Hook {
    secret: SecretString,
    rx: Arc<Receiver>,
}

/// The running iMessage accounts of this process.
static HOOKS: Hooks<Hook> = Hooks::new();

/// The secret a delivery presents: the `secret` query parameter, else an `Authorization:
/// Bearer` header.
pub fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "secret").then(|| percent_decode(v))
        })
    });
    from_query.or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_string())
    })
}

/// `application/x-www-form-urlencoded` value decoding (`+` is a space, `%XX` a byte; a `%`
/// not followed by two hex digits stays as it is).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(x)) => {
                out.push(x);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The route, built once; a request finds its running account in `HOOKS`.
pub(super) fn routes(ctx: &Context) -> Router {
    Router::new().route("/channels/imessage/{account}/webhook", post(handle)).with_state(ctx.live.clone())
}

/// Serves one account's deliveries until it is told to stop.
pub(super) async fn serve(rx: Arc<Receiver>, secret: SecretString, stopped: watch::Receiver<bool>) {
    let id = rx.id().to_string();
    let hook = Arc::new(Hook { secret, rx });
    tracing::info!(account = %id, path = %format!("/channels/imessage/{id}/webhook"), "iMessage webhook account ready.");
    HOOKS.serve(&id, hook, stopped).await;
}

async fn handle(
    State(live): State<Live>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let configured = || super::settings(&live.load().runtime.config).and_then(|s| s.account(&account)).is_some();
    let hook = match HOOKS.get(&account) {
        Some(h) => Some(h),
        // BlueBubbles never delivers again: a delivery for an account that is (re)starting
        // waits for it rather than being answered 503 at once.
        None if configured() => HOOKS.wait_for(&account, webhook::STORE_DEADLINE).await,
        None => None,
    };
    let Some(hook) = hook else { return webhook::not_running(configured()) };
    let id = hook.rx.id();
    let given = presented(query.as_deref(), &headers);
    let ok = given.as_deref().is_some_and(|g| webhook::secret_matches(hook.secret.expose(), g));
    if !ok {
        let kind = if given.is_none() { "no secret" } else { "wrong secret" };
        tracing::warn!(account = %id, kind, "Refused an iMessage webhook delivery: its secret was not verified.");
        return unauthorized();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        tracing::warn!(account = %id, kind = "not JSON", "Skipped a malformed iMessage webhook delivery.");
        return text(StatusCode::BAD_REQUEST, "body is not JSON\n");
    };
    if payload.get("type").and_then(Value::as_str) != Some("new-message") {
        // Still parsed, for the log line saying why it is ignored.
        let _ = hook.rx.handle(&payload).await;
        return StatusCode::OK.into_response();
    }
    // Its own task: a slow store is never cut off half-way.
    let rx = hook.rx.clone();
    match webhook::store_within(async move { rx.handle(&payload).await }).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => {
            tracing::warn!(account = %id, reason = %why, "iMessage message not stored; answered 503. BlueBubbles does not deliver a webhook again, so this message is not answered.");
            try_later()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_read_from_the_query_or_a_bearer_header() {
        let none = HeaderMap::new();
        assert_eq!(presented(Some("secret=abc%2Bdef+g"), &none).as_deref(), Some("abc+def g"));
        assert_eq!(presented(Some("x=1&secret=s3&y"), &none).as_deref(), Some("s3"));
        assert_eq!(presented(Some("secretx=1"), &none), None);
        assert_eq!(presented(Some("secret=%zz%4"), &none).as_deref(), Some("%zz%4"));
        assert_eq!(presented(None, &none), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tok-1".parse().unwrap());
        assert_eq!(presented(None, &h).as_deref(), Some("tok-1"));
        assert_eq!(presented(Some("secret=q"), &h).as_deref(), Some("q"), "the query wins");
    }
}
