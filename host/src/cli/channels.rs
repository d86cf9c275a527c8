//! `bulkhead channels login --channel NAME --account ID`: links one chat account to its platform
//! through its adapter (`Adapter::login`: Signal shows a device-link QR code and waits for the
//! phone). A channel whose accounts connect with credentials in the config has nothing to link.

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::channels::adapter;

pub fn login(source: &ConfigSource, channel: &str, account: &str) -> i32 {
    let config = match source.load(false) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let Some(adapter) = adapter::adapter(channel) else {
        let known: Vec<&str> = adapter::ADAPTERS.iter().map(|a| a.channel()).collect();
        eprintln!("error: no channel {channel:?} in this build (channels: {})", known.join(", "));
        return EXIT_INVALID;
    };
    if config.channels.account(channel, account).is_none() {
        eprintln!(
            "error: channels.{channel} has no enabled account {account:?}: add it under channels.{channel}.accounts and bind it to an agent"
        );
        return EXIT_INVALID;
    }
    let mut out = std::io::stdout();
    match adapter.login(&config, account, &mut out) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {channel}/{account}: {e}");
            EXIT_FAILURE
        }
    }
}
