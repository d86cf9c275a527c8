//! The channels pass: `channels.*` → `ChannelsConfig`. It checks what every platform shares
//! (`dmPolicy`, `allowFrom`, `groupPolicy`, `groups`, `requireMention`, `accounts`), builds each
//! enabled account's access settings with their inheritance account → channel →
//! `channels.defaults`, and hands the platform's own keys to its adapter's pass
//! (`Adapter::validate`). A channel this build has no adapter for keeps its block unchecked; the
//! start-up checks refuse it when it is enabled.
//!
//! After bindings are known, `one_tenant_per_account` records the one tenant each account serves.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::super::channels::GroupRule;
use super::super::channels::{ChannelAccess, ChannelAccount, ChannelSettings, ChannelsConfig, DmPolicy, GroupPolicy};
use super::super::raw::{RawChannel, RawChannelDefaults, RawChannels, RawGroup};
use super::{Binding, Errors, one_of};
use crate::channels::adapter::{AccountBlock, Adapter, ChannelPass, adapter};
use crate::ids::{AgentId, TenantId};

const DM_POLICIES: [(&str, DmPolicy); 4] = [
    ("pairing", DmPolicy::Pairing),
    ("allowlist", DmPolicy::Allowlist),
    ("open", DmPolicy::Open),
    ("disabled", DmPolicy::Disabled),
];
const GROUP_POLICIES: [(&str, GroupPolicy); 3] =
    [("allowlist", GroupPolicy::Allowlist), ("open", GroupPolicy::Open), ("disabled", GroupPolicy::Disabled)];

pub(super) fn channels(errs: &mut Errors, warnings: &mut Vec<String>, raw: RawChannels) -> ChannelsConfig {
    let mut out = ChannelsConfig {
        webchat_enabled: raw.webchat.as_ref().and_then(|w| w.enabled).unwrap_or(true),
        ..Default::default()
    };
    let defaults = raw.defaults.as_ref();
    if let Some(d) = defaults {
        one_of(errs, "channels.defaults.dmPolicy", d.dm_policy.as_deref(), DmPolicy::Pairing, &DM_POLICIES);
        one_of(
            errs,
            "channels.defaults.groupPolicy",
            d.group_policy.as_deref(),
            GroupPolicy::Allowlist,
            &GROUP_POLICIES,
        );
    }
    for (name, block) in raw.blocks() {
        let Some(ch) = block else { continue };
        let path = format!("channels.{name}");
        shared_keys(errs, &path, ch);
        let listed = ch.accounts.as_ref().is_some_and(|a| !a.is_empty());
        let mut blocks: Vec<(String, String, &RawChannel)> = Vec::new();
        if listed {
            for (id, acc) in ch.accounts.iter().flatten() {
                let p = format!("{path}.accounts.{id}");
                if acc.accounts.is_some() {
                    errs.push(format!("{p}.accounts"), "accounts cannot be nested");
                }
                shared_keys(errs, &p, acc);
                if acc.enabled != Some(false) {
                    blocks.push((id.clone(), p, acc));
                }
            }
        } else {
            blocks.push((ch.default_account.clone().unwrap_or_else(|| "default".into()), path.clone(), ch));
        }
        if ch.enabled == Some(false) {
            continue;
        }
        out.enabled.push(name);
        out.accounts.insert(name, blocks.iter().map(|(id, _, _)| id.clone()).collect());
        let Some(adapter) = adapter(name) else { continue };
        if listed {
            // The channel's own lists are inherited; they are checked where they are written.
            senders(errs, adapter, &path, "allowFrom", ch.allow_from.as_ref());
            senders(errs, adapter, &path, "groupAllowFrom", ch.group_allow_from.as_ref());
            if let Some(g) = &ch.groups {
                groups(errs, adapter, &path, g);
            }
        }
        let mut accounts = Vec::new();
        let mut views = Vec::new();
        for (id, p, acc) in &blocks {
            if let Err(e) = crate::ids::validate_id(id) {
                errs.push(p, format!("invalid account id: {e}"));
                continue;
            }
            let access = access(errs, adapter, p, defaults, ch, acc);
            accounts.push(ChannelAccount {
                id: id.clone(),
                path: p.clone(),
                access,
                tenant: None,
                platform: String::new(),
            });
            views.push(AccountBlock { id, path: p, own: acc, implicit: !listed });
        }
        let validated = adapter.validate(&mut ChannelPass { errs, warnings }, ch, &views);
        for a in &mut accounts {
            a.platform = validated.fingerprints.get(&a.id).cloned().unwrap_or_default();
        }
        out.built.insert(name, ChannelSettings { accounts, platform: validated.settings });
    }
    if out.webchat_enabled {
        out.enabled.push("webchat");
    }
    out
}

