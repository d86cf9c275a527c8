//! `bulkhead doctor` for Telegram bots: the token (`getMe`), privacy mode against
//! `requireMention`, and a webhook that would make long polling fail.

use super::{Connection, MeError};
use crate::channels::adapter::Check;
use crate::config::Config;
use crate::config::channels::GroupPolicy;

/// The checks of one account, on the caller's runtime (`adapter::doctor` runs every account).
pub(super) fn account(config: &Config, id: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(acc) = super::settings(config).and_then(|s| s.account(id)) else { return out };
    let Some(shared) = config.channels.account("telegram", &acc.id) else { return out };
    let label = format!("telegram/{}", acc.id);
    let conn = match acc.token.resolve(&config.base_dir).and_then(|t| Connection::new(t.expose(), &acc.api_url)) {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::fail(format!("{label}: {e}")));
            return out;
        }
    };
    let me = match rt.block_on(conn.get_me()) {
        Ok(me) => me,
        Err(e) => {
            let hint = if e == MeError::Unauthorized { "; check the token with @BotFather" } else { "" };
            out.push(Check::fail(format!("{label}: getMe failed: {e}{hint}")));
            return out;
        }
    };
    out.push(Check::ok(format!("{label}: token accepted (bot @{})", me.user.username.as_deref().unwrap_or("?"))));
    let wants_all =
        !shared.access.require_mention || shared.access.groups.values().any(|g| g.require_mention == Some(false));
    let groups_on = shared.access.group_policy != GroupPolicy::Disabled;
    if groups_on && wants_all && !me.can_read_all_group_messages {
        out.push(Check::warn(format!(
            "{label}: privacy mode is on, so in groups the bot only receives commands, replies to it and @mentions; groups set to requireMention: false will miss other messages. Turn privacy off with @BotFather (/setprivacy, Disable), then remove and re-add the bot to each group"
        )));
    } else if groups_on && me.can_read_all_group_messages && !wants_all {
        out.push(Check::note(format!(
            "{label}: privacy mode is off: the bot receives every group message, but only answers @mentions and replies (requireMention); turning privacy on with @BotFather (/setprivacy) keeps other group messages away from the host"
        )));
    }
    match rt.block_on(conn.webhook()) {
        Ok(None) => out.push(Check::ok(format!("{label}: no webhook set (long polling can receive updates)"))),
        Ok(Some(url)) => out.push(Check::fail(format!(
            "{label}: a webhook is set (to {}), so long polling is refused with 409 Conflict; remove it with the Bot API's deleteWebhook method or stop whatever set it",
            url.host_str().unwrap_or("an unknown host")
        ))),
        Err(e) => out.push(Check::fail(format!("{label}: getWebhookInfo failed: {e}"))),
    }
    out
}
