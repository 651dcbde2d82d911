//! Random workloads shared by the property and differential tests.

#![allow(dead_code)]

use oxio_virtio::mock::{Buf, MockDriver, Placement};
use rand::{Rng, RngCore};

/// A chain to add: its buffers and how they are placed.
#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub bufs: Vec<Buf>,
    pub placement: Placement,
}

/// Random buffers (readable first, then writable) inside the driver's data area.
pub fn random_chain(
    rng: &mut impl RngCore,
    d: &mut MockDriver,
    allow_mixed: bool,
    allow_indirect: bool,
) -> Option<ChainSpec> {
    let n = rng.random_range(1..=6usize);
    let readable = rng.random_range(0..=n);
    let mut bufs = Vec::with_capacity(n);
    for i in 0..n {
        let len = rng.random_range(1..=300u32);
        let addr = d.alloc(len).ok()?;
        bufs.push(Buf {
            addr,
            len,
            write: i >= readable,
        });
    }
    let placement = match rng.random_range(0..3) {
        1 if allow_indirect => Placement::Indirect,
        2 if allow_mixed && allow_indirect && n > 1 => Placement::Mixed(rng.random_range(1..n)),
        _ => Placement::Direct,
    };
    Some(ChainSpec { bufs, placement })
}
