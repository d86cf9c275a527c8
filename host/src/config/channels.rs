//! Typed settings of chat channels as the shared layer sees them: which channels and accounts are
//! enabled, each account's access settings (`dmPolicy`, `allowFrom`, `groupPolicy`, `groups`,
//! `requireMention`) and tenant, and each adapter's own typed settings, which only it reads
//! (`channels::telegram::config`). The pass that builds them is `validate/channels.rs`.
//!
//! Values are inherited account → channel → `channels.defaults`; the rules that use them live in
//! `crate::channels::access`.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::TenantId;

/// Chat channels present in a checked config.
#[derive(Debug, Clone, Default)]
pub struct ChannelsConfig {
    /// Enabled chat channels, by name (`webchat` included when on).
    pub enabled: Vec<&'static str>,
    pub webchat_enabled: bool,
    /// Enabled accounts per enabled channel (the implicit `default` account when none are
    /// listed), for bindings.
    pub accounts: BTreeMap<&'static str, BTreeSet<String>>,
    /// The settings of every enabled channel this build has an adapter for.
    pub built: BTreeMap<&'static str, ChannelSettings>,
}

impl ChannelsConfig {
    /// The enabled accounts of a built channel (empty when it is off).
    pub fn accounts_of(&self, channel: &str) -> &[ChannelAccount] {
        self.built.get(channel).map_or(&[], |s| s.accounts.as_slice())
    }

    /// One enabled account of a built channel.
    pub fn account(&self, channel: &str, id: &str) -> Option<&ChannelAccount> {
        self.accounts_of(channel).iter().find(|a| a.id == id)
    }

    /// The adapter's own typed settings of `channel` (`None` when it is off or `T` is not its
    /// type).
    pub fn platform<T: Any>(&self, channel: &str) -> Option<&T> {
        self.built.get(channel).and_then(|s| s.platform.downcast_ref())
    }
}

/// One enabled account of a built channel.
#[derive(Debug, Clone)]
pub struct ChannelAccount {
    pub id: String,
    /// Its key path: `channels.<channel>.accounts.<id>`, or `channels.<channel>` for the implicit
    /// account of a block with no `accounts`.
    pub path: String,
    pub access: ChannelAccess,
    /// The tenant whose agents take this account's traffic (a bot belongs to one tenant); `None`
    /// when no binding or default agent can reach it.
    pub tenant: Option<TenantId>,
    /// The platform settings its connection depends on, rendered comparably by the adapter: on
    /// reload an account whose settings changed restarts, an unchanged one keeps its connection.
    pub platform: String,
}

impl ChannelAccount {
    /// Everything the account's connection depends on.
    pub fn fingerprint(&self) -> String {
        format!("{:?}|{:?}|{}", self.access, self.tenant, self.platform)
    }
}

/// A built channel's checked settings.
#[derive(Clone)]
pub struct ChannelSettings {
    pub accounts: Vec<ChannelAccount>,
    /// The adapter's own typed settings; only it knows the type.
    pub platform: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for ChannelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSettings").field("accounts", &self.accounts).finish_non_exhaustive()
    }
}

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
    /// Sender ids in the platform's canonical form (`Adapter::check_sender_id`), or `"*"`.
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
