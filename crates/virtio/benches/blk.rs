//! Device-side cost of virtio-blk per request, on the memory backend, driven by the mock
//! driver: 4 KiB and 64 KiB reads and writes, in batches of 1 and 32. Each iteration the
//! driver (untimed) makes a batch available; the device (timed) pops, validates, runs the
//! requests on the backend, copies data, writes status bytes and publishes the used ring.
//!
//! Run: `cargo bench -p oxio-virtio --features test-utils --bench blk`

// Benchmarks panic on setup errors; that is a failed benchmark, not a device crash.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use oxio_block::memory::MemoryBackend;
use oxio_virtio::blk::{types, Block, BlockConfig};
use oxio_virtio::mock::{Buf, MockDriver, Placement};
use oxio_virtio::{RingFeatures, VirtioDevice};

fn bench(c: &mut Criterion) {
    for (name, kind) in [("read", types::IN), ("write", types::OUT)] {
        for len in [4096u32, 65536] {
            for batch in [1u32, 32] {
                let mut g = c.benchmark_group(format!("blk/{name}/{}k/batch{batch}", len / 1024));
                g.throughput(Throughput::Elements(u64::from(batch)));
                let backend = Arc::new(MemoryBackend::new(64 << 20).unwrap());
                let mut dev = Block::new(backend, BlockConfig::default());
                dev.set_features(dev.device_features()).unwrap();
                let f = RingFeatures {
                    indirect: true,
                    event_idx: true,
                    ..Default::default()
                };
                let mut d = MockDriver::with_memory(256, f, 64 << 20);
                let mem = d.mem().clone();
                let mut q = dev.direct_queue(d.device_queue()).unwrap();
                // Buffers for one batch, reused every iteration.
                let mut reqs = Vec::new();
                for i in 0..batch {
                    let h = d.alloc(16).unwrap();
                    let mut hdr = kind.to_le_bytes().to_vec();
                    hdr.extend(0u32.to_le_bytes());
                    hdr.extend((u64::from(i) * u64::from(len / 512)).to_le_bytes());
                    d.write(h, &hdr);
                    let data = d.alloc(len).unwrap();
                    let st = d.alloc(1).unwrap();
                    let bufs = if kind == types::IN {
                        vec![Buf::r(h, 16), Buf::w(data, len), Buf::w(st, 1)]
                    } else {
                        vec![Buf::r(h, 16), Buf::r(data, len), Buf::w(st, 1)]
                    };
                    reqs.push(bufs);
                }
                g.bench_function("oxio", |b| {
                    b.iter_batched(
                        || {
                            d.used();
                            for bufs in &reqs {
                                d.add_chain(bufs, Placement::Direct).unwrap();
                            }
                            d.publish();
                        },
                        |()| assert!(q.run_until_idle(&mem)),
                        BatchSize::PerIteration,
                    );
                });
                g.finish();
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
