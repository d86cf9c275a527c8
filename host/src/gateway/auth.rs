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

/// Counts failed authentications per client address and locks a client out after too many.
///
/// Failures decay with time only, as a leaky bucket: each failure adds one, and one drains every
/// `window / max_failures`. A good token does not reset it, so interleaving valid requests
/// with guesses does not buy more guesses.
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

#[derive(Clone, Copy)]
struct Client {
    /// Failures not yet drained, as of `updated`.
    failures: u32,
    /// When the last drain step (or the first failure of a fresh count) happened.
    updated: Instant,
    locked_until: Option<Instant>,
}

/// Most client addresses tracked; beyond it the entry least recently failed is dropped.
const MAX_TRACKED: usize = 10_000;

impl Throttle {
    pub fn new(max_failures: u32, window: Duration, lockout: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window: window.max(Duration::from_secs(1)),
            lockout,
            clients: Mutex::default(),
        }
    }

    /// Seconds left in a lockout, if the client is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        self.locked_at(ip, Instant::now())
    }

    fn locked_at(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let ip = bucket(ip);
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let until = clients.get(&ip)?.locked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Records a failed authentication from `ip`.
    pub fn failure(&self, ip: IpAddr) {
        self.failure_at(ip, Instant::now());
    }

    fn failure_at(&self, ip: IpAddr, now: Instant) {
        let ip = bucket(ip);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&ip) {
            let oldest = clients.iter().min_by_key(|(_, c)| c.updated).map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
        let c = clients.entry(ip).or_insert(Client { failures: 0, updated: now, locked_until: None });
        let step = (self.window / self.max_failures).max(Duration::from_millis(1));
        let steps = now.saturating_duration_since(c.updated).as_nanos() / step.as_nanos();
        match u32::try_from(steps) {
            Ok(n) if n < c.failures => {
                c.failures -= n;
                c.updated += step * n;
            }
            _ => {
                c.failures = 0;
                c.updated = now;
            }
        }
        c.failures += 1;
        if c.failures >= self.max_failures {
            c.locked_until = Some(now + self.lockout);
            tracing::warn!(client = %ip, "Client locked out after repeated bad tokens.");
        }
    }
}

