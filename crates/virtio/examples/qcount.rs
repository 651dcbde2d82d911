//! Instruction-count probe for the queue engine: runs N batches of 256 one-descriptor chains
//! through oxio (`oxio`) or rust-vmm virtio-queue (`vq`). Under callgrind the difference
//! between two values of N gives exact instructions per chain, unaffected by machine load:
//!
//! ```sh
//! cargo build --release -p oxio-virtio --features test-utils --example qcount
//! valgrind --tool=callgrind target/release/examples/qcount oxio 110   # minus N = 10
//! ```
//! (`benches/virtio-queue-instructions.sh` does exactly this.)

// A probe: setup failures may panic; the ring addresses are below 4 GiB by construction.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
use oxio_virtio::mock::{Buf, MockDriver, Placement};
use oxio_virtio::RingFeatures;
use virtio_queue::{Queue as VqQueue, QueueT};
fn main() {
    let which = std::env::args().nth(1).unwrap();
    let n: u32 = std::env::args().nth(2).unwrap().parse().unwrap();
    let f = RingFeatures {
        indirect: true,
        event_idx: true,
        ..Default::default()
    };
    let mut d = MockDriver::with_memory(256, f, 16 << 20);
    for _ in 0..256 {
        let a = d.alloc(4096).unwrap();
        d.add_chain(&[Buf::w(a, 4096)], Placement::Direct).unwrap();
    }
    d.set_raw_avail_idx(0);
    let mem = d.mem().clone();
    let mut idx = 0u16;
    if which == "oxio" {
        let mut q = d.device_queue();
        for _ in 0..n {
            idx = idx.wrapping_add(256);
            d.set_raw_avail_idx(idx);
            let mut c = oxio_virtio::DescriptorChain::new();
            while q.pop_into(&mem, &mut c).unwrap() {
                let l: u32 = c.writable().iter().map(|s| s.len()).sum();
                q.add_used(c.id(), l);
            }
            std::hint::black_box(q.publish_used());
        }
    } else {
        let a = d.addresses();
        let mut q = VqQueue::new(256).unwrap();
        q.set_desc_table_address(Some(a.desc as u32), Some(0));
        q.set_avail_ring_address(Some(a.driver as u32), Some(0));
        q.set_used_ring_address(Some(a.device as u32), Some(0));
        q.set_event_idx(true);
        q.set_ready(true);
        let m = mem.mmap();
        for _ in 0..n {
            idx = idx.wrapping_add(256);
            d.set_raw_avail_idx(idx);
            while let Some(c) = q.pop_descriptor_chain(m) {
                let h = c.head_index();
                let l: u32 = c.filter(|d| d.is_write_only()).map(|d| d.len()).sum();
                q.add_used(m, h, l).unwrap();
            }
            std::hint::black_box(q.needs_notification(m).unwrap());
        }
    }
}
