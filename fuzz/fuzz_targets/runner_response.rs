//! The host's side of the protocol: response frames from a runner that a tenant's code controls.
//! Half the inputs are sealed with the channel key first, so the JSON behind the tag is reached.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sandbox_runner::protocol::{ChannelKey, FrameError, KEY_BYTES};

#[derive(Arbitrary, Debug)]
struct Input {
    sealed: bool,
    id: u64,
    expected: u64,
    max: u16,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let key = ChannelKey::new([7; KEY_BYTES]);
    let frame = if input.sealed { key.seal_json(input.id, &input.body) } else { input.body.clone() };
    let max = input.max as usize;
    match key.open(&frame, input.expected, max) {
        Ok(resp) => {
            let again = key.open(&key.seal(input.expected, &resp), input.expected, usize::MAX);
            assert_eq!(again.as_ref(), Ok(&resp), "an accepted response does not round-trip");
        }
        Err(FrameError::BadTag) => assert!(!input.sealed, "a frame sealed with the key was refused as forged"),
        Err(FrameError::WrongId { got, expected }) => {
            assert_eq!(expected, input.expected);
            assert!(!input.sealed || got == input.id);
        }
        Err(_) => {}
    }
    if input.sealed && input.id == input.expected && frame.len() - 4 <= max {
        let r = key.open(&frame, input.expected, max);
        assert!(matches!(r, Ok(_) | Err(FrameError::Json(_) | FrameError::Version { .. })), "{r:?}");
    }
});
