//! The Cloud API's webhook: `GET` and `POST /channels/whatsapp/<account>/webhook` on the gateway's
//! server.
//!
//! `GET` is Meta's verification handshake: `hub.mode=subscribe`, `hub.verify_token` equal to the
//! account's verify token (compared in constant time) → 200 with `hub.challenge`; anything else
//! → 403. `POST` is a delivery: `X-Hub-Signature-256` must be `sha256=` and the hex HMAC-SHA256
//! of the raw body under the app secret, compared in constant time; a missing or wrong one gets
//! 401 and nothing runs. A verified delivery is answered 200 once its messages are stored (503
//! otherwise, so Meta delivers it again).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ring::hmac;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use super::config::WhatsAppAccount;
use super::{Credentials, Item, Receiver, parse_delivery};
use crate::channels::adapter::Context;
use crate::channels::webhook::{self, Hooks, text, try_later, unauthorized};
use crate::config::SecretString;
use crate::gateway::Live;

/// A running account: its number, its app's signing key and the verify token.
struct Hook {
    phone_number_id: String,
    key: hmac::Key,
    /// A digest of the app secret: accounts of one Meta app share it.
    app: String,
    verify: SecretString,
    rx: Arc<Receiver>,
}

/// The running WhatsApp accounts of this process.
static HOOKS: Hooks<Hook> = Hooks::new();

/// The route, built once; a request finds its running account in `HOOKS`.
pub(super) fn routes(ctx: &Context) -> Router {
    Router::new().route("/channels/whatsapp/{account}/webhook", get(verify).post(deliver)).with_state(ctx.live.clone())
}

/// Serves one account's deliveries until it is told to stop.
pub(super) async fn serve(
    rx: Arc<Receiver>,
    acc: &WhatsAppAccount,
    creds: &Credentials,
    stopped: watch::Receiver<bool>,
) {
    let id = rx.id().to_string();
    let hook = Arc::new(Hook {
        phone_number_id: acc.phone_number_id.clone(),
        key: webhook::hmac_key(creds.app_secret.expose()),
        app: app_digest(&creds.app_secret),
        verify: creds.verify_token.clone(),
        rx,
    });
    tracing::info!(account = %id, path = %format!("/channels/whatsapp/{id}/webhook"), "WhatsApp account ready.");
    HOOKS.serve(&id, hook, stopped).await;
}

/// Whether `account` is a WhatsApp account of the running config.
fn configured(live: &Live, account: &str) -> bool {
    super::settings(&live.load().runtime.config).and_then(|s| s.account(account)).is_some()
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

fn forbidden() -> Response {
    text(StatusCode::FORBIDDEN, "verification refused\n")
}

async fn verify(State(live): State<Live>, Path(account): Path<String>, Query(q): Query<Handshake>) -> Response {
    let Some(hook) = HOOKS.get(&account) else {
        return if configured(&live, &account) { try_later() } else { forbidden() };
    };
    let challenge = q.challenge.filter(|c| !c.is_empty() && c.len() <= 256 && c.bytes().all(|b| b.is_ascii_graphic()));
    match (q.mode.as_deref(), q.token, challenge) {
        (Some("subscribe"), Some(token), Some(challenge)) if webhook::secret_matches(hook.verify.expose(), &token) => {
            tracing::info!(account = %account, "WhatsApp webhook verified by Meta.");
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], challenge).into_response()
        }
        _ => {
            tracing::warn!(account = %account, "Refused a WhatsApp webhook verification: wrong mode, verify token or challenge.");
            forbidden()
        }
    }
}

/// Every number whose account was started, running or not yet, by phone-number id: its app
/// (digest of its secret; a delivery for a number of the same app that is not running yet gets
/// 503, not a drop) and, once identified, its number's digits (a message from one of these is
/// from this gateway itself).
static STARTED: std::sync::Mutex<std::collections::BTreeMap<String, (String, Option<String>)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn app_digest(secret: &SecretString) -> String {
    crate::crypto::sha256_hex(secret.expose().as_bytes(), 16)
}

/// Called when an account starts, before its number is checked with the Graph API.
pub(super) fn started(acc: &WhatsAppAccount, creds: &Credentials) {
    let mut map = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    map.insert(acc.phone_number_id.clone(), (app_digest(&creds.app_secret), None));
}

