//! The Signal event parser: one `receive` event of signal-cli's stream (its `data:`) → the
//! message the inbox would take, for the account `+15550000001`.
#![no_main]

use bulkhead::channels::signal::events::{Me, Parsed, parse_event};
use libfuzzer_sys::fuzz_target;

const ME: &str = "+15550000001";
const MY_ACI: &str = "aaaaaaaa-0000-4000-8000-000000000001";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let me = Me { number: ME, uuid: Some(MY_ACI) };
    if let Parsed::Message(m) = parse_event(text, me) {
        let v: serde_json::Value = serde_json::from_str(text).expect("a message came from JSON");
        assert_eq!(
            v["account"].as_str().map(|a| a.chars().filter(|c| c.is_ascii_digit() || *c == '+').collect::<String>()),
            Some(ME.to_string()),
            "only the account's own events"
        );
        assert!(
            m.number.as_deref() != Some(ME) && m.uuid.as_deref() != Some(MY_ACI),
            "never the account's own message"
        );
        assert!(m.number.is_some() || m.uuid.is_some(), "a sender");
        assert!(m.number.as_deref().is_none_or(|n| n.starts_with('+') && n[1..].bytes().all(|b| b.is_ascii_digit())));
        assert!(m.timestamp > 0);
        assert!(!m.text.is_empty() || m.non_text);
        assert!(v["envelope"]["syncMessage"].is_null(), "never a sync message");
    }
});
