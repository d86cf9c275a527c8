//! Discord's own keys of `channels.discord` and `channels.discord.accounts.<id>`: the bot token,
//! `apiUrl`, `gatewayUrl`, and `guilds.<guildId>` with `requireMention`, `allowFrom` and
//! `channels.<name or id>` (`allow`, `requireMention`, `allowFrom`). The shared keys (`dmPolicy`,
//! `allowFrom`, `groupPolicy`, `requireMention`) and their inheritance are the shared pass's
//! (`config/validate/channels.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::channels::GroupRule;
use crate::config::{RawChannel, SecretRef};

/// Discord's limit on one message's content.
pub const DISCORD_TEXT_LIMIT: usize = 2000;

/// The public REST API, version 10.
pub const DISCORD_API_URL: &str = "https://discord.com/api/v10";

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDiscord {
    token: Option<SecretRef>,
    /// The name some configs use for `token`.
    bot_token: Option<SecretRef>,
    api_url: Option<String>,
    gateway_url: Option<String>,
    guilds: Option<BTreeMap<String, RawGuild>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGuild {
    /// A label for people reading the config; not used.
    slug: Option<String>,
    require_mention: Option<bool>,
    allow_from: Option<Vec<String>>,
    /// OpenClaw's name for `allowFrom`.
    users: Option<Vec<String>>,
    channels: Option<BTreeMap<String, RawRoom>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRoom {
    allow: Option<bool>,
    require_mention: Option<bool>,
    allow_from: Option<Vec<String>>,
    users: Option<Vec<String>>,
}

/// The Discord settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct DiscordSettings {
    pub accounts: Vec<DiscordAccount>,
}

impl DiscordSettings {
    pub fn account(&self, id: &str) -> Option<&DiscordAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One Discord bot's own settings.
#[derive(Debug, Clone)]
pub struct DiscordAccount {
    pub id: String,
    pub token: SecretRef,
    /// REST base, with the version (`https://discord.com/api/v10`).
    pub api_url: String,
    /// Gateway base (`wss://gateway.discord.gg`); `None`: what `GET /gateway/bot` answers.
    pub gateway_url: Option<String>,
    /// Where the bot answers in servers, by guild id (or `"*"`).
    pub guilds: BTreeMap<String, Guild>,
}

/// `guilds.<guildId>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guild {
    pub require_mention: Option<bool>,
    pub allow_from: Option<Vec<String>>,
    /// By channel id, or by lower-case name without `#` (resolved against the guild's channel
    /// list when a message arrives); `"*"` for every other channel. Empty: every channel.
    pub channels: BTreeMap<String, Room>,
}

/// `guilds.<guildId>.channels.<name or id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub allow: bool,
    pub require_mention: Option<bool>,
    pub allow_from: Option<Vec<String>>,
}

impl DiscordAccount {
    /// The group rule for a message in `channel` (a thread's parent channel) of `guild`, for the
    /// shared access check: `None` when the guild is not configured (the group policy decides),
    /// a disabled rule when the guild lists channels and this one is not among them (or is
    /// `allow: false`).
    pub fn rule(&self, guild: &str, channel_id: &str, channel_name: Option<&str>) -> Option<GroupRule> {
        let g = self.guilds.get(guild).or_else(|| self.guilds.get("*"))?;
        if g.channels.is_empty() {
            return Some(GroupRule {
                enabled: true,
                require_mention: g.require_mention,
                allow_from: g.allow_from.clone(),
            });
        }
        let by_name = channel_name.map(room_key).and_then(|n| g.channels.get(&n));
        let room = g.channels.get(channel_id).or(by_name).or_else(|| g.channels.get("*"));
        Some(match room {
            Some(r) if r.allow => GroupRule {
                enabled: true,
                require_mention: r.require_mention.or(g.require_mention),
                allow_from: r.allow_from.clone().or_else(|| g.allow_from.clone()),
            },
            _ => GroupRule { enabled: false, require_mention: None, allow_from: None },
        })
    }

    /// Whether some configured channel is named rather than given by id (names are resolved
    /// from the guild's channel list).
    pub fn names_channels(&self, guild: &str) -> bool {
        self.guilds.get(guild).is_some_and(|g| g.channels.keys().any(|k| k != "*" && snowflake(k).is_none()))
    }
}

/// A channel name as a key: lower case, without a leading `#`.
pub fn room_key(name: &str) -> String {
    name.trim_start_matches('#').to_lowercase()
}

/// A Discord id (snowflake): decimal digits, non-zero.
pub fn snowflake(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
        .filter(|n| *n != 0)
}

/// A sender id as written in `allowFrom`: `123`, `discord:123`, `user:123`, `<@123>` or
/// `<@!123>` → `123`.
pub fn sender_id(raw: &str) -> Option<String> {
    let id = raw.strip_prefix("discord:").or_else(|| raw.strip_prefix("user:")).unwrap_or(raw);
    let id = id.strip_prefix("<@").and_then(|r| r.strip_suffix('>')).map(|r| r.trim_start_matches('!')).unwrap_or(id);
    snowflake(id).map(|n| n.to_string())
}

