//! `bulkhead doctor` for Signal numbers: the signal-cli daemon reachable (`version`) and in
//! multi-account mode, and the account's number among those it serves (`listAccounts`). Numbers
//! are shown by their last digits only.

use super::config::{masked, number};
use super::rpc::{Daemon, RpcError};
use crate::channels::adapter::Check;
use crate::config::Config;

/// How to start the daemon, for the fixes doctor names.
const RUN_DAEMON: &str = "signal-cli daemon --http 127.0.0.1:8080 --receive-mode=on-connection";

/// A daemon URL to show: scheme, host and port only (no user info, path or query).
pub(super) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            _ => "an unreadable URL".into(),
        },
        Err(_) => "an unreadable URL".into(),
    }
}

/// The checks of one account, on the caller's runtime (`adapter::doctor` runs every account).
pub(super) fn account(config: &Config, id: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(acc) = super::settings(config).and_then(|s| s.account(id)) else { return out };
    let label = format!("signal/{}", acc.id);
    let at = shown(&acc.url);
    let daemon = match Daemon::new(&acc.url) {
        Ok(d) => d,
        Err(e) => {
            out.push(Check::fail(format!("{label}: {e}")));
            return out;
        }
    };
    match rt.block_on(daemon.version()) {
        Ok(v) => out.push(Check::ok(format!("{label}: signal-cli daemon {v} reachable at {at}"))),
        Err(e) => {
            out.push(Check::fail(format!(
                "{label}: the signal-cli daemon at {at} is not reachable: {e}; start it in multi-account mode (`{RUN_DAEMON}`) or fix channels.signal url"
            )));
            return out;
        }
    }
    let shown_number = masked(&acc.number);
    match rt.block_on(daemon.accounts()) {
        Ok(list) if list.iter().any(|n| number(n).as_deref() == Some(acc.number.as_str())) => {
            out.push(Check::ok(format!("{label}: number {shown_number} is registered on the daemon")));
        }
        Ok(_) => out.push(Check::fail(format!(
            "{label}: number {shown_number} is not registered on the daemon at {at}; link it with `bulkhead channels login --channel signal --account {}` (or register it with signal-cli), or fix its number",
            acc.id
        ))),
        Err(RpcError::NoMethod) => out.push(Check::fail(format!(
            "{label}: the daemon at {at} serves a single account (started with -a); start it without -a so it serves every number (`{RUN_DAEMON}`)"
        ))),
        Err(e) => out.push(Check::fail(format!("{label}: listAccounts failed: {e}"))),
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_user_info_or_path() {
        assert_eq!(super::shown("http://user:secret@127.0.0.1:8080/x?y=1"), "http://127.0.0.1:8080");
        assert_eq!(super::shown("https://signal.internal"), "https://signal.internal:443");
        assert_eq!(super::shown("nope"), "an unreadable URL");
    }
}
