//! Answers `gracewatch explain` could get from whatever listens at the agent's address:
//! any body gives text or a clear error, and the text never carries a raw control
//! character to the reader's terminal.
#![no_main]

use gracewatch::explain::{format_answer, Form, Palette};
use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for form in [Form::Json, Form::Text(Palette::PLAIN)] {
        if let Ok(text) = format_answer("ns/pod", StatusCode::OK, data, form) {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "raw control character in {text:?}"
            );
        }
    }
});