/// The shared keys' own values (inheritance aside).
fn shared_keys(errs: &mut Errors, path: &str, c: &RawChannel) {
    one_of(errs, &format!("{path}.dmPolicy"), c.dm_policy.as_deref(), DmPolicy::Pairing, &DM_POLICIES);
    one_of(errs, &format!("{path}.groupPolicy"), c.group_policy.as_deref(), GroupPolicy::Allowlist, &GROUP_POLICIES);
    if c.dm_policy.as_deref() == Some("open") && !c.allow_from.iter().flatten().any(|x| x == "*") {
        errs.push(
            format!("{path}.allowFrom"),
            "dmPolicy \"open\" requires allowFrom: [\"*\"] so the choice is explicit",
        );
    }
}

/// Access settings of one account: its own value, else the channel's, else `channels.defaults`.
/// Sender ids come out in the adapter's canonical form.
fn access(
    errs: &mut Errors,
    adapter: &dyn Adapter,
    path: &str,
    defaults: Option<&RawChannelDefaults>,
    ch: &RawChannel,
    acc: &RawChannel,
) -> ChannelAccess {
    // Bad values were reported where they are written (`shared_keys`); here only the effective
    // value is picked.
    let mut quiet = Errors(Vec::new());
    let dm = acc.dm_policy.as_deref().or(ch.dm_policy.as_deref()).or(defaults.and_then(|d| d.dm_policy.as_deref()));
    let dm_policy = one_of(&mut quiet, "", dm, DmPolicy::Pairing, &DM_POLICIES);
    let gp =
        acc.group_policy.as_deref().or(ch.group_policy.as_deref()).or(defaults.and_then(|d| d.group_policy.as_deref()));
    let group_policy = one_of(&mut quiet, "", gp, GroupPolicy::Allowlist, &GROUP_POLICIES);
    let allow_from = senders(errs, adapter, path, "allowFrom", acc.allow_from.as_ref())
        .or_else(|| canonical(adapter, ch.allow_from.as_ref()))
        .unwrap_or_default();
    // The rule on the effective values too: an inherited "open" with an account's own allowFrom
    // (or none) must not open the bot to everyone unnoticed.
    if dm_policy == DmPolicy::Open && !allow_from.iter().any(|x| x == "*") {
        errs.push(
            format!("{path}.allowFrom"),
            "the effective dmPolicy is \"open\", which requires allowFrom: [\"*\"] so the choice is explicit",
        );
    }
    let group_allow_from = senders(errs, adapter, path, "groupAllowFrom", acc.group_allow_from.as_ref())
        .or_else(|| canonical(adapter, ch.group_allow_from.as_ref()))
        .unwrap_or_default();
    // An account's own groups replace the channel's (checked once, where they are written).
    let groups = match &acc.groups {
        Some(own) => groups(errs, adapter, path, own),
        None => groups(&mut quiet, adapter, path, ch.groups.as_ref().unwrap_or(&BTreeMap::new())),
    };
    ChannelAccess {
        dm_policy,
        allow_from,
        group_policy,
        group_allow_from,
        require_mention: acc.require_mention.or(ch.require_mention).unwrap_or(true),
        groups,
    }
}

/// `groups` as written at `path.groups`.
fn groups(
    errs: &mut Errors,
    adapter: &dyn Adapter,
    path: &str,
    raw: &BTreeMap<String, RawGroup>,
) -> BTreeMap<String, GroupRule> {
    let mut out = BTreeMap::new();
    for (group, g) in raw {
        let gpath = format!("{path}.groups.{group}");
        if group != "*"
            && let Err(e) = adapter.check_group_id(group)
        {
            errs.push(&gpath, e);
            continue;
        }
        if g.tools.is_some() {
            errs.push(format!("{gpath}.tools"), "per-group tool policies are not supported; use the agent's tools");
        }
        let allow_from = senders(errs, adapter, &gpath, "allowFrom", g.allow_from.as_ref());
        out.insert(
            group.clone(),
            GroupRule { enabled: g.enabled != Some(false), require_mention: g.require_mention, allow_from },
        );
    }
    out
}

