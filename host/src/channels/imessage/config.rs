//! iMessage's own keys of `channels.imessage` and `channels.imessage.accounts.<id>`: the
//! BlueBubbles server's `url`, its API `password`, the inbound `webhookSecret` and the
//! `sendMethod`, and their validation pass (`Adapter::validate`). The shared keys (`dmPolicy`,
//! `allowFrom`, `groups` by chat guid, ...) are the shared pass's.
//!
//! The API password travels as a query parameter (BlueBubbles has no other way), so the `url`
//! must be `https://` or loopback, and it may hold neither a query nor user info (the password
//! goes in `password`, a secret reference). The webhook secret must differ from the password:
//! the webhook URL is configured in BlueBubbles and may be seen by whoever sees that screen or a
//! proxy log, and it must not open the bridge's API.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::{RawChannel, SecretRef};

/// Longest text of one reply message (iMessage itself takes much longer ones; long texts are
/// hard to read on a phone).
pub const IMESSAGE_TEXT_LIMIT: usize = 4000;
/// The most `textChunkLimit` may raise it to.
pub const IMESSAGE_TEXT_MAX: usize = 20_000;

/// How BlueBubbles sends a message on the Mac.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMethod {
    /// Through AppleScript (the default; works without the Private API, but a send that fails
    /// in Messages.app may not be reported).
    AppleScript,
    /// Through the Private API helper (must be enabled on the server; reports failures).
    PrivateApi,
}

impl SendMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SendMethod::AppleScript => "apple-script",
            SendMethod::PrivateApi => "private-api",
        }
    }
}

/// The platform keys of an iMessage block, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIMessage {
    url: Option<String>,
    password: Option<SecretRef>,
    webhook_secret: Option<SecretRef>,
    send_method: Option<String>,
}

/// The iMessage settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct IMessageSettings {
    pub accounts: Vec<IMessageAccount>,
}

impl IMessageSettings {
    pub fn account(&self, id: &str) -> Option<&IMessageAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One BlueBubbles bridge's settings (its access settings and tenant are the shared
/// `ChannelAccount`'s).
#[derive(Clone)]
pub struct IMessageAccount {
    pub id: String,
    /// The server's base URL, without a trailing `/` (`https://mac.example:1234`).
    pub url: String,
    pub password: SecretRef,
    pub webhook_secret: SecretRef,
    pub send_method: SendMethod,
    pub text_chunk_limit: usize,
}

// The URL is not a secret, but it is kept out of Debug output anyway (it is where the password
// is sent, and Debug output ends up in logs).
impl std::fmt::Debug for IMessageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMessageAccount")
            .field("id", &self.id)
            .field("send_method", &self.send_method)
            .field("text_chunk_limit", &self.text_chunk_limit)
            .finish_non_exhaustive()
    }
}

impl IMessageAccount {
    /// What the account's connection depends on, comparably (the URL by digest).
    fn fingerprint(&self) -> String {
        let url = crate::crypto::hex(ring::digest::digest(&ring::digest::SHA256, self.url.as_bytes()).as_ref());
        format!("{url} {:?} {:?} {:?} {}", self.password, self.webhook_secret, self.send_method, self.text_chunk_limit)
    }
}

/// Why a bridge URL is refused (`None`: fine).
pub fn url_problem(raw: &str) -> Option<String> {
    let Ok(u) = reqwest::Url::parse(raw) else {
        return Some("not a URL: expected https://host[:port] (or http:// on loopback)".into());
    };
    if u.query().is_some() || !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Some(
            "the URL must hold no query, user info or fragment: put the API password in `password` (a secret reference)"
                .into(),
        );
    }
    let Some(host) = u.host_str().filter(|h| !h.is_empty()) else { return Some("the URL has no host".into()) };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match u.scheme() {
        "https" => None,
        "http" if loopback => None,
        "http" => Some(
            "plain http:// to a non-loopback host would send the API password in clear (it travels as a query parameter): use https:// (BlueBubbles' Let's Encrypt or a TLS proxy), or a loopback address"
                .into(),
        ),
        _ => Some("expected https:// (or http:// on loopback)".into()),
    }
}

