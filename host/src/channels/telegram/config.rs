//! Telegram's account settings (`channels.telegram`, `channels.telegram.accounts.<id>`) and
//! their validation pass: typed `TelegramAccount`s with access settings inherited account →
//! channel → `channels.defaults`. The access rules themselves live in `channels::access`.

use crate::channels::adapter::Adapter as _;
use crate::config::channels::{ChannelAccess, DmPolicy, GroupPolicy, GroupRule};
use crate::config::{Errors, RawChannel, RawChannelDefaults, SecretRef, one_of};

/// Telegram's own limit on one message's text.
pub const TELEGRAM_TEXT_LIMIT: usize = 4096;

/// One Telegram bot (`channels.telegram.accounts.<id>`, or the channel block itself as account
/// `default` when no accounts are listed).
#[derive(Debug, Clone)]
pub struct TelegramAccount {
    pub id: String,
    pub token: SecretRef,
    /// Bot API base URL (default `https://api.telegram.org`), for self-hosted Bot API servers.
    pub api_url: String,
    pub access: ChannelAccess,
    /// Longest text per message (default and maximum 4096).
    pub text_chunk_limit: usize,
    /// The tenant whose agents take this bot's traffic (a bot belongs to one tenant); `None`
    /// when no binding or default agent can reach it.
    pub tenant: Option<crate::ids::TenantId>,
}

