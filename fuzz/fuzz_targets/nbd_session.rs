//! A whole NBD session from untrusted client bytes: fixed-newstyle negotiation (every
//! option, with malformed lengths and names), then the transmission phase of whatever export
//! and reply mode it negotiated. Logic: `oxio_nbd::fuzzing::session`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxio_nbd::fuzzing::session(data);
});
