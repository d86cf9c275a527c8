//! Typed settings of chat-channel accounts: who may talk to the bot (`dmPolicy`, `allowFrom`,
//! `groupPolicy`, `groups`, `requireMention`) and each platform's connection details.
//!
//! Values are inherited account → channel → `channels.defaults`; the rules that use them live in
//! `crate::channels::access`.

use std::collections::BTreeMap;

use super::SecretRef;

/// Who may start a direct conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmPolicy {
    /// Unknown senders get a pairing code; the operator approves it (the default).
    Pairing,
    /// Only senders in `allowFrom` (and approved pairings).
    Allowlist,
    /// Anyone (`allowFrom: ["*"]` is required so the choice is explicit).
    Open,
    /// Direct messages are ignored.
    Disabled,
}

/// Which groups the bot answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPolicy {
    /// Only groups listed under `groups` (or `"*"`); the default, fail closed.
    Allowlist,
    /// Any group the bot is in.
    Open,
    /// Groups are ignored.
    Disabled,
}

/// Settings for one group (`groups.<chatId>` or `groups."*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRule {
    pub enabled: bool,
    pub require_mention: Option<bool>,
    /// Senders allowed in this group (overrides `groupAllowFrom`); empty = everyone.
    pub allow_from: Option<Vec<String>>,
}

/// The access settings of one account, after inheritance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAccess {
    pub dm_policy: DmPolicy,
    /// Sender ids (numeric, optionally `tg:`-prefixed) or `"*"`.
    pub allow_from: Vec<String>,
    pub group_policy: GroupPolicy,
    /// Senders allowed in groups; empty = everyone in an allowed group.
    pub group_allow_from: Vec<String>,
    /// Default for groups without their own `requireMention` (default true).
    pub require_mention: bool,
    pub groups: BTreeMap<String, GroupRule>,
}

impl Default for ChannelAccess {
    fn default() -> Self {
        Self {
            dm_policy: DmPolicy::Pairing,
            allow_from: Vec::new(),
            group_policy: GroupPolicy::Allowlist,
            group_allow_from: Vec::new(),
            require_mention: true,
            groups: BTreeMap::new(),
        }
    }
}

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