/// The pass: each account's own value, else the channel's.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawIMessage = pass.platform("channels.imessage", channel);
    let mut settings = IMessageSettings::default();
    let mut fingerprints = BTreeMap::new();
    let mut urls: BTreeMap<String, String> = BTreeMap::new();
    for a in accounts {
        let own: RawIMessage = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        for (key, s) in [("password", &own.password), ("webhookSecret", &own.webhook_secret)] {
            if let Some(s) = s {
                pass.secret(&format!("{}.{key}", a.path), s);
            }
        }
        let pick = |f: fn(&RawIMessage) -> Option<&SecretRef>| f(&own).or_else(|| f(&base)).cloned();
        let password = pick(|c| c.password.as_ref());
        let webhook_secret = pick(|c| c.webhook_secret.as_ref());
        if password.is_none() {
            pass.error(
                format!("{}.password", a.path),
                "missing key: the BlueBubbles server password, e.g. { env: \"ACME_BLUEBUBBLES_PASSWORD\" }",
            );
        }
        if webhook_secret.is_none() {
            pass.error(
                format!("{}.webhookSecret", a.path),
                "missing key: a random secret of its own for inbound deliveries (not the server password), e.g. { env: \"ACME_IMESSAGE_WEBHOOK_SECRET\" }",
            );
        }
        if let (Some(p), Some(w)) = (&password, &webhook_secret)
            && p == w
        {
            pass.error(
                format!("{}.webhookSecret", a.path),
                "the webhook secret must not be the server password: the webhook URL is stored in BlueBubbles and may show in proxy logs; generate a separate secret",
            );
        }
        let url = own.url.clone().or_else(|| base.url.clone());
        let url = match url {
            None => {
                pass.error(
                    format!("{}.url", a.path),
                    "missing key: the BlueBubbles server's URL, e.g. \"https://mac.example.com:1234\"",
                );
                None
            }
            Some(u) => match url_problem(&u) {
                Some(why) => {
                    pass.error(format!("{}.url", a.path), why);
                    None
                }
                None => Some(u.trim_end_matches('/').to_string()),
            },
        };
        if let Some(u) = &url {
            // One server however it is written: host and port (the default one made explicit).
            let key = reqwest::Url::parse(u).ok().map_or_else(
                || u.to_ascii_lowercase(),
                |p| {
                    format!(
                        "{}:{}",
                        p.host_str().unwrap_or("").to_ascii_lowercase(),
                        p.port_or_known_default().unwrap_or(0)
                    )
                },
            );
            if let Some(first) = urls.get(&key) {
                pass.error(
                    format!("{}.url", a.path),
                    format!("the same BlueBubbles server as {first}: one bridge (one Apple ID) serves one account and so one tenant, or its messages would reach both"),
                );
            } else {
                urls.insert(key, a.path.to_string());
            }
        }
        let send_method = match own.send_method.as_deref().or(base.send_method.as_deref()).unwrap_or("apple-script") {
            "apple-script" => Some(SendMethod::AppleScript),
            "private-api" => Some(SendMethod::PrivateApi),
            other => {
                pass.error(
                    format!("{}.sendMethod", a.path),
                    format!("unknown send method {other:?}: use \"apple-script\" (the default) or \"private-api\""),
                );
                None
            }
        };
        let limit = a.own.text_chunk_limit.or(channel.text_chunk_limit).unwrap_or(IMESSAGE_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > IMESSAGE_TEXT_MAX {
            pass.error(format!("{}.textChunkLimit", a.path), format!("must be 1-{IMESSAGE_TEXT_MAX}, got {limit}"));
        }
        let (Some(url), Some(password), Some(webhook_secret), Some(send_method)) =
            (url, password, webhook_secret, send_method)
        else {
            continue;
        };
        let acc = IMessageAccount {
            id: a.id.to_string(),
            url,
            password,
            webhook_secret,
            send_method,
            text_chunk_limit: limit.clamp(1, IMESSAGE_TEXT_MAX),
        };
        fingerprints.insert(acc.id.clone(), acc.fingerprint());
        settings.accounts.push(acc);
    }
    // Credentials written once for every account are warned about where they are written.
    if accounts.iter().all(|a| !a.implicit) {
        for (key, s) in [("password", &base.password), ("webhookSecret", &base.webhook_secret)] {
            if let Some(s) = s {
                pass.secret(&format!("channels.imessage.{key}"), s);
            }
        }
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

/// A sender as written in `allowFrom` or reported by the bridge, canonical: a phone number in
/// E.164 (`+15551234567`; spaces, dots, dashes and brackets dropped) or an email address
/// (lowercased), optionally `imessage:`-prefixed.
pub fn sender_id(raw: &str) -> Option<String> {
    let id = raw.trim();
    let id = id.strip_prefix("imessage:").unwrap_or(id);
    if id.contains('@') {
        let lower = id.to_ascii_lowercase();
        let (local, domain) = lower.split_once('@')?;
        let ok_part = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        let ok = lower.len() <= 254 && ok_part(local) && ok_part(domain) && domain.contains('.');
        return ok.then_some(lower);
    }
    let digits: String = id.chars().filter(|c| !" .-()".contains(*c)).collect();
    let number = digits.strip_prefix('+')?;
    let ok = (7..=15).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| format!("+{number}"))
}

/// A chat guid (`iMessage;-;+15551234567`, `iMessage;+;chat123456789`, `SMS;-;…`) in the form
/// the shared layer keeps chats in (its session keys allow no `;`): `iMessage.-.+15551234567`.
/// Either form is read; `None` when it is not a chat guid this adapter can answer.
pub fn chat_key(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let mut parts = raw.splitn(3, ';');
    let (service, kind, ident) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(k), Some(i)) => (s, k, i),
        _ => {
            let mut parts = raw.splitn(3, '.');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(k), Some(i)) => (s, k, i),
                _ => return None,
            }
        }
    };
    let ok_service = !service.is_empty() && service.len() <= 16 && service.bytes().all(|b| b.is_ascii_alphanumeric());
    let ok_ident = !ident.is_empty()
        && ident.len() <= 100
        && ident.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@+=-".contains(&b));
    (ok_service && (kind == "-" || kind == "+") && ok_ident).then(|| format!("{service}.{kind}.{ident}"))
}

