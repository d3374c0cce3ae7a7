//! Answers `gracewatch explain` could get from whatever listens at the agent's address:
//! any body gives text or a clear error, and the text never carries a raw control
//! character to the reader's terminal.
#![no_main]

use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for json in [false, true] {
        if let Ok(text) = gracewatch::explain::text_of(data, StatusCode::OK, json, "ns/pod") {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "raw control character in {text:?}"
            );
        }
    }
});