/// The pass: each account's own value, else the channel's.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawDiscord = pass.platform("channels.discord", channel);
    let base_guilds = guilds(pass, "channels.discord", base.guilds.as_ref());
    literal_secrets(pass, "channels.discord", &base);
    let mut settings = DiscordSettings::default();
    let mut fingerprints = BTreeMap::new();
    for a in accounts {
        let own: RawDiscord = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        let layers = [&own, &base];
        let pick = |f: fn(&RawDiscord) -> Option<&SecretRef>| layers.iter().find_map(|c| f(c)).cloned();
        let Some(token) = pick(|c| c.token.as_ref()).or_else(|| pick(|c| c.bot_token.as_ref())) else {
            pass.error(
                format!("{}.token", a.path),
                "missing key: the bot's token (Developer Portal → your application → Bot → Reset Token), e.g. { env: \"ACME_DISCORD_TOKEN\" }",
            );
            continue;
        };
        if !a.implicit {
            literal_secrets(pass, a.path, &own);
        }
        let api_url = own.api_url.clone().or_else(|| base.api_url.clone()).unwrap_or_else(|| DISCORD_API_URL.into());
        url(pass, &format!("{}.apiUrl", a.path), &api_url, &["https", "http"]);
        let gateway_url = own.gateway_url.clone().or_else(|| base.gateway_url.clone());
        if let Some(g) = &gateway_url {
            url(pass, &format!("{}.gatewayUrl", a.path), g, &["wss", "ws"]);
        }
        let guilds = match (&own.guilds, a.implicit) {
            (Some(g), false) => guilds(pass, a.path, Some(g)),
            _ => base_guilds.clone(),
        };
        let acc = DiscordAccount {
            id: a.id.to_string(),
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
            gateway_url: gateway_url.map(|g| g.trim_end_matches('/').to_string()),
            guilds,
        };
        fingerprints.insert(acc.id.clone(), format!("{acc:?}"));
        settings.accounts.push(acc);
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

fn literal_secrets(pass: &mut ChannelPass<'_>, path: &str, raw: &RawDiscord) {
    for (key, s) in [("token", &raw.token), ("botToken", &raw.bot_token)] {
        if let Some(s) = s {
            pass.secret(&format!("{path}.{key}"), s);
        }
    }
}

fn url(pass: &mut ChannelPass<'_>, path: &str, value: &str, schemes: &[&str]) {
    match reqwest::Url::parse(value) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => {}
        _ => pass.error(path, format!("invalid URL {value:?}: expected {}://host[:port][/path]", schemes[0])),
    }
}

fn guilds(pass: &mut ChannelPass<'_>, path: &str, raw: Option<&BTreeMap<String, RawGuild>>) -> BTreeMap<String, Guild> {
    let mut out = BTreeMap::new();
    for (id, g) in raw.into_iter().flatten() {
        let gpath = format!("{path}.guilds.{id}");
        if id != "*" && snowflake(id).is_none() {
            pass.error(&gpath, format!("invalid guild {id:?}: use the server's numeric id (Server Settings → Widget, or Copy Server ID in developer mode) or \"*\""));
            continue;
        }
        let _ = &g.slug;
        let allow_from = senders(
            pass,
            &gpath,
            g.allow_from.as_ref().or(g.users.as_ref()),
            if g.allow_from.is_some() { "allowFrom" } else { "users" },
        );
        let mut channels = BTreeMap::new();
        for (name, r) in g.channels.iter().flatten() {
            let rpath = format!("{gpath}.channels.{name}");
            let key = if name == "*" || snowflake(name).is_some() { name.clone() } else { room_key(name) };
            if key.is_empty() {
                pass.error(&rpath, "a channel needs a name or an id");
                continue;
            }
            let allow_from = senders(
                pass,
                &rpath,
                r.allow_from.as_ref().or(r.users.as_ref()),
                if r.allow_from.is_some() { "allowFrom" } else { "users" },
            );
            channels
                .insert(key, Room { allow: r.allow != Some(false), require_mention: r.require_mention, allow_from });
        }
        out.insert(id.clone(), Guild { require_mention: g.require_mention, allow_from, channels });
    }
    out
}

fn senders(pass: &mut ChannelPass<'_>, path: &str, list: Option<&Vec<String>>, key: &str) -> Option<Vec<String>> {
    let list = list?;
    let mut out = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        if raw == "*" {
            out.push(raw.clone());
            continue;
        }
        match sender_id(raw) {
            Some(id) => out.push(id),
            None => pass.error(format!("{path}.{key}[{i}]"), super::SENDER_HINT),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ids_are_snowflakes() {
        for ok in ["123456789012345678", "discord:42", "user:42", "<@42>", "<@!42>"] {
            assert!(sender_id(ok).is_some(), "{ok}");
        }
        assert_eq!(sender_id("<@!42>").as_deref(), Some("42"));
        for bad in ["", "0", "alice", "@alice", "<@alice>", "123456789012345678901", "-5"] {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
    }

    fn account(guilds: BTreeMap<String, Guild>) -> DiscordAccount {
        DiscordAccount {
            id: "a".into(),
            token: SecretRef::Env("T".into()),
            api_url: String::new(),
            gateway_url: None,
            guilds,
        }
    }

    #[test]
    fn channels_resolve_by_id_or_name_and_unlisted_ones_are_off() {
        let room = |allow| Room { allow, require_mention: None, allow_from: None };
        let g = Guild {
            require_mention: Some(true),
            allow_from: None,
            channels: [
                ("general".to_string(), room(true)),
                ("4001".to_string(), room(true)),
                ("random".into(), room(false)),
            ]
            .into(),
        };
        let a = account([("2000".to_string(), g)].into());
        assert!(a.rule("2000", "4000", Some("General")).unwrap().enabled, "by name, case-insensitive");
        assert!(a.rule("2000", "4001", None).unwrap().enabled, "by id");
        assert!(!a.rule("2000", "4002", Some("random")).unwrap().enabled, "allow: false");
        assert!(!a.rule("2000", "4003", Some("other")).unwrap().enabled, "not listed");
        assert_eq!(
            a.rule("2000", "4000", Some("general")).unwrap().require_mention,
            Some(true),
            "inherited from the guild"
        );
        assert!(a.rule("9999", "4000", Some("general")).is_none(), "an unconfigured guild is the group policy's");
        assert!(a.names_channels("2000"));
    }
}