/// Called once the Graph API has named the number of `pnid` (`display`, as Meta writes it).
pub(super) fn identified(pnid: &str, display: &str) {
    let digits: String = display.chars().filter(char::is_ascii_digit).collect();
    if let Some(entry) = STARTED.lock().unwrap_or_else(|p| p.into_inner()).get_mut(pnid) {
        entry.1 = Some(digits);
    }
}

/// Whether `from` is one of this gateway's own numbers: two tenants' agents would answer each
/// other for ever.
fn own_number(from: &str) -> bool {
    STARTED.lock().unwrap_or_else(|p| p.into_inner()).values().any(|(_, n)| n.as_deref() == Some(from))
}

/// Whether `pnid` is the number of a WhatsApp account of the running config, of the same app as
/// `hook`, that is not running (yet).
fn configured_number(live: &Live, hook: &Hook, pnid: &str) -> bool {
    let same_app = STARTED.lock().unwrap_or_else(|p| p.into_inner()).get(pnid).is_some_and(|(a, _)| *a == hook.app);
    same_app
        && super::settings(&live.load().runtime.config)
            .is_some_and(|s| s.accounts.iter().any(|a| a.phone_number_id == pnid))
}

/// The running account a change for `pnid` goes to: this hook's own number, or another number
/// of the same Meta app.
fn target(hook: &Hook, pnid: &str) -> Option<Arc<Receiver>> {
    if hook.phone_number_id == pnid {
        return Some(hook.rx.clone());
    }
    HOOKS.find(|h| h.phone_number_id == pnid && h.app == hook.app).map(|h| h.rx.clone())
}

async fn deliver(State(live): State<Live>, Path(account): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hook) = HOOKS.get(&account) else { return webhook::not_running(configured(&live, &account)) };
    let sig = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    let verified = sig
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .is_some_and(|tag| webhook::verify_hex_tag(&hook.key, &body, tag));
    if !verified {
        let kind = if sig.is_none() { "missing signature" } else { "signature does not match" };
        tracing::warn!(account = %account, kind, "Refused a WhatsApp webhook delivery: its signature was not verified.");
        return unauthorized();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        tracing::warn!(account = %account, kind = "not JSON", "Skipped a malformed WhatsApp webhook delivery.");
        return text(StatusCode::BAD_REQUEST, "body is not JSON\n");
    };
    let mut work = Vec::new();
    // A message for a number that is configured but not running yet (starting, restarting on a
    // reload): the delivery gets 503 once the rest is stored, so Meta delivers it again.
    let mut later = false;
    for item in parse_delivery(&payload) {
        match item {
            Item::Message(m) if own_number(&m.from) => {
                tracing::warn!(account = %account, "WhatsApp message from another number of this gateway ignored (agents would answer each other).")
            }
            Item::Message(m) => match target(&hook, &m.phone_number_id) {
                Some(rx) => work.push((rx, m)),
                None if configured_number(&live, &hook, &m.phone_number_id) => later = true,
                None => {
                    tracing::warn!(account = %account, phone_number_id = %m.phone_number_id, "A WhatsApp delivery names a phone number no running account of this Meta app serves; that message is dropped.")
                }
            },
            Item::Failed { phone_number_id, code } => {
                let by = target(&hook, &phone_number_id).map_or_else(|| account.clone(), |rx| rx.id().to_string());
                let meaning = super::graph::explain(code).unwrap_or("see Meta's Cloud API error codes");
                tracing::warn!(account = %by, code, "WhatsApp reports a reply it could not deliver: {meaning}.");
            }
            Item::Ignored(why) => tracing::debug!(account = %account, reason = why, "WhatsApp webhook item ignored."),
            Item::Malformed(kind) => {
                tracing::warn!(account = %account, kind, "Skipped a malformed item of a WhatsApp webhook delivery.")
            }
        }
    }
    if work.is_empty() {
        return if later { try_later() } else { StatusCode::OK.into_response() };
    }
    let store = async move {
        for (rx, m) in work {
            rx.handle(m).await?;
        }
        Ok(())
    };
    match webhook::store_within(store).await {
        Ok(()) if later => {
            tracing::info!(account = %account, "A WhatsApp delivery names a number that is not running yet; answered 503 so Meta delivers it again.");
            try_later()
        }
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => {
            tracing::warn!(account = %account, reason = %why, "WhatsApp delivery not stored; answered 503 so Meta delivers it again.");
            try_later()
        }
    }
}
