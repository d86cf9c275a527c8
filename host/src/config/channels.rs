//! Typed access settings of chat-channel accounts, shared by every platform: who may talk to the
//! bot (`dmPolicy`, `allowFrom`, `groupPolicy`, `groups`, `requireMention`). Each platform's own
//! account settings live beside its adapter (`channels::telegram::config`).
//!
//! Values are inherited account → channel → `channels.defaults`; the rules that use them live in
//! `crate::channels::access`.

use std::collections::BTreeMap;

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
