//! The receive paths: a TLoE link (strict Go-Back-N or C-tolerant), the memory node and the
//! requester, fed a stream of untrusted frames with time advancing between them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxio_omnixtend::fuzzing::link_rx(data);
});
