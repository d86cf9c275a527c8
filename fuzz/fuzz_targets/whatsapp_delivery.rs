//! The WhatsApp (Cloud API) webhook delivery parser: one verified delivery body → the messages
//! the inbox would take, the failed statuses the operator is told about, and what is skipped.
#![no_main]

use bulkhead::channels::whatsapp::{Item, parse_delivery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for item in parse_delivery(&payload) {
        match item {
            Item::Message(m) => {
                assert_eq!(payload["object"], "whatsapp_business_account", "only WhatsApp deliveries");
                assert!(!m.phone_number_id.is_empty() && m.phone_number_id.bytes().all(|b| b.is_ascii_digit()));
                assert!(
                    (6..=15).contains(&m.from.len()) && m.from.bytes().all(|b| b.is_ascii_digit()),
                    "a canonical sender"
                );
                assert!(!m.id.is_empty() && m.id.len() <= 256 && m.id.bytes().all(|b| b.is_ascii_graphic()));
                assert!(
                    m.text.as_ref().is_none_or(|t| !t.trim().is_empty() && t.trim() == t),
                    "text is trimmed, never empty"
                );
            }
            Item::Failed { phone_number_id, .. } => {
                assert!(phone_number_id.bytes().all(|b| b.is_ascii_digit()));
            }
            Item::Ignored(why) | Item::Malformed(why) => assert!(!why.is_empty()),
        }
    }
});
