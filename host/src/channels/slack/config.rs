//! Slack's own keys of `channels.slack` and `channels.slack.accounts.<id>` (the bot token, the
//! Socket Mode app token or the Events API signing secret, the Web API URL, and `channels`: where
//! the bot answers) and their validation pass, which `Adapter::validate` runs. The keys every
//! platform shares, and their inheritance, are the shared pass's (`config/validate/channels.rs`).
//!
//! Slack's `channels.<id or name>` become the shared layer's group rules (`GroupRule`, keyed by
//! the conversation id once names are resolved), so `access::decide` stays the one access rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::channels::GroupRule;
use crate::config::{RawChannel, SecretRef};

/// Slack advises at most 4,000 characters per message (it truncates past 40,000).
pub const SLACK_TEXT_LIMIT: usize = 4000;

/// Slack's limit on Socket Mode connections per app.
pub const MAX_CONNECTIONS: u32 = 10;

/// The public Web API.
pub const SLACK_API_URL: &str = "https://slack.com/api";

/// One entry of Slack's `channels`, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSlackChannel {
    allow: Option<bool>,
    require_mention: Option<bool>,
    users: Option<Vec<String>>,
}

/// The platform keys of a Slack block, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSlack {
    bot_token: Option<SecretRef>,
    app_token: Option<SecretRef>,
    signing_secret: Option<SecretRef>,
    mode: Option<String>,
    api_url: Option<String>,
    connections: Option<u32>,
    channels: Option<BTreeMap<String, RawSlackChannel>>,
}

/// How an account receives events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Socket Mode: a WebSocket opened with the app-level token (`xapp-`); the default.
    Socket { app_token: SecretRef },
    /// The HTTP Events API: Slack posts to `/channels/slack/<account>/events`, signed with the
    /// app's signing secret.
    Events { signing_secret: SecretRef },
}

/// The Slack settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct SlackSettings {
    pub accounts: Vec<SlackAccount>,
}

