//! `bulkhead doctor` for Discord bots: the token (`GET /users/@me`), the application's
//! MESSAGE_CONTENT intent (`GET /applications/@me` flags), the guilds the bot is in against the
//! configured ones, and the invite link with the permissions the bot needs.

use super::rest::Rest;
use super::settings;
use crate::channels::adapter::Check;
use crate::config::Config;

/// `GATEWAY_MESSAGE_CONTENT` and `GATEWAY_MESSAGE_CONTENT_LIMITED` application flags.
const MESSAGE_CONTENT_FLAGS: u64 = (1 << 18) | (1 << 19);

/// View Channels, Send Messages, Embed Links, Attach Files, Read Message History, Send Messages
/// in Threads.
pub const INVITE_PERMISSIONS: u64 = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 38);

pub fn invite_link(application: &str) -> String {
    format!("https://discord.com/oauth2/authorize?client_id={application}&scope=bot&permissions={INVITE_PERMISSIONS}")
}

/// The checks of one account, on the caller's runtime (`adapter::doctor` runs every account).
pub(super) fn account(config: &Config, id: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(acc) = settings(config).and_then(|s| s.account(id)) else { return out };
    let label = format!("discord/{}", acc.id);
    let rest = match acc.token.resolve(&config.base_dir).and_then(|t| Rest::new(t.expose(), &acc.api_url)) {
        Ok(r) => r,
        Err(e) => {
            out.push(Check::fail(format!("{label}: {e}")));
            return out;
        }
    };
    let me = match rt.block_on(rest.me()) {
        Ok(me) => me,
        Err(e) => {
            out.push(Check::fail(format!(
                "{label}: GET /users/@me failed: {e}; check the token (Developer Portal → your application → Bot → Reset Token)"
            )));
            return out;
        }
    };
    out.push(Check::ok(format!("{label}: token accepted (bot {})", me.username)));
    let app = match rt.block_on(rest.application()) {
        Ok(a) => a,
        Err(e) => {
            out.push(Check::fail(format!("{label}: GET /applications/@me failed: {e}")));
            return out;
        }
    };
    if app.flags & MESSAGE_CONTENT_FLAGS == 0 {
        out.push(Check::fail(format!(
            "{label}: the MESSAGE CONTENT intent is off, so the gateway refuses the bot (close code 4014) and guild messages would arrive empty: Developer Portal → your application → Bot → Privileged Gateway Intents → switch on MESSAGE CONTENT INTENT, then Save"
        )));
    } else {
        out.push(Check::ok(format!("{label}: MESSAGE CONTENT intent enabled")));
    }
    let invite = invite_link(&app.id);
    match rt.block_on(rest.guilds()) {
        Ok(guilds) => {
            for g in acc.guilds.keys().filter(|g| *g != "*") {
                match guilds.iter().find(|x| &x.id == g) {
                    Some(x) => out.push(Check::ok(format!("{label}: in guild {g} ({})", x.name))),
                    None => out.push(Check::fail(format!(
                        "{label}: the bot is not in guild {g}; a server admin must invite it with {invite}"
                    ))),
                }
            }
            if acc.guilds.is_empty() {
                out.push(Check::note(format!("{label}: in {} guild(s); invite link: {invite}", guilds.len())));
            }
        }
        Err(e) => out.push(Check::fail(format!("{label}: GET /users/@me/guilds failed: {e}"))),
    }
    out
}
