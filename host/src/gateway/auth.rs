//! Bearer tokens: tenant API tokens and operator tokens, looked up by digest in constant time,
//! with a per-client throttle on repeated failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};

/// Maps token digests to an owner. Tokens themselves are not kept.
pub struct TokenIndex<T> {
    entries: Vec<([u8; 32], T)>,
}

impl<T: Clone> TokenIndex<T> {
    pub fn new() -> Self {
        Self { entries: Vec::new() }
    }

    pub fn insert(&mut self, token: &str, owner: T) {
        self.entries.push((sha256(token), owner));
    }

    /// Compares the presented token's digest with every entry without stopping early, so the
    /// time taken does not depend on which entry (if any) matched.
    pub fn lookup(&self, token: &str) -> Option<T> {
        let d = sha256(token);
        let mut found = None;
        for (entry, owner) in &self.entries {
            let diff = entry.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(owner.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<T: Clone> Default for TokenIndex<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Tells tokens apart without keeping them: the first holder of each token, by its digest. A
/// token configured twice for different holders would let one act as the other.
#[derive(Default)]
pub struct UniqueTokens {
    seen: std::collections::HashMap<[u8; 32], String>,
}

impl UniqueTokens {
    /// Records `token` for `holder`; the error names both holders (never the token).
    pub fn check(&mut self, token: &str, holder: String) -> Result<(), String> {
        match self.seen.entry(sha256(token)) {
            std::collections::hash_map::Entry::Occupied(e) if *e.get() != holder => Err(format!(
                "{holder} uses the same token as {}; every tenant and operator needs a token of its own",
                e.get()
            )),
            std::collections::hash_map::Entry::Occupied(_) => Ok(()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(holder);
                Ok(())
            }
        }
    }
}

fn sha256(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

/// Extracts the token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Counts failed authentications per client address; locks a client out after too many.
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

#[derive(Clone, Copy)]
struct Client {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Most client addresses tracked; beyond it the oldest entries are dropped.
const MAX_TRACKED: usize = 10_000;

impl Throttle {
    pub fn new(max_failures: u32, window: Duration, lockout: Duration) -> Self {
        Self { max_failures, window, lockout, clients: Mutex::default() }
    }

    /// Seconds left in a lockout, if the client is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let clients = self.clients.lock().expect("throttle lock");
        let until = clients.get(&ip)?.locked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    pub fn failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut clients = self.clients.lock().expect("throttle lock");
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&ip) {
            let oldest = clients.iter().min_by_key(|(_, c)| c.window_start).map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
        let c = clients.entry(ip).or_insert(Client { failures: 0, window_start: now, locked_until: None });
        if now.duration_since(c.window_start) > self.window {
            *c = Client { failures: 0, window_start: now, locked_until: None };
        }
        c.failures += 1;
        if c.failures >= self.max_failures {
            c.locked_until = Some(now + self.lockout);
            tracing::warn!(client = %ip, failures = c.failures, "Client locked out after repeated bad tokens.");
        }
    }

    pub fn success(&self, ip: IpAddr) {
        self.clients.lock().expect("throttle lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_only_exact_tokens() {
        let mut idx = TokenIndex::new();
        idx.insert("alpha-token", "a");
        idx.insert("beta-token", "b");
        assert_eq!(idx.lookup("alpha-token"), Some("a"));
        assert_eq!(idx.lookup("beta-token"), Some("b"));
        assert_eq!(idx.lookup("alpha-toke"), None);
        assert_eq!(idx.lookup(""), None);
    }

    #[test]
    fn throttle_locks_after_max_failures() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        t.failure(ip);
        t.failure(ip);
        assert!(t.locked(ip).is_none());
        t.failure(ip);
        assert!(t.locked(ip).is_some());
    }
}