impl SlackSettings {
    pub fn account(&self, id: &str) -> Option<&SlackAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One Slack app installation's own settings (its access settings and tenant are the shared
/// `ChannelAccount`'s).
#[derive(Debug, Clone)]
pub struct SlackAccount {
    pub id: String,
    pub bot_token: SecretRef,
    pub mode: Mode,
    /// Web API base URL (default `https://slack.com/api`).
    pub api_url: String,
    /// Longest text per message (default and maximum 4000).
    pub text_chunk_limit: usize,
    /// Socket Mode connections kept open at once (1-10, default 1): with two, Slack's periodic
    /// refresh of one connection leaves the other taking events.
    pub connections: usize,
    /// Where the bot answers: by conversation id (`C…`, `G…`), by name (resolved at start), or
    /// `"*"`; in the shared layer's group-rule form.
    pub channels: BTreeMap<String, GroupRule>,
}

/// The pass: each account's own value, else the channel's.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawSlack = pass.platform("channels.slack", channel);
    let base_channels = base.channels.as_ref().map(|c| channels(pass, "channels.slack", c));
    let mut settings = SlackSettings::default();
    let mut fingerprints = BTreeMap::new();
    for a in accounts {
        let own: RawSlack = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        for (key, s) in
            [("botToken", &own.bot_token), ("appToken", &own.app_token), ("signingSecret", &own.signing_secret)]
        {
            if let Some(s) = s {
                pass.secret(&format!("{}.{key}", a.path), s);
            }
        }
        let pick = |f: fn(&RawSlack) -> Option<&SecretRef>| f(&own).or_else(|| f(&base)).cloned();
        let bot_token = pick(|c| c.bot_token.as_ref());
        if bot_token.is_none() {
            pass.error(
                format!("{}.botToken", a.path),
                "missing key: the app's bot token (xoxb-...), e.g. { env: \"ACME_SLACK_BOT_TOKEN\" }",
            );
        }
        let mode = match own.mode.as_deref().or(base.mode.as_deref()).unwrap_or("socket") {
            "socket" => match pick(|c| c.app_token.as_ref()) {
                Some(app_token) => Some(Mode::Socket { app_token }),
                None => {
                    pass.error(
                        format!("{}.appToken", a.path),
                        "missing key: Socket Mode (the default mode) needs the app-level token (xapp-..., scope connections:write); or set mode: \"events\" with signingSecret",
                    );
                    None
                }
            },
            "events" => match pick(|c| c.signing_secret.as_ref()) {
                Some(signing_secret) => Some(Mode::Events { signing_secret }),
                None => {
                    pass.error(
                        format!("{}.signingSecret", a.path),
                        "missing key: mode \"events\" needs the app's signing secret (Basic Information, App Credentials)",
                    );
                    None
                }
            },
            other => {
                pass.error(format!("{}.mode", a.path), format!("unknown mode {other:?}: use \"socket\" or \"events\""));
                None
            }
        };
        for (key, s) in [("botToken", &bot_token), ("appToken", &own.app_token)] {
            if let Some(SecretRef::Literal(v)) = s {
                let want = if key == "botToken" { "xoxb-" } else { "xapp-" };
                if !v.expose().starts_with(want) {
                    pass.error(format!("{}.{key}", a.path), format!("a Slack {key} starts with {want:?}"));
                }
            }
        }
        let api_url = own.api_url.clone().or_else(|| base.api_url.clone()).unwrap_or_else(|| SLACK_API_URL.into());
        match reqwest::Url::parse(&api_url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => pass.error(
                format!("{}.apiUrl", a.path),
                format!("invalid URL {api_url:?}: expected http(s)://host[:port][/path]"),
            ),
        }
        let limit = a.own.text_chunk_limit.or(channel.text_chunk_limit).unwrap_or(SLACK_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > SLACK_TEXT_LIMIT {
            pass.error(format!("{}.textChunkLimit", a.path), format!("must be 1-{SLACK_TEXT_LIMIT}, got {limit}"));
        }
        let connections = own.connections.or(base.connections).unwrap_or(1);
        if !(1..=MAX_CONNECTIONS).contains(&connections) {
            pass.error(
                format!("{}.connections", a.path),
                format!("must be 1-{MAX_CONNECTIONS} (Slack's limit per app), got {connections}"),
            );
        }
        // An account's own channels replace the channel block's.
        let rules = match (&own.channels, a.implicit) {
            (Some(c), false) => channels(pass, a.path, c),
            _ => base_channels.clone().unwrap_or_default(),
        };
        let (Some(bot_token), Some(mode)) = (bot_token, mode) else { continue };
        let acc = SlackAccount {
            id: a.id.to_string(),
            bot_token,
            mode,
            api_url: api_url.trim_end_matches('/').to_string(),
            text_chunk_limit: limit.clamp(1, SLACK_TEXT_LIMIT),
            connections: connections.clamp(1, MAX_CONNECTIONS) as usize,
            channels: rules,
        };
        fingerprints.insert(acc.id.clone(), format!("{acc:?}"));
        settings.accounts.push(acc);
    }
    // Credentials written once for every account are warned about where they are written.
    if accounts.iter().all(|a| !a.implicit) {
        for (key, s) in
            [("botToken", &base.bot_token), ("appToken", &base.app_token), ("signingSecret", &base.signing_secret)]
        {
            if let Some(s) = s {
                pass.secret(&format!("channels.slack.{key}"), s);
            }
        }
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

/// `channels` as written at `path.channels` (checked once, where it is written).
fn channels(
    pass: &mut ChannelPass<'_>,
    path: &str,
    raw: &BTreeMap<String, RawSlackChannel>,
) -> BTreeMap<String, GroupRule> {
    let mut out = BTreeMap::new();
    for (key, c) in raw {
        let cpath = format!("{path}.channels.{key}");
        let Some(key) = channel_key(key) else {
            pass.error(
                &cpath,
                format!("invalid channel {key:?}: use the conversation id (\"C0123ABCD\"), the channel name (\"general\") or \"*\""),
            );
            continue;
        };
        let mut users = None;
        if let Some(list) = &c.users {
            let mut ok = Vec::new();
            for (i, u) in list.iter().enumerate() {
                match (u.as_str(), sender_id(u)) {
                    ("*", _) => ok.push("*".to_string()),
                    (_, Some(id)) => ok.push(id),
                    (_, None) => pass.error(
                        format!("{cpath}.users[{i}]"),
                        format!("invalid user {u:?}: use a Slack user id (\"U0123ABCD\")"),
                    ),
                }
            }
            users = Some(ok);
        }
        out.insert(
            key,
            GroupRule { enabled: c.allow != Some(false), require_mention: c.require_mention, allow_from: users },
        );
    }
    out
}

/// A `channels` key in its canonical form: a conversation id (uppercase), a channel name
/// (lowercase, `#` dropped, prefixed `#` to tell it from an id), or `"*"`.
pub fn channel_key(raw: &str) -> Option<String> {
    if raw == "*" {
        return Some(raw.into());
    }
    let is_id = |s: &str| {
        s.len() >= 9
            && s.len() <= 24
            && s.starts_with(['C', 'G', 'D'])
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    if is_id(raw) {
        return Some(raw.into());
    }
    let name = raw.strip_prefix('#').unwrap_or(raw);
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.');
    ok.then(|| format!("#{name}"))
}

/// A user id as written in `allowFrom` or `users`: `U0123ABCD`, `W0123ABCD` (Enterprise Grid),
/// optionally `slack:`-prefixed, any case → uppercase.
pub fn sender_id(raw: &str) -> Option<String> {
    let id = raw.strip_prefix("slack:").unwrap_or(raw).to_ascii_uppercase();
    let ok = (3..=24).contains(&id.len())
        && id.starts_with(['U', 'W'])
        && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    ok.then_some(id)
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
            r#"{ tenants: [ { id: "acme" } ], agents: { list: [ { id: "a", tenant: "acme" } ] },
                 bindings: [ { agentId: "a", match: { channel: "slack" } } ],
                 channels: { slack: { apiUrl: "http://127.0.0.1:9/api/", appToken: { env: "APP" },
                   channels: { general: {}, "C0123ABCD": { requireMention: false, users: ["u0alice1"] } },
                   accounts: {
                     one: { botToken: { env: "B1" } },
                     two: { botToken: { env: "B2" }, mode: "events", signingSecret: { env: "S" }, channels: { "*": { allow: false } } },
                   } } } }"#,
        )
        .unwrap();
        let s = c.channels.platform::<SlackSettings>("slack").unwrap();
        let one = s.account("one").unwrap();
        assert_eq!(one.api_url, "http://127.0.0.1:9/api");
        assert_eq!(one.mode, Mode::Socket { app_token: SecretRef::Env("APP".into()) });
        assert_eq!(one.text_chunk_limit, SLACK_TEXT_LIMIT);
        assert_eq!(one.channels.keys().collect::<Vec<_>>(), ["#general", "C0123ABCD"]);
        let rule = &one.channels["C0123ABCD"];
        assert_eq!(
            (rule.enabled, rule.require_mention, rule.allow_from.clone()),
            (true, Some(false), Some(vec!["U0ALICE1".into()]))
        );
        let two = s.account("two").unwrap();
        assert_eq!(two.mode, Mode::Events { signing_secret: SecretRef::Env("S".into()) });
        assert!(!two.channels["*"].enabled, "an account's own channels replace the channel block's");
        assert_eq!(two.channels.len(), 1);

        let errs = load(
            r#"{ agents: { list: [ { id: "a" } ] }, channels: { slack: { accounts: {
                 one: { appToken: "xoxb-wrong-kind", mode: "socket", apiUrl: "nope", allowFrom: ["@bob"] },
                 two: { botToken: { env: "B" }, mode: "events", textChunkLimit: 0, groups: { "C0123ABCD": {} } },
                 three: { botToken: { env: "B" }, appToken: { env: "A" }, channels: { "Not A Name": {}, general: { users: ["bob"], color: 1 } } },
                 four: { botToken: { env: "B" }, mode: "webhook", extra: true, connections: 11 },
               } } } }"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "channels.slack.accounts.one.botToken",
            "channels.slack.accounts.one.appToken",
            "channels.slack.accounts.one.apiUrl",
            "channels.slack.accounts.one.allowFrom[0]",
            "channels.slack.accounts.two.signingSecret",
            "channels.slack.accounts.two.textChunkLimit",
            "channels.slack.accounts.two.groups.C0123ABCD",
            "channels.slack.accounts.three.channels.Not A Name",
            "channels.slack.accounts.three.channels.general.users[0]",
            "channels.slack.accounts.three.channels.general.color",
            "channels.slack.accounts.four.mode",
            "channels.slack.accounts.four.extra",
            "channels.slack.accounts.four.connections",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert!(errs.iter().all(|e| !e.message.contains("xoxb-wrong-kind")), "literal secrets are never echoed");
    }

    #[test]
    fn sender_ids_are_user_ids_in_uppercase() {
        assert_eq!(sender_id("U0123ABCD").as_deref(), Some("U0123ABCD"));
        assert_eq!(sender_id("slack:u0123abcd").as_deref(), Some("U0123ABCD"));
        assert_eq!(sender_id("W0ENTERPRISE").as_deref(), Some("W0ENTERPRISE"));
        for bad in ["", "U", "@alice", "C0123ABCD", "U01 23", "B0123ABCD", "U0123-ABC"] {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn channel_keys_are_ids_names_or_star() {
        assert_eq!(channel_key("C0123ABCD").as_deref(), Some("C0123ABCD"));
        assert_eq!(channel_key("G0PRIVATE1").as_deref(), Some("G0PRIVATE1"));
        assert_eq!(channel_key("general").as_deref(), Some("#general"));
        assert_eq!(channel_key("#team-support").as_deref(), Some("#team-support"));
        assert_eq!(channel_key("*").as_deref(), Some("*"));
        for bad in ["", "#", "General Chat", "c0123abcd!", "#ÜBER"] {
            assert_eq!(channel_key(bad), None, "{bad:?}");
        }
    }
}