/// A sender list as written at `path.key`: each id checked by the adapter, in canonical form.
fn senders(
    errs: &mut Errors,
    adapter: &dyn Adapter,
    path: &str,
    key: &str,
    list: Option<&Vec<String>>,
) -> Option<Vec<String>> {
    let list = list?;
    let mut out = Vec::with_capacity(list.len());
    for (i, id) in list.iter().enumerate() {
        if id == "*" {
            out.push(id.clone());
            continue;
        }
        match adapter.check_sender_id(id) {
            Ok(c) => out.push(c),
            Err(e) => errs.push(format!("{path}.{key}[{i}]"), e),
        }
    }
    Some(out)
}

/// An inherited list (checked where it is written) in canonical form.
fn canonical(adapter: &dyn Adapter, list: Option<&Vec<String>>) -> Option<Vec<String>> {
    list.map(|l| {
        l.iter().filter_map(|id| if id == "*" { Some(id.clone()) } else { adapter.check_sender_id(id).ok() }).collect()
    })
}

/// A bot account belongs to one tenant: every binding that can take its traffic (and the
/// default agent, when some of it may match no binding) must lead to agents of one tenant, so a
/// broad binding can never carry one tenant's chats to another tenant's agent. Records that
/// tenant on the account (where its chat inbox lives).
pub(super) fn one_tenant_per_account(
    errs: &mut Errors,
    channels: &mut ChannelsConfig,
    bindings: &[Binding],
    agent_tenants: &HashMap<AgentId, TenantId>,
    default_agent: Option<&AgentId>,
) {
    /// What the bindings of one account key (or of every account: no key or `*`) reach.
    #[derive(Default)]
    struct Reach<'a> {
        tenants: BTreeSet<&'a str>,
        catch_all: bool,
    }
    /// Tenants named in one error; more only repeat the point.
    const SHOWN: usize = 5;
    let tenant_of = |id: &AgentId| agent_tenants.get(id).map(|t| t.as_str());
    for (channel, settings) in &mut channels.built {
        // One pass over the bindings, then one lookup per account: linear in the config's size.
        let mut every = Reach::default();
        let mut by_account: HashMap<&str, Reach> = HashMap::new();
        for b in bindings.iter().filter(|b| b.channel == *channel) {
            let reach = match b.account_id.as_deref() {
                None | Some("*") => &mut every,
                Some(a) => by_account.entry(a).or_default(),
            };
            reach.tenants.extend(tenant_of(&b.agent));
            reach.catch_all |= b.specificity() <= 1;
        }
        for acc in &mut settings.accounts {
            let own = by_account.get(acc.id.as_str());
            // Past SHOWN + 1 of the shared tenants the answer and the message are the same.
            let mut tenants: BTreeSet<&str> = every.tenants.iter().take(SHOWN + 1).copied().collect();
            tenants.extend(own.iter().flat_map(|r| r.tenants.iter().copied()));
            let catch_all = every.catch_all || own.is_some_and(|r| r.catch_all);
            if !catch_all && let Some(t) = default_agent.and_then(tenant_of) {
                tenants.insert(t);
            }
            if tenants.len() == 1 {
                acc.tenant = tenants.first().and_then(|t| TenantId::parse(t).ok());
            }
            if tenants.len() > 1 {
                let mut list: Vec<&str> = tenants.iter().take(SHOWN).copied().collect();
                if tenants.len() > SHOWN {
                    list.push("and others");
                }
                errs.push(
                    format!("channels.{channel}.accounts.{}", acc.id),
                    format!(
                        "its traffic can reach agents of tenants {}; a bot belongs to one tenant: bind it with accountId {:?} to that tenant's agents only",
                        list.join(", "),
                        acc.id
                    ),
                );
            }
        }
    }
}
