//! The config loader: raw bytes → JSON5 → validated config, as `bulkhead config check` runs it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Validation reads no files: relative paths only resolve against the base.
    if let Err(errors) = bulkhead::config::load_str(text, Path::new("/nonexistent/bulkhead-fuzz")) {
        assert!(!errors.is_empty(), "a refused config names no error");
        for e in &errors {
            assert!(!e.message.trim().is_empty(), "an error without a message at {:?}", e.path);
        }
    }
});
