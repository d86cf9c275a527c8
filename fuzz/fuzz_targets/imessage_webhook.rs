//! The iMessage webhook parser: one BlueBubbles delivery (`{"type": "new-message", "data": …}`)
//! → the message the inbox would take.
#![no_main]

use bulkhead::channels::imessage::config::{chat_guid, chat_key, sender_id};
use bulkhead::channels::imessage::{Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Parsed::Message(m) = parse(&payload) {
        let d = &payload["data"];
        assert_eq!(payload["type"], "new-message");
        assert_eq!(d["isFromMe"], false, "never the bridge's own message");
        assert!(
            d["associatedMessageType"].is_null() || d["associatedMessageType"] == 0 || d["associatedMessageType"] == ""
        );
        assert!(bulkhead::ids::validate_peer(&m.chat).is_ok(), "a usable session peer");
        assert_eq!(chat_key(&chat_guid(&m.chat)).as_deref(), Some(m.chat.as_str()), "the chat key round-trips");
        assert_eq!(sender_id(&m.sender).as_deref(), Some(m.sender.as_str()), "the sender is canonical");
        let guid = d["chats"][0]["guid"].as_str().unwrap_or_default();
        let sep = if guid.splitn(3, ';').count() == 3 { ';' } else { '.' };
        assert_eq!(m.group, guid.split(sep).nth(1) == Some("+"), "a group is a `+` chat guid");
        assert!(!m.text.is_empty() || m.attachments_only);
    }
});
