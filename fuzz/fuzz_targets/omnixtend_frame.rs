//! The TLoE frame parser: any bytes parse or are rejected without panicking, and every
//! message that parses re-emits to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxio_omnixtend::fuzzing::frame(data);
});
