//! Device-side cost of the virtqueue engine, oxio against rust-vmm `virtio-queue`, on the same
//! workloads in one run: pop a batch of 256 chains, walk every descriptor, complete each with
//! `add_used`, then publish once (oxio) / ask once whether to notify (virtio-queue).
//!
//! The driver side is prepared outside the timed region: the rings hold 256 ready chains and
//! each iteration the avail index (split) moves on by 256, or the descriptors are marked
//! available again (packed), so only device work is measured.
//!
//! Run: `cargo bench -p oxio-virtio --features test-utils --bench queue`

// Benchmarks panic on setup errors; that is a failed benchmark, not a device crash.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use oxio_virtio::mock::{Buf, MockDriver, Placement};
use oxio_virtio::{DescriptorChain, Queue, RingFeatures};
use virtio_queue::{Queue as VqQueue, QueueT};

const BATCH: u16 = 256;

#[derive(Clone, Copy, Debug)]
enum Shape {
    One,
    Three,
    Indirect,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::One => "1desc",
            Shape::Three => "3desc",
            Shape::Indirect => "indirect3",
        }
    }
    fn ring_size(self) -> u16 {
        match self {
            Shape::Three => 1024,
            _ => BATCH,
        }
    }
}

/// A driver whose rings hold `BATCH` chains of `shape`, with every avail slot filled.
fn setup(shape: Shape, packed: bool) -> MockDriver {
    let size = shape.ring_size();
    let f = RingFeatures {
        packed,
        indirect: true,
        event_idx: true,
        in_order: false,
    };
    let mut d = MockDriver::with_memory(size, f, 16 << 20);
    for _ in 0..BATCH {
        let hdr = d.alloc(16).unwrap();
        let data = d.alloc(4096).unwrap();
        let st = d.alloc(1).unwrap();
        let (bufs, placement) = match shape {
            Shape::One => (vec![Buf::w(data, 4096)], Placement::Direct),
            Shape::Three => (
                vec![Buf::r(hdr, 16), Buf::w(data, 4096), Buf::w(st, 1)],
                Placement::Direct,
            ),
            Shape::Indirect => (
                vec![Buf::r(hdr, 16), Buf::w(data, 4096), Buf::w(st, 1)],
                Placement::Indirect,
            ),
        };
        d.add_chain(&bufs, placement).unwrap();
    }
    d.publish();
    if !packed {
        // Repeat the 256 heads over the whole avail ring, so any window of 256 is valid.
        let a = d.addresses().driver + 4;
        let mut heads = vec![0u8; 2 * usize::from(BATCH)];
        d.read(a, &mut heads);
        for rep in 1..u64::from(size / BATCH) {
            d.write(a + rep * 2 * u64::from(BATCH), &heads);
        }
        // Start from an empty window; each iteration's setup publishes the next 256.
        d.set_raw_avail_idx(0);
    }
    d
}

/// Split: makes the next 256 avail entries visible.
fn advance_split(d: &MockDriver, idx: &mut u16) {
    *idx = idx.wrapping_add(BATCH);
    d.write(d.addresses().driver + 2, &idx.to_le_bytes());
}

