//! Signal's own keys of `channels.signal` and `channels.signal.accounts.<id>` (the account's
//! phone number, the signal-cli daemon's URL) and their validation pass, which
//! `Adapter::validate` runs; and the shape of Signal's ids (numbers, ACIs, group ids). The keys
//! every platform shares, and their inheritance, are the shared pass's.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::RawChannel;

/// Longest text sent as one message (signal-cli turns longer bodies into a text attachment).
pub const SIGNAL_TEXT_LIMIT: usize = 2000;

/// Where `signal-cli daemon --http` listens by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The platform keys of a Signal block, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSignal {
    number: Option<String>,
    url: Option<String>,
}

/// The Signal settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct SignalSettings {
    pub accounts: Vec<SignalAccount>,
}

impl SignalSettings {
    pub fn account(&self, id: &str) -> Option<&SignalAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One Signal number's own settings (its access settings and tenant are the shared
/// `ChannelAccount`'s).
#[derive(Clone, PartialEq, Eq)]
pub struct SignalAccount {
    pub id: String,
    /// The account's number on the daemon, E.164 (`+15551230001`).
    pub number: String,
    /// The daemon's base URL (default `http://127.0.0.1:8080`), without a trailing `/`.
    pub url: String,
    /// Longest text per message (default and maximum 2000).
    pub text_chunk_limit: usize,
}

impl std::fmt::Debug for SignalAccount {
    // The number is a tenant's phone number: only its last digits, wherever this is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalAccount")
            .field("id", &self.id)
            .field("number", &masked(&self.number))
            .field("url", &self.url)
            .field("text_chunk_limit", &self.text_chunk_limit)
            .finish()
    }
}

/// A number for people to recognise without showing it: `+…0123`.
pub fn masked(number: &str) -> String {
    let tail: String = number.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("+…{tail}")
}

