//! `bulkhead doctor` for iMessage bridges: the BlueBubbles server answers (`ping`), takes the
//! password, and what it reports of its Private API (`server/info`) against `sendMethod`; the
//! webhook URL to configure (the secret shown as a placeholder); groups that would never be
//! answered because iMessage has no bot mentions.

use super::api::{Bridge, BridgeError};
use super::config::SendMethod;
use crate::channels::adapter::Check;
use crate::config::Config;
use crate::config::channels::GroupPolicy;

/// The checks of one account, on the caller's runtime (`adapter::doctor` runs every account).
pub(super) fn account(config: &Config, id: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(acc) = super::settings(config).and_then(|s| s.account(id)) else { return out };
    let Some(shared) = config.channels.account("imessage", &acc.id) else { return out };
    let label = format!("imessage/{}", acc.id);
    let bridge = match super::resolve(config, acc).and_then(|c| Bridge::new(&acc.url, c.password)) {
        Ok(b) => b,
        Err(e) => {
            out.push(Check::fail(format!("{label}: {e}")));
            return out;
        }
    };
    match rt.block_on(bridge.ping()) {
        Ok(()) => out.push(Check::ok(format!("{label}: BlueBubbles server reachable, password accepted"))),
        Err(BridgeError::Password) => {
            out.push(Check::fail(format!(
                "{label}: the BlueBubbles server refused the password (HTTP 401): set password to the server password from BlueBubbles' settings (Settings, Connection)"
            )));
            return out;
        }
        Err(e @ BridgeError::Down(_)) => {
            out.push(Check::fail(format!(
                "{label}: {e}: start BlueBubbles on the Mac and check that url reaches it from this host (its https:// address, or a tunnel)"
            )));
            return out;
        }
        Err(e) => {
            out.push(Check::fail(format!("{label}: ping failed: {e}")));
            return out;
        }
    }
    match rt.block_on(bridge.server_info()) {
        Ok(info) => {
            let signed_in = info.imessage.as_deref().map(|a| format!(", iMessage account {a}")).unwrap_or_default();
            out.push(Check::ok(format!(
                "{label}: BlueBubbles {} on macOS {}{signed_in}; Private API {}",
                info.server_version,
                info.os_version,
                match (info.private_api, info.helper_connected) {
                    (true, true) => "enabled, helper connected",
                    (true, false) => "enabled, helper NOT connected",
                    (false, _) => "disabled",
                }
            )));
            match acc.send_method {
                SendMethod::PrivateApi if !(info.private_api && info.helper_connected) => out.push(Check::fail(format!(
                    "{label}: sendMethod is \"private-api\" but the server's Private API is {}: enable it in BlueBubbles (Settings, Private API) and check that its helper connects, or set sendMethod: \"apple-script\"",
                    if info.private_api { "not connected" } else { "disabled" }
                ))),
                SendMethod::AppleScript => out.push(Check::note(format!(
                    "{label}: sends use AppleScript: a message Messages fails to send may not be reported back; with the Private API enabled, sendMethod: \"private-api\" reports more failures"
                ))),
                SendMethod::PrivateApi => {}
            }
        }
        Err(e) => {
            out.push(Check::warn(format!("{label}: server/info failed ({e}); the Private API state was not checked")))
        }
    }
    let access = &shared.access;
    if access.group_policy != GroupPolicy::Disabled
        && access.require_mention
        && access.groups.values().all(|r| r.require_mention != Some(false))
    {
        out.push(Check::note(format!(
            "{label}: iMessage has no bot mentions, so groups are answered only where requireMention: false is set (on the account or a group)"
        )));
    }
    out.push(Check::note(format!(
        "{label}: in BlueBubbles (Settings, API & Webhooks) add the webhook https://<this gateway>/channels/imessage/{}/webhook?secret=<webhookSecret> for the event \"New Messages\"",
        acc.id
    )));
    out
}
