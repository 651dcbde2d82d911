//! Splits an (offset, length) access into aligned power-of-two TileLink transfers.
//!
//! Whole aligned blocks use Get or PutFullData of the largest size that is aligned, fits in
//! what remains and does not exceed the MTU's limit. Edges that do not fill an aligned flit
//! use a Get of the containing flit (the wanted bytes are copied out) or a PutPartialData of
//! it with only the wanted bytes enabled.

use crate::wire::FLIT;

/// The kind of transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    /// Get.
    Get,
    /// PutFullData.
    PutFull,
    /// PutPartialData of one flit.
    PutPartial,
}

/// One TileLink transfer covering part of a request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    /// The kind.
    pub kind: TxnKind,
    /// Bus address (aligned to 2^size).
    pub addr: u64,
    /// log2 bytes.
    pub size: u8,
    /// Where the covered bytes start in the request's buffer.
    pub buf_off: usize,
    /// Bytes of the block before the covered bytes.
    pub skip: usize,
    /// Covered bytes.
    pub len: usize,
}

/// An iterator over the transfers of one access.
#[derive(Debug, Clone)]
pub struct Planner {
    start: u64,
    pos: u64,
    end: u64,
    write: bool,
    max_size: u8,
}

impl Planner {
    /// Plans `len` bytes at bus address `addr`; `max_size` is the largest transfer (log2, ≥ 3).
    pub fn new(addr: u64, len: u64, write: bool, max_size: u8) -> Planner {
        Planner {
            start: addr,
            pos: addr,
            end: addr.saturating_add(len),
            write,
            max_size: max_size.max(3),
        }
    }

    /// Whether every transfer has been produced.
    pub fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn edge(&mut self) -> Txn {
        let flit = FLIT as u64;
        let block = self.pos & !(flit - 1);
        let stop = self.end.min(block + flit);
        let txn = Txn {
            kind: if self.write {
                TxnKind::PutPartial
            } else {
                TxnKind::Get
            },
            addr: block,
            size: 3,
            buf_off: usize::try_from(self.pos - self.start).unwrap_or(usize::MAX),
            skip: usize::try_from(self.pos - block).unwrap_or(0),
            len: usize::try_from(stop - self.pos).unwrap_or(0),
        };
        self.pos = stop;
        txn
    }
}

impl Iterator for Planner {
    type Item = Txn;

    fn next(&mut self) -> Option<Txn> {
        if self.done() {
            return None;
        }
        let left = self.end - self.pos;
        if self.pos % FLIT as u64 != 0 || left < FLIT as u64 {
            return Some(self.edge());
        }
        let align = self.pos.trailing_zeros().min(63);
        let fit = 63 - left.leading_zeros();
        // min of values <= 63, so the cast is lossless.
        #[allow(clippy::cast_possible_truncation)]
        let size = align.min(fit).min(u32::from(self.max_size)) as u8;
        let len = 1u64 << size;
        let txn = Txn {
            kind: if self.write {
                TxnKind::PutFull
            } else {
                TxnKind::Get
            },
            addr: self.pos,
            size,
            buf_off: usize::try_from(self.pos - self.start).unwrap_or(usize::MAX),
            skip: 0,
            len: usize::try_from(len).unwrap_or(0),
        };
        self.pos += len;
        Some(txn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(addr: u64, len: u64, write: bool) -> Vec<(TxnKind, u64, u8, usize, usize)> {
        Planner::new(addr, len, write, 10)
            .map(|t| (t.kind, t.addr, t.size, t.skip, t.len))
            .collect()
    }

    #[test]
    fn aligned_runs_use_the_largest_blocks() {
        let t = sizes(0x2000, 4096, false);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|x| x.2 == 10 && x.0 == TxnKind::Get));
        let t = sizes(0x1000, 64, true);
        assert_eq!(t, vec![(TxnKind::PutFull, 0x1000, 6, 0, 64)]);
    }

    #[test]
    fn unaligned_edges_use_partial_puts() {
        let t = sizes(0x1003, 0x20, true);
        assert_eq!(t[0], (TxnKind::PutPartial, 0x1000, 3, 3, 5));
        assert_eq!(t[1], (TxnKind::PutFull, 0x1008, 3, 0, 8));
        assert_eq!(t[2], (TxnKind::PutFull, 0x1010, 4, 0, 16));
        assert_eq!(t[3], (TxnKind::PutPartial, 0x1020, 3, 0, 3));
        assert_eq!(t.iter().map(|x| x.4).sum::<usize>(), 0x20);
        assert_eq!(
            sizes(0x1001, 2, false),
            vec![(TxnKind::Get, 0x1000, 3, 1, 2)]
        );
    }

    #[test]
    fn every_byte_is_covered_once() {
        for addr in [0u64, 1, 7, 8, 1000, 4095, 0x1_0000_0003] {
            for len in [1u64, 7, 8, 9, 63, 64, 65, 1023, 1024, 1025, 4096, 10_000] {
                let mut next = 0usize;
                for t in Planner::new(addr, len, true, 10) {
                    assert_eq!(t.buf_off, next);
                    assert_eq!(t.addr % (1 << t.size), 0);
                    assert!(t.skip + t.len <= 1 << t.size);
                    assert_eq!(t.addr + t.skip as u64, addr + t.buf_off as u64);
                    assert!(t.size <= 10);
                    next += t.len;
                }
                assert_eq!(next as u64, len);
            }
        }
    }
}
