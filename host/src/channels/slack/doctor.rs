//! `bulkhead doctor` for Slack apps: the bot token (`auth.test`: workspace and bot user), the
//! scopes it lacks for what the config asks, channels configured by a name the workspace does not
//! have, and the Socket Mode app token
//! (`apps.connections.open`; the URL it returns is not used, nor shown).

use super::api::{Api, ApiError};
use super::config::Mode;
use crate::channels::adapter::Check;
use crate::config::Config;
use crate::config::channels::{DmPolicy, GroupPolicy};

/// The checks of one account, on the caller's runtime (`adapter::doctor` runs every account).
pub(super) fn account(config: &Config, id: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(acc) = super::settings(config).and_then(|s| s.account(id)) else { return out };
    let Some(shared) = config.channels.account("slack", &acc.id) else { return out };
    let label = format!("slack/{}", acc.id);
    let (creds, api) = match super::resolve(config, acc).and_then(|c| Api::new(&acc.api_url).map(|a| (c, a))) {
        Ok(x) => x,
        Err(e) => {
            out.push(Check::fail(format!("{label}: {e}")));
            return out;
        }
    };
    let me = match rt.block_on(api.auth_test(creds.bot.expose())) {
        Ok(me) => me,
        Err(e) => {
            let hint = if matches!(e, ApiError::Auth(_)) {
                "; copy the Bot User OAuth Token (xoxb-) from the app's OAuth & Permissions page, and reinstall the app if it was revoked"
            } else {
                ""
            };
            out.push(Check::fail(format!("{label}: auth.test failed: {e}{hint}")));
            return out;
        }
    };
    out.push(Check::ok(format!(
        "{label}: bot token accepted (workspace {} {}, bot user @{} {})",
        me.team, me.team_id, me.user, me.user_id
    )));
    if me.scopes.is_empty() {
        out.push(Check::note(format!(
            "{label}: Slack did not report the token's scopes (x-oauth-scopes); they were not checked"
        )));
    } else {
        let has = |s: &str| me.scopes.iter().any(|x| x == s);
        let access = &shared.access;
        let dms = access.dm_policy != DmPolicy::Disabled;
        let groups = access.group_policy != GroupPolicy::Disabled;
        let unmentioned =
            groups && (!access.require_mention || acc.channels.values().any(|r| r.require_mention == Some(false)));
        let wants: [(&str, bool, bool, &str); 6] = [
            ("chat:write", true, true, "replies cannot be sent"),
            ("app_mentions:read", groups, true, "mentions in channels are not received"),
            ("im:history", dms, true, "direct messages are not received"),
            ("channels:history", unmentioned, false, "messages without a mention in public channels are not received"),
            ("groups:history", unmentioned, false, "messages without a mention in private channels are not received"),
            ("mpim:history", groups, false, "group direct messages are not received"),
        ];
        for (scope, wanted, fail, effect) in wants {
            if wanted && !has(scope) {
                let text = format!(
                    "{label}: the bot token lacks the scope {scope}: {effect}; add it under OAuth & Permissions, Bot Token Scopes, and reinstall the app"
                );
                out.push(if fail { Check::fail(text) } else { Check::warn(text) });
            }
        }
    }
    let names: Vec<&str> = acc.channels.keys().filter_map(|k| k.strip_prefix('#')).collect();
    if !names.is_empty() {
        match rt.block_on(api.channel_ids(creds.bot.expose(), super::NAME_PAGES)) {
            Ok(known) => {
                for name in names {
                    if !known.iter().any(|(n, _)| n == name) {
                        out.push(Check::warn(format!(
                            "{label}: channel #{name} is not in the workspace (or archived), so its entry allows nothing; use its id or fix the name"
                        )));
                    }
                }
            }
            Err(e) => out.push(Check::warn(format!(
                "{label}: conversations.list failed ({e}), so channels configured by name allow nothing; grant channels:read and groups:read or use conversation ids"
            ))),
        }
    }
    match &acc.mode {
        Mode::Socket { .. } => match rt.block_on(api.connections_open(creds.mode.expose())) {
            Ok(_) => out.push(Check::ok(format!("{label}: app-level token accepted (Socket Mode)"))),
            Err(e) => out.push(Check::fail(format!(
                "{label}: apps.connections.open failed: {e}; Socket Mode needs an app-level token (xapp-) with connections:write and Socket Mode turned on"
            ))),
        },
        Mode::Events { .. } => out.push(Check::note(format!(
            "{label}: Events API mode: set the app's Request URL (Event Subscriptions) to https://<this gateway>/channels/slack/{}/events",
            acc.id
        ))),
    }
    out
}
