//! Fuzzes the split virtqueue: see `oxio_virtio::fuzzing` for the input format.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxio_virtio::fuzzing::run(data, false);
});
