//! Ring-buffer records as the kernel could write them, or as a bug could: any bytes
//! decode to an event or a `DecodeError`, never a panic; decoded events render.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = gracewatch::kernel::decode::decode(data) {
        let _ = format!("{event:?}");
    }
});
