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
    /// The server the chat belongs to (a Discord guild, a Slack workspace), if any.
    pub space: Option<&'a str>,
    pub kind: PeerKind,
    /// The group's chat id, or a direct chat's sender.
    pub peer: &'a str,
}

fn matches(b: &Binding, o: &Origin<'_>) -> bool {
    if b.channel != o.channel {
        return false;
    }
    // A Discord guild or a Slack workspace (the config pass allows each on its channel only).
    if let Some(space) = b.guild_id.as_ref().or(b.team_id.as_ref())
        && o.space != Some(space.as_str())
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
        // "group" and "channel" both name a chat of many (Telegram groups, Discord and Slack
        // channels): either kind matches one.
        Some((kind, id)) => same_kind(*kind, o.kind) && (id == "*" || id == o.peer),
        None => true,
    }
}

fn same_kind(a: PeerKind, b: PeerKind) -> bool {
    a == b || (a != PeerKind::Direct && b != PeerKind::Direct)
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
    fn guild_and_channel_bindings_route_discord_traffic() {
        let c = config(
            r#"{
              tenants: [ { id: "agency" } ],
              agents: { list: [ { id: "lobby", tenant: "agency" }, { id: "support", tenant: "agency" }, { id: "dm", tenant: "agency" } ] },
              bindings: [
                { agentId: "dm", match: { channel: "discord", accountId: "a" } },
                { agentId: "lobby", match: { channel: "discord", guildId: "2000" } },
                { agentId: "support", match: { channel: "discord", peer: { kind: "channel", id: "4001" } } },
              ],
              channels: { discord: { accounts: { a: { token: { env: "A" } } } } },
            }"#,
        );
        let at = |space, kind, peer| {
            route(&c, &Origin { channel: "discord", account: "a", space, kind, peer }).map(|a| a.id.to_string())
        };
        assert_eq!(at(Some("2000"), PeerKind::Group, "4000").as_deref(), Some("lobby"), "guild beats account");
        assert_eq!(
            at(Some("2000"), PeerKind::Group, "4001").as_deref(),
            Some("support"),
            "a channel peer beats the guild"
        );
        assert_eq!(
            at(Some("3000"), PeerKind::Group, "4000").as_deref(),
            Some("dm"),
            "another guild: the account binding"
        );
        assert_eq!(at(None, PeerKind::Direct, "5000").as_deref(), Some("dm"));
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
    fn a_team_binding_matches_its_slack_workspace_only() {
        let c = config(
            r#"{
              tenants: [ { id: "acme-co" } ],
              agents: { list: [ { id: "general", tenant: "acme-co" }, { id: "team", tenant: "acme-co" } ] },
              bindings: [
                { agentId: "general", match: { channel: "slack", accountId: "acme" } },
                { agentId: "team", match: { channel: "slack", teamId: "T0ACME" } },
              ],
              channels: { slack: { accounts: { acme: { botToken: { env: "B" }, appToken: { env: "A" } } } } },
            }"#,
        );
        let at = |space| {
            let o = Origin { channel: "slack", account: "acme", space, kind: PeerKind::Group, peer: "C0123ABCD" };
            route(&c, &o).map(|a| a.id.to_string())
        };
        assert_eq!(at(Some("T0ACME")).as_deref(), Some("team"), "team beats account");
        assert_eq!(at(Some("T0OTHER")).as_deref(), Some("general"));
        assert_eq!(at(None).as_deref(), Some("general"));
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
