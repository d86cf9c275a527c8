//! The OpenAI chat-completions stream reader (and plain JSON bodies), chunked any way.
#![no_main]

use bulkhead::model::openai::Accumulator;
use bulkhead_fuzz::check_stream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_stream::<Accumulator>(data));
