//! Bindings: which agent answers inbound chat traffic `(channel, accountId, peer)`.
//!
//! The most specific binding wins (peer > guild/team > account > channel); traffic no binding
//! matches goes to the default agent if one is configured, else it is dropped (fail closed).

use crate::config::{AgentConfig, Binding, Config};
use crate::ids::PeerKind;

/// Where a message came from, as bindings see it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub channel: &'a str,
    pub account: &'a str,
    /// The server the chat belongs to (a Discord guild), if any.
    pub space: Option<&'a str>,
    pub kind: PeerKind,
    /// The group's chat id, or a direct chat's sender.
    pub peer: &'a str,
}

fn matches(b: &Binding, o: &Origin<'_>) -> bool {
    if b.channel != o.channel || b.team_id.is_some() {
        return false;
    }
    if let Some(g) = &b.guild_id
        && o.space != Some(g.as_str())
    {
        return false;
    }
    if let Some(acc) = &b.account_id
        && acc != "*"
        && acc != o.account
    {
        return false;
    }
    match &b.peer {
        Some((kind, id)) => *kind == o.kind && (id == "*" || id == o.peer),
        None => true,
    }
}

/// The agent that answers traffic from `origin`, if any.
pub fn route<'c>(config: &'c Config, origin: &Origin<'_>) -> Option<&'c AgentConfig> {
    let best = config
        .bindings
        .iter()
        .enumerate()
        .filter(|(_, b)| matches(b, origin))
        // Most specific first; among equals, the earlier binding.
        .min_by_key(|(i, b)| (std::cmp::Reverse(b.specificity()), *i))
        .map(|(_, b)| &b.agent);
    best.or(config.default_agent.as_ref()).and_then(|id| config.agent(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::load_str(text, std::path::Path::new(".")).expect("valid config")
    }

    #[test]
    fn most_specific_binding_wins_and_unbound_is_dropped() {
        let c = config(
            r#"{
              tenants: [ { id: "acme-co" } ],
              agents: { list: [ { id: "general", tenant: "acme-co" }, { id: "vip", tenant: "acme-co" }, { id: "other-bot" } ] },
              bindings: [
                { agentId: "general", match: { channel: "telegram", accountId: "acme" } },
                { agentId: "vip", match: { channel: "telegram", accountId: "acme", peer: { kind: "direct", id: "42" } } },
                { agentId: "other-bot", match: { channel: "telegram", accountId: "beta" } },
              ],
              channels: { telegram: { accounts: { acme: { token: { env: "A" } }, beta: { token: { env: "B" } }, gamma: { token: { env: "C" } } } } },
            }"#,
        );
        let at = |account, kind, peer| {
            route(&c, &Origin { channel: "telegram", account, space: None, kind, peer }).map(|a| a.id.to_string())
        };
        assert_eq!(at("acme", PeerKind::Direct, "42").as_deref(), Some("vip"));
        assert_eq!(at("acme", PeerKind::Direct, "43").as_deref(), Some("general"));
        assert_eq!(at("acme", PeerKind::Group, "42").as_deref(), Some("general"));
        assert_eq!(at("beta", PeerKind::Direct, "42").as_deref(), Some("other-bot"));
        assert_eq!(at("gamma", PeerKind::Direct, "42"), None, "unbound traffic is dropped");
    }

    #[test]
    fn a_binding_that_could_carry_one_tenants_bot_to_another_tenant_is_refused() {
        let with = |extra: &str| {
            format!(
                r#"{{
                  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
                  agents: {{ list: [ {{ id: "a", tenant: "alpha" }}, {{ id: "b", tenant: "bravo" }} ] }},
                  bindings: [
                    {{ agentId: "a", match: {{ channel: "telegram", accountId: "acme" }} }},
                    {{ agentId: "b", match: {{ channel: "telegram", accountId: "beta" }} }},
                    {extra}
                  ],
                  channels: {{ telegram: {{ accounts: {{ acme: {{ token: {{ env: "A" }} }}, beta: {{ token: {{ env: "B" }} }} }} }} }},
                }}"#
            )
        };
        assert!(crate::config::load_str(&with(""), std::path::Path::new(".")).is_ok());
        // A peer binding without accountId outranks acme's account binding: bravo would get acme's DMs.
        for extra in [
            r#"{ agentId: "b", match: { channel: "telegram", peer: { kind: "direct", id: "*" } } },"#,
            r#"{ agentId: "b", match: { channel: "telegram", accountId: "acme", peer: { kind: "direct", id: "42" } } },"#,
        ] {
            let errors = crate::config::load_str(&with(extra), std::path::Path::new(".")).unwrap_err();
            let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
            assert!(text.contains("channels.telegram.accounts.acme") && text.contains("alpha, bravo"), "{text}");
        }
    }
}