/// The pass: each account's own value, else the channel's; one number on one account only.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawSignal = pass.platform("channels.signal", channel);
    let mut settings = SignalSettings::default();
    let mut fingerprints = BTreeMap::new();
    let mut numbers: BTreeMap<String, String> = BTreeMap::new();
    let mut warned = std::collections::BTreeSet::new();
    if base.number.is_some() && accounts.iter().all(|a| !a.implicit) {
        pass.error(
            "channels.signal.number",
            "a number belongs to one account: write it under channels.signal.accounts.<id>.number",
        );
    }
    for a in accounts {
        let own: RawSignal = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        let number = match own.number.as_deref() {
            None => {
                pass.error(
                    format!("{}.number", a.path),
                    "missing key: the account's phone number on the signal-cli daemon, in E.164 form (\"+15551230001\")",
                );
                None
            }
            Some(raw) => match number(raw) {
                Some(n) => Some(n),
                None => {
                    pass.error(
                        format!("{}.number", a.path),
                        "invalid number: use E.164 form, a + and 7-15 digits with the country code (\"+15551230001\")",
                    );
                    None
                }
            },
        };
        if let Some(n) = &number {
            if let Some(first) = numbers.get(n) {
                pass.error(
                    format!("{}.number", a.path),
                    format!(
                        "the same number as {first}.number; a Signal number belongs to one account and so to one tenant"
                    ),
                );
            } else {
                numbers.insert(n.clone(), a.path.to_string());
            }
        }
        let url = own.url.clone().or_else(|| base.url.clone()).unwrap_or_else(|| DEFAULT_URL.into());
        let at = if own.url.is_some() || a.implicit { format!("{}.url", a.path) } else { "channels.signal.url".into() };
        match reqwest::Url::parse(&url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {
                // The channel-level URL is warned about once, not once per account inheriting it.
                if u.scheme() == "http" && !loopback(&u) && warned.insert(at.clone()) {
                    pass.warn(
                        &at,
                        "the signal-cli daemon is reached over plain HTTP on a non-loopback address: its API has no authentication and carries every message of the number; keep it on 127.0.0.1 or put it behind TLS on a private network",
                    );
                }
            }
            _ => pass
                .error(&at, "invalid URL: expected http(s)://host[:port], the address of `signal-cli daemon --http`"),
        }
        let limit = a.own.text_chunk_limit.or(channel.text_chunk_limit).unwrap_or(SIGNAL_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > SIGNAL_TEXT_LIMIT {
            pass.error(format!("{}.textChunkLimit", a.path), format!("must be 1-{SIGNAL_TEXT_LIMIT}, got {limit}"));
        }
        let Some(number) = number else { continue };
        let acc = SignalAccount {
            id: a.id.to_string(),
            number,
            url: url.trim_end_matches('/').to_string(),
            text_chunk_limit: limit.clamp(1, SIGNAL_TEXT_LIMIT),
        };
        fingerprints.insert(acc.id.clone(), format!("{}|{}|{}", acc.number, acc.url, acc.text_chunk_limit));
        settings.accounts.push(acc);
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

/// Whether `u` names this machine (`localhost`, `127.0.0.0/8`, `::1`).
fn loopback(u: &reqwest::Url) -> bool {
    let host = u.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A phone number in E.164 form: `+`, then 7-15 digits, the first not 0. Spaces, dashes, dots
/// and parentheses written between the digits are dropped.
pub fn number(raw: &str) -> Option<String> {
    let rest = raw.trim().strip_prefix('+')?;
    let digits: String = rest.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    let ok = (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    ok.then(|| format!("+{digits}"))
}

/// A Signal account id (ACI), a UUID: lowercase, hyphenated.
pub fn uuid(raw: &str) -> Option<String> {
    let id = raw.trim().to_ascii_lowercase();
    let groups: Vec<&str> = id.split('-').collect();
    let ok = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then_some(id)
}

/// A sender as written in `allowFrom`: an E.164 number (`+15551230001`) or an ACI (a UUID),
/// optionally `signal:`-prefixed, in canonical form (see the adapter's module docs for which of
/// the two a message is reported by).
pub fn sender_id(raw: &str) -> Option<String> {
    let id = raw.strip_prefix("signal:").unwrap_or(raw);
    number(id).or_else(|| uuid(id))
}

/// A group id as signal-cli prints it (standard base64 of 32 bytes), or its URL-safe form.
pub fn group_id(raw: &str) -> Option<[u8; 32]> {
    let std = raw.replace('-', "+").replace('_', "/");
    let bytes = base64::engine::general_purpose::STANDARD.decode(std).ok()?;
    bytes.try_into().ok()
}

/// The chat id of a group: its URL-safe base64 (session keys take no `/`).
pub fn group_chat(bytes: &[u8; 32]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// The group id signal-cli takes (`groupId`): standard base64.
pub fn group_wire(chat: &str) -> String {
    chat.replace('-', "+").replace('_', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<crate::config::Config, Vec<crate::config::ConfigError>> {
        crate::config::load_str(text, std::path::Path::new("."))
    }

    #[test]
    fn the_pass_builds_accounts_with_inheritance_and_names_every_bad_key() {
        let c = load(
            r#"{ tenants: [ { id: "acme" }, { id: "globex" } ],
                 agents: { list: [ { id: "a", tenant: "acme" }, { id: "g", tenant: "globex" } ] },
                 bindings: [ { agentId: "a", match: { channel: "signal", accountId: "one" } },
                             { agentId: "g", match: { channel: "signal", accountId: "two" } } ],
                 channels: { signal: { url: "http://127.0.0.1:8080/",
                   accounts: {
                     one: { number: "+1 555 123-0001" },
                     two: { number: "+15551230002", url: "http://localhost:9999", textChunkLimit: 100 },
                   } } } }"#,
        )
        .unwrap();
        let s = c.channels.platform::<SignalSettings>("signal").unwrap();
        let one = s.account("one").unwrap();
        assert_eq!((one.number.as_str(), one.url.as_str()), ("+15551230001", "http://127.0.0.1:8080"));
        assert_eq!(one.text_chunk_limit, SIGNAL_TEXT_LIMIT);
        let two = s.account("two").unwrap();
        assert_eq!((two.url.as_str(), two.text_chunk_limit), ("http://localhost:9999", 100));
        assert!(!format!("{one:?}").contains("5551230001"), "the number is masked in Debug");
        assert!(c.warnings.iter().all(|w| !w.contains("plain HTTP")), "loopback is not warned about");

        let errs = load(
            r#"{ agents: { list: [ { id: "a" } ] }, channels: { signal: { number: "+15550000000", accounts: {
                 one: { number: "5551230001", allowFrom: ["bob", "+15557654321"] },
                 two: { url: "ftp://x", textChunkLimit: 0, groups: { "not-a-group": {} } },
                 three: { number: "+15551230003", token: "x" },
                 four: { number: "+1 555 123 0003" },
               } } } }"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "channels.signal.number",
            "channels.signal.accounts.one.number",
            "channels.signal.accounts.one.allowFrom[0]",
            "channels.signal.accounts.two.number",
            "channels.signal.accounts.two.url",
            "channels.signal.accounts.two.textChunkLimit",
            "channels.signal.accounts.two.groups.not-a-group",
            "channels.signal.accounts.three.token",
            "channels.signal.accounts.three.number",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert!(!paths.contains(&"channels.signal.accounts.one.allowFrom[1]"), "{paths:?}");
        // Accounts are read in id order: `three` repeats the number of `four`.
        let dup = errs.iter().find(|e| e.path == "channels.signal.accounts.three.number").unwrap();
        assert!(dup.message.contains("the same number as channels.signal.accounts.four.number"), "{}", dup.message);
        assert!(!paths.contains(&"channels.signal.accounts.four.number"), "{paths:?}");
    }

    #[test]
    fn a_plain_http_daemon_off_this_machine_is_warned_about() {
        let c = load(
            r#"{ agents: { list: [ { id: "a" } ] }, bindings: [ { agentId: "a", match: { channel: "signal" } } ],
                 channels: { signal: { accounts: { one: { number: "+15551230001", url: "http://10.0.0.5:8080" },
                                                   two: { number: "+15551230002", url: "https://signal.internal:8443" } } } } }"#,
        )
        .unwrap();
        let warned: Vec<&String> = c.warnings.iter().filter(|w| w.contains("plain HTTP")).collect();
        assert_eq!(warned.len(), 1, "{:?}", c.warnings);
        assert!(warned[0].starts_with("channels.signal.accounts.one.url"), "{warned:?}");
    }

    #[test]
    fn ids_have_one_canonical_form() {
        assert_eq!(sender_id("+15551230001").as_deref(), Some("+15551230001"));
        assert_eq!(sender_id("signal:+44 20 7946 0018").as_deref(), Some("+442079460018"));
        let aci = "A1B2C3D4-0000-4000-8000-00000000BEEF";
        assert_eq!(sender_id(aci).as_deref(), Some("a1b2c3d4-0000-4000-8000-00000000beef"));
        for bad in
            ["", "15551230001", "+0551230001", "+123", "+1234567890123456", "@bob", "a1b2c3d4-0000", "+1555abc0001"]
        {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
        let g = [7u8; 32];
        let std = base64::engine::general_purpose::STANDARD.encode(g);
        assert_eq!(group_id(&std), Some(g));
        assert_eq!(group_id(&group_chat(&g)), Some(g), "the URL-safe form too");
        assert_eq!(group_wire(&group_chat(&[0xfb; 32])), base64::engine::general_purpose::STANDARD.encode([0xfb; 32]));
        for bad in ["", "abc", "not base64!", &base64::engine::general_purpose::STANDARD.encode([1u8; 16])] {
            assert_eq!(group_id(bad), None, "{bad:?}");
        }
    }
}
