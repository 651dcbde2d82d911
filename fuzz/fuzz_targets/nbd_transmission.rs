//! The NBD transmission phase (the request parser, validation, payload skipping and reply
//! paths) from untrusted bytes, as the kernel attach path serves it; the first byte picks
//! simple, structured or extended replies. Logic: `oxio_nbd::fuzzing::transmission`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxio_nbd::fuzzing::transmission(data);
});