/// The unit a client is counted in: an IPv4 address, or an IPv6 /64 (one host's share of a
/// network, which it can otherwise walk through address by address).
fn bucket(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Fewest bits of estimated entropy a configured token must carry.
pub const MIN_TOKEN_BITS: u32 = 128;

/// Refuses a token too weak to stand up to guessing. The estimate is `length × log2(alphabet)`,
/// where the alphabet is 16 for a token of hex digits only, else the sum of the character classes
/// it uses (26 lower-case, 26 upper-case, 10 digits, 33 other printable characters); a token with
/// fewer than 8 distinct characters is refused whatever its length. So 32 hex digits (`openssl rand
/// -hex 16`) or 22 base64 characters pass; `demo-token` does not. The error never holds the token.
pub fn check_token_strength(token: &str) -> Result<(), String> {
    let hex = !token.is_empty() && token.chars().all(|c| c.is_ascii_hexdigit());
    let alphabet: u32 = if hex {
        16
    } else {
        let has = |f: fn(&char) -> bool| token.chars().any(|c| f(&c));
        let mut sum = 0;
        for (class, size) in [
            (char::is_ascii_lowercase as fn(&char) -> bool, 26),
            (char::is_ascii_uppercase, 26),
            (char::is_ascii_digit, 10),
        ] {
            if has(class) {
                sum += size;
            }
        }
        if token.chars().any(|c| !c.is_ascii_alphanumeric()) {
            sum += 33;
        }
        sum
    };
    let bits = token.chars().count() as f64 * f64::from(alphabet.max(1)).log2();
    let mut chars: Vec<char> = token.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let distinct = chars.len();
    if bits < f64::from(MIN_TOKEN_BITS) || distinct < 8 {
        return Err(format!(
            "token too weak: about {} bits of entropy, {MIN_TOKEN_BITS} required (make one with `openssl rand -hex 32`)",
            bits as u32
        ));
    }
    Ok(())
}

/// `gateway.auth.trustedProxy`: a reverse proxy whose client-address header is believed, only on
/// connections that come from one of its addresses.
#[derive(Debug, Clone)]
pub struct TrustedProxy {
    /// Lower-case header name, such as `x-forwarded-for`.
    pub header: axum::http::HeaderName,
    pub from: Vec<ipnet::IpNet>,
}

impl TrustedProxy {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.from.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a listed proxy; then the right-most
    /// address in the header that is not itself a listed proxy (what the nearest proxy saw). A
    /// header that is missing or not a list of addresses leaves the proxy's own address, so such
    /// requests share one budget rather than choosing their own.
    pub fn client(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let mut hops = Vec::new();
        for value in headers.get_all(&self.header) {
            let Ok(text) = value.to_str() else { return canonical(peer) };
            for hop in text.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(canonical(ip)),
                    Err(_) => return canonical(peer),
                }
            }
        }
        hops.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(canonical(peer))
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

    #[test]
    fn good_tokens_between_guesses_do_not_buy_more_guesses() {
        // Nothing but time drains the count: there is no way to report a success at all, and
        // failures spread over less than a window still add up.
        let t = Throttle::new(5, Duration::from_secs(60), Duration::from_secs(300));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let start = Instant::now();
        for i in 0..4 {
            t.failure_at(ip, start + Duration::from_secs(i));
            assert!(t.locked_at(ip, start + Duration::from_secs(i)).is_none());
        }
        t.failure_at(ip, start + Duration::from_secs(4));
        assert!(t.locked_at(ip, start + Duration::from_secs(5)).is_some());
        assert!(t.locked_at("10.0.0.8".parse().unwrap(), start).is_none(), "other clients are not affected");
    }

    #[test]
    fn an_ipv6_client_cannot_walk_its_network_for_more_guesses() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(300));
        for host in 1..=3 {
            t.failure(format!("2001:db8:1:2::{host:x}").parse().unwrap());
        }
        assert!(t.locked("2001:db8:1:2:ffff::9".parse().unwrap()).is_some(), "same /64");
        assert!(t.locked("2001:db8:1:3::1".parse().unwrap()).is_none(), "another /64");
        t.failure("::ffff:192.0.2.1".parse().unwrap());
        t.failure("192.0.2.1".parse().unwrap());
        t.failure("::ffff:192.0.2.1".parse().unwrap());
        assert!(t.locked("192.0.2.1".parse().unwrap()).is_some(), "v4-mapped is the v4 address");
    }

    #[test]
    fn failures_drain_with_time() {
        let t = Throttle::new(5, Duration::from_secs(60), Duration::from_secs(300));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let start = Instant::now();
        // One failure every 12 s is exactly the drain rate: never locked.
        for i in 0..50 {
            t.failure_at(ip, start + Duration::from_secs(13 * i));
        }
        assert!(t.locked_at(ip, start + Duration::from_secs(13 * 50)).is_none());
        // A burst after a quiet window locks again.
        let later = start + Duration::from_secs(13 * 50 + 120);
        for i in 0..5 {
            t.failure_at(ip, later + Duration::from_millis(i));
        }
        assert!(t.locked_at(ip, later + Duration::from_millis(10)).is_some());
    }

    #[test]
    fn weak_tokens_are_refused_without_being_echoed() {
        for weak in ["", "demo-token", "tok-alpha-0123456789", "0123456789abcdef0123456789abcde", &"ab".repeat(64)] {
            let e = check_token_strength(weak).expect_err(weak);
            assert!(e.contains("128 required"), "{e}");
            assert!(weak.is_empty() || !e.contains(weak), "{e}");
        }
        for strong in
            ["0123456789abcdef0123456789abcdef", "Zx8Qm2Lp9Vt4Rk7Nw3Yb6A", "tok-alpha-6f1c9e2b7d4a8f3e5c0b9a7d6e2f1c4b"]
        {
            assert_eq!(check_token_strength(strong), Ok(()), "{strong}");
        }
    }

    #[test]
    fn a_proxy_header_is_believed_only_from_the_proxy() {
        let proxy = TrustedProxy {
            header: axum::http::HeaderName::from_static("x-forwarded-for"),
            from: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.2.3".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(proxy.client(ip("10.0.0.1"), &h), ip("203.0.113.9"), "right-most untrusted hop");
        assert_eq!(proxy.client(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.9"), "v4-mapped peer");
        assert_eq!(proxy.client(ip("198.51.100.4"), &h), ip("198.51.100.4"), "header from a non-proxy is ignored");
        // A client cannot pick its address by prepending to the header: the proxy appends.
        h.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9".parse().unwrap());
        assert_eq!(proxy.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        h.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(proxy.client(ip("10.0.0.1"), &h), ip("10.0.0.1"), "garbage: the proxy's own budget");
        assert_eq!(proxy.client(ip("10.0.0.1"), &axum::http::HeaderMap::new()), ip("10.0.0.1"));
    }
}
