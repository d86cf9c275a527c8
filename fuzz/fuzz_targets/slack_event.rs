//! The Slack event parser: one `event_callback` payload (from Socket Mode or the Events API) →
//! the message the inbox would take.
#![no_main]

use bulkhead::channels::slack::{Parsed, parse_callback};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Parsed::Message(m) = parse_callback(&payload, "U0ACMEBOT", "T0ACME") {
        assert_eq!(payload["team_id"], "T0ACME", "only the bot's own workspace");
        assert!(payload["event"].get("bot_id").is_none_or(|b| b.is_null()), "never a bot's message");
        assert_ne!(payload["event"]["user"], "U0ACMEBOT", "never the bot's own message");
        assert!(m.user.starts_with(['U', 'W']) && m.user.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        let raw = payload["event"]["text"].as_str().unwrap_or_default();
        assert!(m.mentioned || !raw.contains("<@U0ACMEBOT>"), "a mention in the text is seen");
        assert!(m.mentioned || payload["event"]["type"] != "app_mention");
        assert!(!m.text.is_empty() || m.files_only);
    }
});