fn bench_split(c: &mut Criterion) {
    for shape in [Shape::One, Shape::Three, Shape::Indirect] {
        let mut g = c.benchmark_group(format!("split/{}", shape.name()));
        g.throughput(Throughput::Elements(u64::from(BATCH)));

        let d = setup(shape, false);
        let mem = d.mem().clone();
        let mut q = d.device_queue();
        q.activate(&mem).unwrap();
        let mut idx = 0u16;
        let mut chain = DescriptorChain::new();
        g.bench_function("oxio", |b| {
            b.iter_batched(
                || advance_split(&d, &mut idx),
                |()| {
                    let mut n = 0;
                    while q.pop_into(&mem, &mut chain).unwrap() {
                        let len: u32 = chain.writable().iter().map(|s| s.len()).sum();
                        q.add_used(chain.id(), len);
                        n += 1;
                    }
                    assert_eq!(n, BATCH);
                    std::hint::black_box(q.publish_used());
                },
                BatchSize::PerIteration,
            );
        });
        g.bench_function("oxio-pop-by-value", |b| {
            b.iter_batched(
                || advance_split(&d, &mut idx),
                |()| {
                    let mut n = 0;
                    while let Some(chain) = q.pop(&mem).unwrap() {
                        let len: u32 = chain.writable().iter().map(|s| s.len()).sum();
                        q.add_used(chain.id(), len);
                        n += 1;
                    }
                    assert_eq!(n, BATCH);
                    std::hint::black_box(q.publish_used());
                },
                BatchSize::PerIteration,
            );
        });

        let d2 = setup(shape, false);
        let m2 = d2.mem().mmap().clone();
        let mut vq = virtio_queue_for(&d2);
        let mut idx2 = 0u16;
        g.bench_function("virtio-queue", |b| {
            b.iter_batched(
                || advance_split(&d2, &mut idx2),
                |()| {
                    let mut n = 0;
                    while let Some(chain) = vq.pop_descriptor_chain(&m2) {
                        let head = chain.head_index();
                        let len: u32 = chain.filter(|d| d.is_write_only()).map(|d| d.len()).sum();
                        vq.add_used(&m2, head, len).unwrap();
                        n += 1;
                    }
                    assert_eq!(n, BATCH);
                    std::hint::black_box(vq.needs_notification(&m2).unwrap());
                },
                BatchSize::PerIteration,
            );
        });
        g.finish();
    }
}

fn virtio_queue_for(d: &MockDriver) -> VqQueue {
    let a = d.addresses();
    let mut q = VqQueue::new(d.size()).unwrap();
    q.set_size(d.size());
    q.set_desc_table_address(Some(a.desc as u32), Some((a.desc >> 32) as u32));
    q.set_avail_ring_address(Some(a.driver as u32), Some((a.driver >> 32) as u32));
    q.set_used_ring_address(Some(a.device as u32), Some((a.device >> 32) as u32));
    q.set_event_idx(true);
    q.set_ready(true);
    q
}

/// Packed: marks every ring slot available again for the lap the device is on.
fn remark_packed(d: &MockDriver, saved: &[u8], lap: &mut bool) {
    use oxio_virtio::queue::{DESC_F_AVAIL, DESC_F_USED};
    *lap = !*lap;
    let mut ring = saved.to_vec();
    for slot in ring.chunks_mut(16) {
        let f = u16::from_le_bytes([slot[14], slot[15]]) & !(DESC_F_AVAIL | DESC_F_USED);
        let f = f | if *lap { DESC_F_AVAIL } else { DESC_F_USED };
        slot[14..16].copy_from_slice(&f.to_le_bytes());
    }
    d.write(d.addresses().desc, &ring);
}

fn bench_packed(c: &mut Criterion) {
    for shape in [Shape::One, Shape::Indirect] {
        let mut g = c.benchmark_group(format!("packed/{}", shape.name()));
        g.throughput(Throughput::Elements(u64::from(BATCH)));
        let d = setup(shape, true);
        let mem = d.mem().clone();
        let mut saved = vec![0u8; 16 * usize::from(d.size())];
        d.read(d.addresses().desc, &mut saved);
        let mut q: Queue = d.device_queue();
        q.activate(&mem).unwrap();
        // The setup marked lap 1 available; the first remark flips to lap 0... so pre-flip.
        let mut lap = false;
        let mut chain = DescriptorChain::new();
        g.bench_function("oxio", |b| {
            b.iter_batched(
                || remark_packed(&d, &saved, &mut lap),
                |()| {
                    let mut n = 0;
                    while q.pop_into(&mem, &mut chain).unwrap() {
                        let len: u32 = chain.writable().iter().map(|s| s.len()).sum();
                        q.add_used(chain.id(), len);
                        n += 1;
                    }
                    assert_eq!(n, BATCH);
                    std::hint::black_box(q.publish_used());
                },
                BatchSize::PerIteration,
            );
        });
        g.finish();
    }
}

criterion_group!(benches, bench_split, bench_packed);
criterion_main!(benches);
