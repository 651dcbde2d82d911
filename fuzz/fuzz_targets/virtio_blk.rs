//! Fuzzes the virtio-blk device through the mock driver: see `oxio_virtio::fuzzing_blk`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oxio_virtio::fuzzing_blk::run(data);
});