/// The bridge's chat guid of a chat key ([`chat_key`]'s inverse).
pub fn chat_guid(key: &str) -> String {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(k), Some(i)) => format!("{s};{k};{i}"),
        _ => key.to_string(),
    }
}

/// Whether a chat key is a group (`+`) rather than a direct chat (`-`).
pub fn is_group(key: &str) -> bool {
    key.split('.').nth(1) == Some("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<crate::config::Config, Vec<crate::config::ConfigError>> {
        crate::config::load_str(text, std::path::Path::new("."))
    }

    #[test]
    fn the_pass_builds_accounts_and_names_every_bad_key() {
        let c = load(
            r#"{ tenants: [ { id: "acme" }, { id: "globex" } ],
                 agents: { list: [ { id: "a", tenant: "acme" }, { id: "g", tenant: "globex" } ] },
                 bindings: [ { agentId: "a", match: { channel: "imessage", accountId: "acme" } },
                             { agentId: "g", match: { channel: "imessage", accountId: "globex" } } ],
                 channels: { imessage: { sendMethod: "private-api", accounts: {
                   acme: { url: "https://mac.acme.example:1234/", password: { env: "P1" }, webhookSecret: { env: "W1" },
                           allowFrom: ["+1 (555) 123-4567", "Alice@Example.COM"], groups: { "iMessage;+;chat123": {} } },
                   globex: { url: "http://127.0.0.1:1235", password: { env: "P2" }, webhookSecret: { env: "W2" },
                             sendMethod: "apple-script", textChunkLimit: 1000 },
                 } } } }"#,
        )
        .unwrap();
        let s = c.channels.platform::<IMessageSettings>("imessage").unwrap();
        let acme = s.account("acme").unwrap();
        assert_eq!(acme.url, "https://mac.acme.example:1234");
        assert_eq!(acme.send_method, SendMethod::PrivateApi, "inherited from the channel block");
        assert_eq!(acme.text_chunk_limit, IMESSAGE_TEXT_LIMIT);
        let globex = s.account("globex").unwrap();
        assert_eq!((globex.send_method, globex.text_chunk_limit), (SendMethod::AppleScript, 1000));
        let shared = c.channels.account("imessage", "acme").unwrap();
        assert_eq!(shared.access.allow_from, ["+15551234567", "alice@example.com"]);
        assert!(!format!("{acme:?}").contains("mac.acme"), "the URL is kept out of Debug output");

        let errs = load(
            r#"{ agents: { list: [ { id: "a" } ] }, channels: { imessage: { accounts: {
                 plain: { url: "http://mac.example.com:1234", password: { env: "P" }, webhookSecret: { env: "W" } },
                 query: { url: "https://mac.example.com/?password=hunter2", password: { env: "P" }, webhookSecret: { env: "W" } },
                 same: { url: "https://a.example", password: { env: "SAME" }, webhookSecret: { env: "SAME" } },
                 same2: { url: "https://b.example", password: "literal-pw-1", webhookSecret: "literal-pw-1" },
                 missing: { sendMethod: "carrier-pigeon", textChunkLimit: 0, allowFrom: ["bob"], groups: { "not a guid": {} } },
                 dup: { url: "https://A.example/", password: { env: "P3" }, webhookSecret: { env: "W3" }, color: 1 },
                 dup443: { url: "https://a.example:443", password: { env: "P4" }, webhookSecret: { env: "W4" } },
               } } } }"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "channels.imessage.accounts.plain.url",
            "channels.imessage.accounts.query.url",
            "channels.imessage.accounts.same.webhookSecret",
            "channels.imessage.accounts.same2.webhookSecret",
            "channels.imessage.accounts.missing.url",
            "channels.imessage.accounts.missing.password",
            "channels.imessage.accounts.missing.webhookSecret",
            "channels.imessage.accounts.missing.sendMethod",
            "channels.imessage.accounts.missing.textChunkLimit",
            "channels.imessage.accounts.missing.allowFrom[0]",
            "channels.imessage.accounts.missing.groups.not a guid",
            // `dup` comes first (accounts are read in order) and holds https://A.example.
            "channels.imessage.accounts.same.url",
            // The same server with its default port written out.
            "channels.imessage.accounts.dup443.url",
            "channels.imessage.accounts.dup.color",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let plain = errs.iter().find(|e| e.path == "channels.imessage.accounts.plain.url").unwrap();
        assert!(plain.message.contains("https://"), "{}", plain.message);
        assert!(errs.iter().all(|e| !e.message.contains("hunter2") && !e.message.contains("literal-pw-1")));
    }

    #[test]
    fn only_tls_or_loopback_urls_carry_the_password() {
        for ok in ["https://mac.example.com:1234", "http://127.0.0.1:1234", "http://localhost:1234/", "http://[::1]:9"]
        {
            assert_eq!(url_problem(ok), None, "{ok}");
        }
        for bad in ["http://10.0.0.5:1234", "http://mac.local", "ftp://x", "nope", "https://u:p@x", "https://x/#f"] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn sender_ids_and_chat_keys_are_canonical() {
        assert_eq!(sender_id("+15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(sender_id("imessage:+44 20 7946.0958").as_deref(), Some("+442079460958"));
        assert_eq!(sender_id("Bob.Smith+x@iCloud.com").as_deref(), Some("bob.smith+x@icloud.com"));
        for bad in ["", "5551234567", "+12", "bob", "a@b", "@x.com", "+1555abc4567", "a b@c.com"] {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
        assert_eq!(chat_key("iMessage;-;+15551234567").as_deref(), Some("iMessage.-.+15551234567"));
        assert_eq!(chat_key("iMessage.+.chat123456").as_deref(), Some("iMessage.+.chat123456"));
        assert_eq!(chat_key("SMS;-;bob@example.com").as_deref(), Some("SMS.-.bob@example.com"));
        for bad in ["", "iMessage", "iMessage;x;+1", "iMessage;-;", ";-;+1", "iMessage;-;a;b", "i/M;-;+1"] {
            assert_eq!(chat_key(bad), None, "{bad:?}");
        }
        for guid in ["iMessage;-;+15551234567", "iMessage;+;chat123456", "SMS;-;bob.smith@example.com"] {
            let key = chat_key(guid).unwrap();
            assert_eq!(chat_guid(&key), guid);
            assert!(crate::ids::validate_peer(&key).is_ok(), "{key} is a usable session peer");
        }
        assert!(is_group("iMessage.+.chat1") && !is_group("iMessage.-.+15551234567"));
    }
}
