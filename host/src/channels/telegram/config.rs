//! Telegram's own keys of `channels.telegram` and `channels.telegram.accounts.<id>` (the bot's
//! token, the Bot API URL) and their validation pass, which `Adapter::validate` runs. The keys
//! every platform shares, and their inheritance, are the shared pass's
//! (`config/validate/channels.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::{RawChannel, SecretRef};

/// Telegram's own limit on one message's text.
pub const TELEGRAM_TEXT_LIMIT: usize = 4096;

/// The public Bot API.
pub const TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// The platform keys of a Telegram block, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTelegram {
    token: Option<SecretRef>,
    /// OpenClaw's name for `token`.
    bot_token: Option<SecretRef>,
    api_url: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<SecretRef>,
}

/// The Telegram settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct TelegramSettings {
    pub accounts: Vec<TelegramAccount>,
}

impl TelegramSettings {
    pub fn account(&self, id: &str) -> Option<&TelegramAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One Telegram bot's own settings (its access settings and tenant are the shared
/// `ChannelAccount`'s).
#[derive(Debug, Clone)]
pub struct TelegramAccount {
    pub id: String,
    pub token: SecretRef,
    /// Bot API base URL (default `https://api.telegram.org`), for self-hosted Bot API servers.
    pub api_url: String,
    /// Longest text per message (default and maximum 4096).
    pub text_chunk_limit: usize,
}

/// The pass: each account's own value, else the channel's.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawTelegram = pass.platform("channels.telegram", channel);
    let mut settings = TelegramSettings::default();
    let mut fingerprints = BTreeMap::new();
    for a in accounts {
        let own: RawTelegram = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        let layers = [&own, &base];
        let pick = |f: fn(&RawTelegram) -> Option<&SecretRef>| layers.iter().find_map(|c| f(c)).cloned();
        let Some(token) = pick(|c| c.token.as_ref()).or_else(|| pick(|c| c.bot_token.as_ref())) else {
            pass.error(format!("{}.token", a.path), "missing key: the bot's token, e.g. { env: \"ACME_TG_TOKEN\" }");
            continue;
        };
        for (key, s) in [("token", &own.token), ("botToken", &own.bot_token)] {
            if let Some(s) = s {
                pass.secret(&format!("{}.{key}", a.path), s);
            }
        }
        if own.webhook_url.is_some() || base.webhook_url.is_some() || own.webhook_secret.is_some() {
            pass.error(
                format!("{}.webhookUrl", a.path),
                "webhook mode is not available in this version; remove webhookUrl and webhookSecret to use long polling",
            );
        }
        let api_url = own.api_url.clone().or_else(|| base.api_url.clone()).unwrap_or_else(|| TELEGRAM_API_URL.into());
        match reqwest::Url::parse(&api_url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => pass.error(
                format!("{}.apiUrl", a.path),
                format!("invalid URL {api_url:?}: expected http(s)://host[:port]"),
            ),
        }
        let limit = a.own.text_chunk_limit.or(channel.text_chunk_limit).unwrap_or(TELEGRAM_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > TELEGRAM_TEXT_LIMIT {
            pass.error(format!("{}.textChunkLimit", a.path), format!("must be 1-{TELEGRAM_TEXT_LIMIT}, got {limit}"));
        }
        let acc = TelegramAccount {
            id: a.id.to_string(),
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
            text_chunk_limit: limit.clamp(1, TELEGRAM_TEXT_LIMIT),
        };
        fingerprints.insert(acc.id.clone(), format!("{acc:?}"));
        settings.accounts.push(acc);
    }
    if base.webhook_secret.is_some() && accounts.iter().all(|a| !a.implicit) {
        pass.error("channels.telegram.webhookSecret", "webhook mode is not available in this version");
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

/// A sender id as written in `allowFrom`: `123`, `tg:123` or `telegram:123` → `123`.
pub fn sender_id(raw: &str) -> Option<&str> {
    let id = raw.strip_prefix("tg:").or_else(|| raw.strip_prefix("telegram:")).unwrap_or(raw);
    (!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ids_are_numeric() {
        assert_eq!(sender_id("tg:123"), Some("123"));
        assert_eq!(sender_id("telegram:9"), Some("9"));
        for bad in ["", "tg:", "@user", "12a", "123456789012345678901", "-5"] {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
    }
}
