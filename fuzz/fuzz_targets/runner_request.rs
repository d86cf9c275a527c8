//! The runner's side of the protocol: the hello frame and request frames a host sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_runner::protocol::{self, ChannelKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = protocol::decode_request(data) {
        let again = protocol::decode_request(&protocol::encode(&req)).expect("a decoded request re-encodes");
        assert_eq!((again.id, &again.tool, &again.limits), (req.id, &req.tool, &req.limits));
        assert!(protocol::json_depth(&req.args) <= 128, "serde_json's depth limit held");
    }
    if let Ok(key) = ChannelKey::from_hello(data) {
        let hello = key.hello();
        let again = ChannelKey::from_hello(&hello).expect("a key's own hello reads back");
        assert_eq!(again.hello(), hello);
    }
});
