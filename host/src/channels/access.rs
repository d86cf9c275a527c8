//! Who may talk to a bot: the decision made for every inbound chat message before routing.
//!
//! Platform-independent: an adapter fills in an `Inbound` and acts on the `Verdict`. Direct
//! messages follow `dmPolicy` and `allowFrom` (plus approved pairings); group messages follow
//! `groupPolicy`, `groups`, `groupAllowFrom` and `requireMention`. Anything not allowed is
//! refused, and only a pairing request ever gets an answer (no oracle for strangers).

use crate::config::channels::{ChannelAccess, DmPolicy, GroupPolicy, GroupRule};

/// Whether `sender` is in `list` (canonical ids, as the config pass stores them, or `"*"`).
fn listed(list: &[String], sender: &str) -> bool {
    list.iter().any(|e| e == "*" || e == sender)
}

/// What the access layer needs to know about one inbound message.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The sender's user id.
    pub sender: &'a str,
    /// `None` for a direct chat; the group's chat id otherwise.
    pub group: Option<&'a str>,
    /// The bot was @-mentioned, replied to, or addressed by a `/command@bot`.
    pub mentioned: bool,
    /// The platform's own rule for this group when it keeps group settings elsewhere (Discord:
    /// `guilds.<id>.channels`); `None`: `groups` by chat id, then `groups."*"`.
    pub rule: Option<&'a GroupRule>,
}

/// The outcome of the access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Route it to the agent.
    Allow,
    /// An unknown direct sender under `dmPolicy: "pairing"`: offer a pairing code.
    Pair,
    /// Ignore it silently; the reason is for logs.
    Drop(&'static str),
}

/// Decides one message. `approved` says whether the sender holds an approved pairing.
pub fn decide(access: &ChannelAccess, msg: &Inbound<'_>, approved: bool) -> Verdict {
    let Some(group) = msg.group else {
        return match access.dm_policy {
            DmPolicy::Disabled => Verdict::Drop("direct messages are disabled"),
            // "open" is honoured only with the explicit allowFrom: ["*"]; otherwise it fails
            // closed like an allowlist.
            DmPolicy::Open if access.allow_from.iter().any(|x| x == "*") => Verdict::Allow,
            _ if approved || listed(&access.allow_from, msg.sender) => Verdict::Allow,
            DmPolicy::Allowlist | DmPolicy::Open => Verdict::Drop("sender is not in allowFrom"),
            DmPolicy::Pairing => Verdict::Pair,
        };
    };
    let rule = msg.rule.or_else(|| access.groups.get(group).or_else(|| access.groups.get("*")));
    match (access.group_policy, rule) {
        (GroupPolicy::Disabled, _) => return Verdict::Drop("groups are disabled"),
        (_, Some(r)) if !r.enabled => return Verdict::Drop("group is disabled"),
        (GroupPolicy::Allowlist, None) => return Verdict::Drop("group is not in the allowlist"),
        _ => {}
    }
    let senders = rule.and_then(|r| r.allow_from.as_deref()).unwrap_or(&access.group_allow_from);
    if !senders.is_empty() && !listed(senders, msg.sender) {
        return Verdict::Drop("sender is not allowed in this group");
    }
    let require_mention = rule.and_then(|r| r.require_mention).unwrap_or(access.require_mention);
    if require_mention && !msg.mentioned {
        return Verdict::Drop("the bot was not mentioned");
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::channels::GroupRule;

    fn dm(sender: &str) -> Inbound<'_> {
        Inbound { sender, group: None, mentioned: false, rule: None }
    }
    fn group<'a>(sender: &'a str, chat: &'a str, mentioned: bool) -> Inbound<'a> {
        Inbound { sender, group: Some(chat), mentioned, rule: None }
    }
    fn rule(require_mention: Option<bool>, allow_from: Option<&[&str]>) -> GroupRule {
        GroupRule {
            enabled: true,
            require_mention,
            allow_from: allow_from.map(|l| l.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn direct_messages_follow_dm_policy() {
        let mut a = ChannelAccess { allow_from: vec!["42".into()], ..Default::default() };
        // pairing (the default): listed or approved senders pass, others are offered a code.
        assert_eq!(decide(&a, &dm("42"), false), Verdict::Allow);
        assert_eq!(decide(&a, &dm("7"), false), Verdict::Pair);
        assert_eq!(decide(&a, &dm("7"), true), Verdict::Allow);
        a.dm_policy = DmPolicy::Allowlist;
        assert_eq!(decide(&a, &dm("42"), false), Verdict::Allow);
        assert!(matches!(decide(&a, &dm("7"), false), Verdict::Drop(_)));
        assert_eq!(decide(&a, &dm("7"), true), Verdict::Allow, "approved pairings extend the allowlist");
        a.dm_policy = DmPolicy::Disabled;
        assert!(matches!(decide(&a, &dm("42"), true), Verdict::Drop(_)));
        a.dm_policy = DmPolicy::Open;
        assert!(
            matches!(decide(&a, &dm("999"), false), Verdict::Drop(_)),
            "\"open\" without allowFrom [\"*\"] fails closed (e.g. an account's own list under an inherited open)"
        );
        assert_eq!(decide(&a, &dm("42"), false), Verdict::Allow);
        a.allow_from.push("*".into());
        assert_eq!(decide(&a, &dm("999"), false), Verdict::Allow);
    }

    #[test]
    fn groups_fail_closed_and_require_a_mention_by_default() {
        let mut a = ChannelAccess::default();
        assert!(matches!(decide(&a, &group("1", "-100", true), false), Verdict::Drop(_)), "allowlist with no groups");
        a.groups.insert("-100".into(), rule(None, None));
        assert_eq!(decide(&a, &group("1", "-100", true), false), Verdict::Allow);
        assert!(matches!(decide(&a, &group("1", "-100", false), false), Verdict::Drop(_)), "mention required");
        assert!(matches!(decide(&a, &group("1", "-200", true), false), Verdict::Drop(_)), "other group");
        a.groups.insert("-300".into(), rule(Some(false), Some(&["5"])));
        assert_eq!(decide(&a, &group("5", "-300", false), false), Verdict::Allow);
        assert!(matches!(decide(&a, &group("6", "-300", true), false), Verdict::Drop(_)), "group allowFrom");
        a.group_policy = GroupPolicy::Open;
        assert_eq!(decide(&a, &group("1", "-200", true), false), Verdict::Allow);
        a.group_allow_from = vec!["9".into()];
        assert!(matches!(decide(&a, &group("1", "-200", true), false), Verdict::Drop(_)), "groupAllowFrom");
        a.group_policy = GroupPolicy::Disabled;
        assert!(matches!(decide(&a, &group("5", "-300", true), false), Verdict::Drop(_)));
    }
}
