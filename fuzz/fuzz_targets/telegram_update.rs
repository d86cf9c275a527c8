//! The Telegram update parser: one raw `getUpdates` item → the message the inbox would take.
#![no_main]

use bulkhead::channels::inbound::Body;
use bulkhead::channels::telegram::{UpdateContent, chat_message, parse_update};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(item) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Some((update, UpdateContent::Message(m))) = parse_update(&item) else { return };
    if let Some(msg) = chat_message(update, &m, "acme_bot", 42) {
        assert_eq!(msg.update, update);
        assert_eq!(matches!(msg.body, Body::Text(_)), m.text().is_some());
        assert!(msg.group || msg.topic.is_none() || m.is_topic_message);
    }
});
