//! What one random read costs the memory node before any protocol or socket work: copies of
//! BLOCK bytes from random BLOCK-aligned offsets within the first SPAN bytes of a pre-faulted
//! anonymous region of SIZE bytes (the node's `--prefault` memory, written once), into a frame-sized buffer,
//! as the node builds an AccessAckData. Prints nanoseconds per copy for each span given, so a
//! wide span (every read a new page: TLB miss and cache miss) and a narrow one (every page in
//! the TLB) can be compared in one run (`benches/omnixtend-veth.sh` with SPAN=4M is the same
//! comparison through the whole stack).
//!
//! ```text
//! mem_read_cost [SIZE_MIB=256] [BLOCK=1024] [SPAN_MIB...=256 4]
//! ```

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)] // a measuring tool

use oxio_omnixtend::endpoint::Memory;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let size_mib: u64 = a.get(1).map_or(256, |s| s.parse().unwrap());
    let block: usize = a.get(2).map_or(1024, |s| s.parse().unwrap());
    let spans: Vec<u64> = if a.len() > 3 {
        a[3..].iter().map(|s| s.parse().unwrap()).collect()
    } else {
        vec![256, 4]
    };
    let mut mem = Memory::anonymous_populated(size_mib << 20, 0).unwrap();
    // Written once, as the benchmark's write phase does before its reads.
    let len = usize::try_from(size_mib << 20).unwrap();
    for (i, b) in mem.slice_mut(0, len).unwrap().iter_mut().enumerate() {
        *b = i.to_le_bytes()[0] | 1;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut frames = vec![vec![0u8; block + 64]; 256];
    const N: usize = 1_000_000;
    for round in 0..3 {
        for &span in &spans {
            let slots = (span.min(size_mib) << 20) / block as u64;
            let offs: Vec<u64> = (0..N)
                .map(|_| rng.random_range(0..slots) * block as u64)
                .collect();
            for dependent in [false, true] {
                // Dependent: each read's address waits for the previous copy (an opaque zero
                // mixed in), so reads cannot overlap, as in the node, where each is separated
                // by microseconds of other work. Otherwise the CPU may overlap their misses.
                let zero = std::hint::black_box(0u64);
                let start = Instant::now();
                let mut last = 0u8;
                for (i, &off) in offs.iter().enumerate() {
                    let off = if dependent {
                        off ^ (u64::from(last) & zero)
                    } else {
                        off
                    };
                    let f = &mut frames[i % 256];
                    f[..block].copy_from_slice(mem.slice(off, block).unwrap());
                    last = f[block - 1];
                }
                let ns = start.elapsed().as_nanos() as f64 / N as f64;
                println!(
                    "{{\"round\":{round},\"size_mib\":{size_mib},\"span_mib\":{span},\"block\":{block},\"dependent\":{dependent},\"ns_per_read\":{ns:.1},\"last\":{last}}}"
                );
            }
        }
    }
}
