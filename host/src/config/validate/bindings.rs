//! Pass `bindings`: routes from chat traffic to agents, each checked against the agents and the
//! configured channels (a binding that can never match is an error).

use std::collections::HashMap;

use super::super::raw::RawBinding;
use super::{CHANNELS, ChannelsConfig, Errors, required_id};
use crate::ids::{AgentId, PeerKind, TenantId, validate_peer};

/// Routes inbound chat traffic to an agent. Most specific wins: peer > guild/team > account > channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub agent: AgentId,
    pub channel: String,
    pub account_id: Option<String>,
    pub peer: Option<(PeerKind, String)>,
    pub guild_id: Option<String>,
    pub team_id: Option<String>,
}

impl Binding {
    /// Higher is more specific.
    pub fn specificity(&self) -> u8 {
        if self.peer.is_some() {
            3
        } else if self.guild_id.is_some() || self.team_id.is_some() {
            2
        } else if self.account_id.is_some() {
            1
        } else {
            0
        }
    }
}

/// `bindings`, in declaration order.
pub(super) fn bindings(
    errs: &mut Errors,
    raw: Option<Vec<RawBinding>>,
    agent_tenants: &HashMap<AgentId, TenantId>,
    channels: &ChannelsConfig,
) -> Vec<Binding> {
    let mut bindings: Vec<Binding> = Vec::new();
    let mut first_with_match = HashMap::new();
    for (i, b) in raw.iter().flatten().enumerate() {
        let path = format!("bindings[{i}]");
        let Some(agent) = required_id(errs, format!("{path}.agentId"), b.agent_id.as_deref(), AgentId::parse) else {
            continue;
        };
        if !agent_tenants.contains_key(&agent) {
            errs.push(format!("{path}.agentId"), format!("unknown agent {:?}", agent.as_str()));
            continue;
        }
        let Some(m) = &b.match_ else {
            errs.push(format!("{path}.match"), "missing key");
            continue;
        };
        let Some(channel) = m.channel.as_deref() else {
            errs.push(format!("{path}.match.channel"), "missing key");
            continue;
        };
        let Some(channel) = CHANNELS.iter().find(|c| **c == channel).copied() else {
            errs.push(
                format!("{path}.match.channel"),
                format!("unknown channel {channel:?}: expected one of {}", CHANNELS.join(", ")),
            );
            continue;
        };
        if channel == "webchat" {
            errs.push(
                format!("{path}.match.channel"),
                "the web chat is routed by tenant token and agent id, not by bindings; this binding can never match",
            );
            continue;
        }
        if !channels.enabled.contains(&channel) {
            errs.push(
                format!("{path}.match.channel"),
                format!("channel {channel:?} is not configured or is disabled, so this binding can never match"),
            );
        }
        if let Some(acc) = &m.account_id
            && acc != "*"
            && channels.accounts.get(channel).is_some_and(|set| !set.contains(acc))
        {
            errs.push(
                format!("{path}.match.accountId"),
                format!("channel {channel:?} has no account {acc:?}, so this binding can never match"),
            );
        }
        if m.guild_id.is_some() && channel != "discord" {
            errs.push(format!("{path}.match.guildId"), format!("guildId applies to discord only, not {channel:?}"));
        }
        if m.team_id.is_some() && channel != "slack" {
            errs.push(format!("{path}.match.teamId"), format!("teamId applies to slack only, not {channel:?}"));
        }
        let peer = match &m.peer {
            None => None,
            Some(p) => {
                let kind = match p.kind.as_deref().map(|k| (k, PeerKind::parse(k))) {
                    Some((_, Some(k))) => Some(k),
                    Some((k, None)) => {
                        errs.push(
                            format!("{path}.match.peer.kind"),
                            format!("invalid value {k:?}: expected \"direct\", \"group\" or \"channel\""),
                        );
                        None
                    }
                    None => {
                        errs.push(format!("{path}.match.peer.kind"), "missing key");
                        None
                    }
                };
                let id = match p.id.as_deref() {
                    Some(id) if id == "*" || validate_peer(id).is_ok() => Some(id.to_string()),
                    Some(id) => {
                        errs.push(format!("{path}.match.peer.id"), format!("invalid peer id {id:?}"));
                        None
                    }
                    None => {
                        errs.push(format!("{path}.match.peer.id"), "missing key");
                        None
                    }
                };
                kind.zip(id)
            }
        };
        let binding = Binding {
            agent,
            channel: channel.to_string(),
            account_id: m.account_id.clone(),
            peer,
            guild_id: m.guild_id.clone(),
            team_id: m.team_id.clone(),
        };
        let key = (
            binding.channel.clone(),
            binding.account_id.clone(),
            binding.peer.clone(),
            binding.guild_id.clone(),
            binding.team_id.clone(),
        );
        if let Some(j) = first_with_match.get(&key) {
            errs.push(&path, format!("same match as bindings[{j}], so this binding can never match"));
        } else {
            first_with_match.insert(key, i);
        }
        bindings.push(binding);
    }
    bindings
}