/// The public Bot API.
pub const TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// The enabled Telegram accounts, each with its settings inherited account → channel → defaults.
pub(crate) fn accounts(
    errs: &mut Errors,
    defaults: Option<&RawChannelDefaults>,
    ch: &RawChannel,
) -> Vec<TelegramAccount> {
    let mut list: Vec<(String, String, &RawChannel)> = Vec::new();
    match &ch.accounts {
        Some(accounts) if !accounts.is_empty() => {
            for (id, acc) in accounts {
                if acc.enabled != Some(false) {
                    list.push((id.clone(), format!("channels.telegram.accounts.{id}"), acc));
                }
            }
        }
        _ => {
            list.push((ch.default_account.clone().unwrap_or_else(|| "default".into()), "channels.telegram".into(), ch))
        }
    }
    if ch.accounts.as_ref().is_some_and(|a| !a.is_empty()) {
        check_senders(errs, "channels.telegram", "allowFrom", ch.allow_from.as_ref());
        check_senders(errs, "channels.telegram", "groupAllowFrom", ch.group_allow_from.as_ref());
    }
    let mut out = Vec::new();
    for (id, path, acc) in list {
        if let Err(e) = crate::ids::validate_id(&id) {
            errs.push(&path, format!("invalid account id: {e}"));
            continue;
        }
        let layers = [Some(acc), Some(ch)];
        let pick = |f: fn(&RawChannel) -> Option<&SecretRef>| layers.iter().flatten().find_map(|c| f(c)).cloned();
        let token = pick(|c| c.token.as_ref()).or_else(|| pick(|c| c.bot_token.as_ref()));
        let Some(token) = token else {
            errs.push(format!("{path}.token"), "missing key: the bot's token, e.g. { env: \"ACME_TG_TOKEN\" }");
            continue;
        };
        if acc.webhook_url.is_some() || ch.webhook_url.is_some() {
            errs.push(
                format!("{path}.webhookUrl"),
                "webhook mode is not available in this version; remove webhookUrl to use long polling",
            );
        }
        let api_url = acc.api_url.clone().or_else(|| ch.api_url.clone()).unwrap_or_else(|| TELEGRAM_API_URL.into());
        match reqwest::Url::parse(&api_url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => {
                errs.push(format!("{path}.apiUrl"), format!("invalid URL {api_url:?}: expected http(s)://host[:port]"))
            }
        }
        let limit = acc.text_chunk_limit.or(ch.text_chunk_limit).unwrap_or(TELEGRAM_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > TELEGRAM_TEXT_LIMIT {
            errs.push(format!("{path}.textChunkLimit"), format!("must be 1-{TELEGRAM_TEXT_LIMIT}, got {limit}"));
        }
        let access = channel_access(errs, &path, defaults, ch, acc);
        out.push(TelegramAccount {
            id,
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
            access,
            text_chunk_limit: limit.clamp(1, TELEGRAM_TEXT_LIMIT),
            tenant: None,
        });
    }
    out
}

/// Access settings of one account: its own value, else the channel's, else `channels.defaults`.
fn channel_access(
    errs: &mut Errors,
    path: &str,
    defaults: Option<&RawChannelDefaults>,
    ch: &RawChannel,
    acc: &RawChannel,
) -> ChannelAccess {
    let dm = acc.dm_policy.as_deref().or(ch.dm_policy.as_deref()).or(defaults.and_then(|d| d.dm_policy.as_deref()));
    let dm_policy = one_of(
        &mut Errors(Vec::new()), // reported by the generic channel check
        "",
        dm,
        DmPolicy::Pairing,
        &[
            ("pairing", DmPolicy::Pairing),
            ("allowlist", DmPolicy::Allowlist),
            ("open", DmPolicy::Open),
            ("disabled", DmPolicy::Disabled),
        ],
    );
    let gp =
        acc.group_policy.as_deref().or(ch.group_policy.as_deref()).or(defaults.and_then(|d| d.group_policy.as_deref()));
    let group_policy = one_of(
        &mut Errors(Vec::new()),
        "",
        gp,
        GroupPolicy::Allowlist,
        &[("allowlist", GroupPolicy::Allowlist), ("open", GroupPolicy::Open), ("disabled", GroupPolicy::Disabled)],
    );
    // Lists are checked where they are written: the channel's once, each account's own.
    check_senders(errs, path, "allowFrom", acc.allow_from.as_ref());
    check_senders(errs, path, "groupAllowFrom", acc.group_allow_from.as_ref());
    let allow_from = acc.allow_from.as_ref().or(ch.allow_from.as_ref()).cloned().unwrap_or_default();
    // The rule on the effective values too: an inherited "open" with an account's own allowFrom
    // (or none) must not open the bot to everyone unnoticed.
    if dm_policy == DmPolicy::Open && !allow_from.iter().any(|x| x == "*") {
        errs.push(
            format!("{path}.allowFrom"),
            "the effective dmPolicy is \"open\", which requires allowFrom: [\"*\"] so the choice is explicit",
        );
    }
    let group_allow_from = acc.group_allow_from.as_ref().or(ch.group_allow_from.as_ref()).cloned().unwrap_or_default();
    let mut groups = std::collections::BTreeMap::new();
    for (chat, g) in acc.groups.as_ref().or(ch.groups.as_ref()).into_iter().flatten() {
        if chat != "*" && chat.parse::<i64>().is_err() {
            errs.push(
                format!("{path}.groups.{chat}"),
                format!("invalid group {chat:?}: use the numeric chat id (e.g. \"-1001234567890\") or \"*\""),
            );
            continue;
        }
        if g.tools.is_some() {
            errs.push(
                format!("{path}.groups.{chat}.tools"),
                "per-group tool policies are not supported; use the agent's tools",
            );
        }
        check_senders(errs, &format!("{path}.groups.{chat}"), "allowFrom", g.allow_from.as_ref());
        groups.insert(
            chat.clone(),
            GroupRule {
                enabled: g.enabled != Some(false),
                require_mention: g.require_mention,
                allow_from: g.allow_from.clone(),
            },
        );
    }
    ChannelAccess {
        dm_policy,
        allow_from,
        group_policy,
        group_allow_from,
        require_mention: acc.require_mention.or(ch.require_mention).unwrap_or(true),
        groups,
    }
}

/// Sender lists hold Telegram sender ids (`Adapter::check_sender_id`) or `"*"`.
fn check_senders(errs: &mut Errors, path: &str, key: &str, list: Option<&Vec<String>>) {
    for (i, id) in list.into_iter().flatten().enumerate() {
        if id != "*"
            && let Err(e) = super::Telegram.check_sender_id(id)
        {
            errs.push(format!("{path}.{key}[{i}]"), e);
        }
    }
}
