//! What the adapters that receive over HTTP share (Slack's Events API, WhatsApp's Cloud API,
//! iMessage's bridge): the registry of running webhook accounts, signature and secret checks in
//! constant time, the answers a platform understands, and storing a delivery before answering it.
//!
//! A route is built once at start (`Adapter::routes`); a request finds its running account in
//! the adapter's [`Hooks`]. An account registers once it has started (its inbox restored) and
//! leaves when it stops, so a delivery for an account that is configured but not running yet
//! gets 503 (the platform delivers it again) and one for no such account gets 401.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::hmac;
use tokio::sync::watch;

use super::inbound::Deferred;

/// Longest a delivery waits for its message to be stored before it is answered 503 (the task
/// goes on; the platform's retry is then recognised as a re-delivery).
pub const STORE_DEADLINE: Duration = Duration::from_secs(10);

/// The running webhook accounts of one adapter, by account id.
pub struct Hooks<H> {
    map: Mutex<BTreeMap<String, Arc<H>>>,
}

impl<H> Default for Hooks<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> Hooks<H> {
    pub const fn new() -> Self {
        Self { map: Mutex::new(BTreeMap::new()) }
    }

    /// The running account `id`.
    pub fn get(&self, id: &str) -> Option<Arc<H>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The running account `id`, waiting up to `within` for it to start (an account restarting
    /// on a reload), for platforms that never deliver again.
    pub async fn wait_for(&self, id: &str, within: Duration) -> Option<Arc<H>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(h) = self.get(id) {
                return Some(h);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A running account whose hook satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&H) -> bool) -> Option<Arc<H>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).values().find(|h| pred(h)).cloned()
    }

    /// Registers `hook` as account `id` until `stopped` turns true (a restarted account's new
    /// hook is never removed by the old one's end).
    pub async fn serve(&self, id: &str, hook: Arc<H>, mut stopped: watch::Receiver<bool>) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), hook.clone());
        let _ = stopped.wait_for(|s| *s).await;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|h| Arc::ptr_eq(h, &hook)) {
            map.remove(id);
        }
    }
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// 401: the delivery's signature or secret was not verified; nothing ran.
pub fn unauthorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "request signature missing, stale or invalid\n")
}

/// 503 with `Retry-After`: not stored (or the account not running yet); deliver it again.
pub fn try_later() -> Response {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "not ready; retry later\n");
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    r
}

/// The answer to a delivery for an account with no running hook: 503 when it is configured
/// (starting, or restarting on a reload: the platform retries), 401 when it is not (its
/// signature cannot be checked, so nothing runs either way).
pub fn not_running(configured: bool) -> Response {
    if configured { try_later() } else { unauthorized() }
}

/// An HMAC-SHA256 key over a webhook secret.
pub fn hmac_key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// Whether `tag_hex` (either case) is the HMAC-SHA256 of `message` under `key`, compared in
/// constant time.
pub fn verify_hex_tag(key: &hmac::Key, message: &[u8], tag_hex: &str) -> bool {
    let tag = tag_hex.trim();
    if tag.len() != 64 {
        return false;
    }
    crate::crypto::unhex(tag).is_some_and(|t| hmac::verify(key, message, &t).is_ok())
}

/// The lowercase hex HMAC-SHA256 of `message` under `secret` (what a platform sends; for tests
/// and fakes).
pub fn hex_tag(secret: &str, message: &[u8]) -> String {
    crate::crypto::hex(hmac::sign(&hmac_key(secret), message).as_ref())
}

/// Whether `given` equals the secret `expected`, in time independent of where they differ (both
/// are MACed under a fresh key and the tags compared).
pub fn secret_matches(expected: &str, given: &str) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(k) = crate::crypto::random::<32>(&rng) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &k);
    let tag = hmac::sign(&key, expected.as_bytes());
    hmac::verify(&key, given.as_bytes(), tag.as_ref()).is_ok()
}

/// Runs `store` (storing one delivery's message) in its own task and waits up to
/// [`STORE_DEADLINE`]: `Ok` once it is stored or decided to be dropped (answer 200), `Err` with
/// the reason otherwise (answer 503; the task is never cut off half-way, and a retry waits for
/// it and is then recognised).
pub async fn store_within<F>(store: F) -> Result<(), String>
where
    F: Future<Output = Result<(), Deferred>> + Send + 'static,
{
    match tokio::time::timeout(STORE_DEADLINE, tokio::spawn(store)).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(why.0),
        Ok(Err(_)) => Err("the task storing it failed".into()),
        Err(_) => Err("storing it took too long".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_secrets_are_compared_in_full() {
        let key = hmac_key("s3cret");
        let tag = hex_tag("s3cret", b"body");
        assert!(verify_hex_tag(&key, b"body", &tag));
        assert!(verify_hex_tag(&key, b"body", &tag.to_uppercase()));
        assert!(!verify_hex_tag(&key, b"bodY", &tag));
        assert!(!verify_hex_tag(&hmac_key("other"), b"body", &tag));
        for bad in ["", "zz", &tag[..62], &format!("{tag}00")] {
            assert!(!verify_hex_tag(&key, b"body", bad), "{bad:?}");
        }
        assert!(secret_matches("abc", "abc"));
        assert!(!secret_matches("abc", "abd") && !secret_matches("abc", "ab") && !secret_matches("abc", ""));
    }

    #[tokio::test]
    async fn a_hook_is_registered_while_its_account_runs() {
        static HOOKS: Hooks<u32> = Hooks::new();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(HOOKS.serve("a", Arc::new(1), stopped));
        for _ in 0..100 {
            if HOOKS.get("a").is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(HOOKS.get("a").as_deref(), Some(&1));
        // A restart registers a new hook; the old one's end leaves it in place.
        let (stop2, stopped2) = watch::channel(false);
        let task2 = tokio::spawn(HOOKS.serve("a", Arc::new(2), stopped2));
        while HOOKS.get("a").as_deref() != Some(&2) {
            tokio::task::yield_now().await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(HOOKS.get("a").as_deref(), Some(&2));
        stop2.send(true).unwrap();
        task2.await.unwrap();
        assert!(HOOKS.get("a").is_none());
    }
}
