//! The OpenAI-compatible request parser of `POST /v1/chat/completions`: body → turn → session.
#![no_main]

use bulkhead::gateway::ChatRequest;
use bulkhead::ids::{AgentId, SessionKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ChatRequest::parse(data) else { return };
    let _ = req.model();
    if let Ok(text) = req.turn_text() {
        assert!(!text.trim().is_empty() && text.len() <= 256 * 1024, "a turn the handler refuses");
    }
    let agent = AgentId::parse("fuzz-agent").expect("a valid agent id");
    if let Ok(session) = req.session(agent) {
        // Session keys are stored as text and read back (listing, export).
        let text = session.to_string();
        assert_eq!(SessionKey::parse(&text).as_ref(), Ok(&session), "session key {text:?} does not read back");
    }
});
