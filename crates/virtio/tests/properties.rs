//! Property tests on random workloads, both ring layouts: every byte the driver offers
//! reaches the device, every byte the device writes reaches the driver, every chain comes
//! back exactly once with its length, and an interrupt the driver asked for is never lost.

#![cfg(feature = "test-utils")]
// A failed unwrap in a test is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};

use oxio_virtio::mock::MockDriver;
use oxio_virtio::{Queue, RingFeatures};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MEM: usize = 4 << 20;

struct Expect {
    readable: Vec<u8>,
    writable: Vec<(u64, u32)>,
}

fn run(seed: u64, packed: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = if packed {
        rng.random_range(1..=64)
    } else {
        1u16 << rng.random_range(0..=6)
    };
    let f = RingFeatures {
        packed,
        indirect: rng.random_bool(0.8),
        event_idx: rng.random_bool(0.5),
        in_order: rng.random_bool(0.3),
    };
    let mut d = MockDriver::with_memory(size, f, MEM);
    let mut q: Queue = d.device_queue();
    if !packed {
        let start: u16 = rng.random();
        d.start_split_at(start);
        q.set_next_avail(start, start);
    }
    let mem = d.mem().clone();
    q.activate(&mem).unwrap();
    // A rebased queue interrupts once unconditionally; start from a known history.
    q.publish_used();
    let mut expect: HashMap<u16, Expect> = HashMap::new();
    let mut avail_order = Vec::new();

    for _round in 0..30 {
        if d.in_flight() == 0 {
            d.reset_alloc();
        }
        // The driver offers a few chains with random contents.
        for _ in 0..rng.random_range(0..=usize::from(size)) {
            let Some(spec) = common::random_chain(&mut rng, &mut d, !packed, f.indirect) else {
                break;
            };
            let mut readable = Vec::new();
            for b in spec.bufs.iter().filter(|b| !b.write) {
                let mut data = vec![0u8; b.len as usize];
                rng.fill_bytes(&mut data);
                d.write(b.addr, &data);
                readable.extend(data);
            }
            let writable = spec
                .bufs
                .iter()
                .filter(|b| b.write)
                .map(|b| (b.addr, b.len))
                .collect();
            let Ok(id) = d.add_chain(&spec.bufs, spec.placement) else {
                break;
            };
            expect.insert(id, Expect { readable, writable });
            avail_order.push(id);
        }
        d.publish();

        // The device takes some of them and completes them in a random order.
        let mut taken = Vec::new();
        let limit = rng.random_range(0..=usize::from(size));
        while taken.len() < limit {
            let Some(c) = q.pop(&mem).unwrap() else { break };
            let e = &expect[&c.id()];
            let mut got = Vec::new();
            c.reader().read_to_end(&mut got).unwrap();
            assert_eq!(
                got,
                e.readable,
                "seed {seed}: readable bytes of chain {}",
                c.id()
            );
            let total: u32 = e.writable.iter().map(|w| w.1).sum();
            assert_eq!(c.writable_len(), total);
            let n = rng.random_range(0..=total) as usize;
            let fill = vec![(c.id() & 0xff) as u8; n];
            let mut w = c.writer();
            w.write_all(&fill).unwrap();
            taken.push((c.id(), w.bytes_written()));
        }
        for i in (1..taken.len()).rev() {
            taken.swap(i, rng.random_range(0..=i));
        }
        let wants_interrupt = rng.random_bool(0.5);
        d.set_interrupts(wants_interrupt);
        for &(id, len) in &taken {
            q.add_used(id, len);
        }
        let before = d.used().len();
        assert_eq!(before, 0, "seed {seed}: nothing is visible before publish");
        let irq = q.publish_used();
        let used = d.used();
        if wants_interrupt && !used.is_empty() {
            assert!(irq, "seed {seed}: lost interrupt");
        }
        if !wants_interrupt && !f.event_idx {
            assert!(!irq, "seed {seed}: interrupt although disabled");
        }
        for (id, len) in used {
            let e = expect
                .remove(&id)
                .unwrap_or_else(|| panic!("seed {seed}: unknown or repeated id {id}"));
            let mut left = len as usize;
            for (addr, wlen) in e.writable {
                let n = left.min(wlen as usize);
                let mut buf = vec![0u8; n];
                d.read(addr, &mut buf);
                assert!(
                    buf.iter().all(|&b| b == (id & 0xff) as u8),
                    "seed {seed}: written bytes"
                );
                left -= n;
            }
            if f.in_order {
                assert_eq!(avail_order.first(), Some(&id), "seed {seed}: in-order use");
            }
            avail_order.retain(|&x| x != id);
        }
    }
    // Drain: everything offered comes back exactly once.
    while let Some(c) = q.pop(&mem).unwrap() {
        q.add_used(c.id(), 0);
    }
    q.publish_used();
    for (id, _) in d.used() {
        assert!(
            expect.remove(&id).is_some(),
            "seed {seed}: repeated id {id}"
        );
    }
    assert!(
        expect.is_empty(),
        "seed {seed}: chains never came back: {:?}",
        expect.keys()
    );
    assert_eq!(q.stats().invalid_chains, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn split_random_workloads(seed in any::<u64>()) {
        run(seed, false);
    }

    #[test]
    fn packed_random_workloads(seed in any::<u64>()) {
        run(seed, true);
    }
}
