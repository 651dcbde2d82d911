//! Read data sent straight from the memory region, and the guarantee that a replay resends the
//! bytes first served.
//!
//! A large AccessAckData goes out with its payload taken from the memory region by the
//! transport (one iovec, [`crate::wire::FrameBuilder::push_external`]) instead of being copied
//! into the frame's buffer first: one copy fewer per read on the node. But the frame stays in
//! the link's replay buffer until acknowledged, and Go-Back-N may resend it; the resent frame
//! must carry the bytes of the first transmission even if a Put (from any peer) changed that
//! memory in between. So every payload lent this way is recorded here until its frame is
//! acknowledged, and a write that overlaps a recorded payload first saves the bytes it is about
//! to overwrite (a snapshot of that payload), which replays then send instead of the memory.
//! Writes elsewhere, the common case, cost one counter look-up per 4 KiB touched (none at all
//! while nothing is lent).

use super::memory::Memory;

/// Granularity of the overlap index (log2 bytes).
const CHUNK_SHIFT: u32 = 12;
/// Counters in the overlap index. Chunks share a counter when they are a multiple of
/// `COUNTERS` chunks (64 MiB) apart: a shared counter only costs a write a needless scan of
/// the entries, never a missed overlap. (A hash map here cost the node 4-5 % of its time in
/// 8 KiB read runs.)
const COUNTERS: usize = 1 << 14;

#[derive(Debug)]
struct Entry {
    addr: u64,
    len: usize,
    /// The bytes as first sent, saved when a write was about to change them.
    snapshot: Option<Box<[u8]>>,
    live: bool,
}

/// Payloads of one peer's unacknowledged frames that are sent from the memory region.
#[derive(Debug, Default)]
pub(crate) struct Lent {
    entries: Vec<Entry>,
    free: Vec<usize>,
    /// Live entries per 4 KiB chunk they touch, chunk numbers taken modulo `COUNTERS`
    /// (allocated on the first loan).
    counts: Vec<u32>,
    live: usize,
}

/// The counters of the chunks that `len` bytes at `addr` touch.
fn counters(addr: u64, len: usize) -> impl Iterator<Item = usize> {
    let last = addr.saturating_add((len as u64).saturating_sub(1));
    // At most COUNTERS chunks matter: beyond that the counters repeat.
    let n = ((last >> CHUNK_SHIFT) - (addr >> CHUNK_SHIFT)).min(COUNTERS as u64 - 1);
    (0..=n).map(move |i| {
        // Reduced modulo COUNTERS (a power of two), so the cast keeps every bit that matters.
        #[allow(clippy::cast_possible_truncation)]
        let c = ((addr >> CHUNK_SHIFT).wrapping_add(i) as usize) & (COUNTERS - 1);
        c
    })
}

impl Lent {
    /// Records a payload of `len` bytes at `addr` about to be sent from memory; returns its key.
    pub(crate) fn lend(&mut self, addr: u64, len: usize) -> u64 {
        let entry = Entry {
            addr,
            len,
            snapshot: None,
            live: true,
        };
        let idx = crate::slots::put(&mut self.entries, &mut self.free, entry);
        if self.counts.is_empty() {
            self.counts = vec![0; COUNTERS];
        }
        for c in counters(addr, len) {
            self.counts[c] += 1;
        }
        self.live += 1;
        idx as u64
    }

    /// The frame carrying `key` was acknowledged: forget it. Unknown keys are ignored.
    pub(crate) fn release(&mut self, key: u64) {
        let Some(i) = usize::try_from(key)
            .ok()
            .filter(|&i| i < self.entries.len())
        else {
            return;
        };
        let e = &mut self.entries[i];
        if !e.live {
            return;
        }
        e.live = false;
        e.snapshot = None;
        let (addr, len) = (e.addr, e.len);
        for c in counters(addr, len) {
            if let Some(n) = self.counts.get_mut(c) {
                *n = n.saturating_sub(1);
            }
        }
        self.live -= 1;
        self.free.push(i);
    }

    /// Before `len` bytes at `addr` of `mem` are overwritten: saves the current bytes of every
    /// lent payload they overlap that has no snapshot yet.
    pub(crate) fn before_write(&mut self, mem: &Memory, addr: u64, len: usize) {
        if self.live == 0
            || !counters(addr, len).any(|c| self.counts.get(c).is_some_and(|&n| n > 0))
        {
            return;
        }
        let end = addr.saturating_add(len as u64);
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.live && e.snapshot.is_none())
        {
            let e_end = e.addr.saturating_add(e.len as u64);
            if e.addr < end && addr < e_end {
                e.snapshot = mem.slice(e.addr, e.len).map(Box::from);
            }
        }
    }

    /// The bytes to send for `key`: its snapshot, or the memory if none was needed.
    pub(crate) fn bytes<'a>(&'a self, mem: &'a Memory, key: u64) -> Option<&'a [u8]> {
        let e = self
            .entries
            .get(usize::try_from(key).ok()?)
            .filter(|e| e.live)?;
        match &e.snapshot {
            Some(s) => Some(s),
            None => mem.slice(e.addr, e.len),
        }
    }

    /// Payloads currently lent.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_over_lent_bytes_keeps_the_bytes_first_served() {
        let mut mem = Memory::anonymous(1 << 16, 0x1000).unwrap();
        mem.slice_mut(0x3000, 8192).unwrap().fill(1);
        let mut lent = Lent::default();
        let a = lent.lend(0x3000, 8192);
        let b = lent.lend(0x9000, 64);
        // A write elsewhere changes nothing lent.
        lent.before_write(&mem, 0x5000, 4096);
        mem.slice_mut(0x5000, 4096).unwrap().fill(9);
        assert_eq!(lent.bytes(&mem, a).unwrap(), &[1u8; 8192][..]);
        // A write over the tail of `a`: the replay still sends ones.
        lent.before_write(&mem, 0x4ff8, 8);
        mem.slice_mut(0x4ff8, 8).unwrap().fill(2);
        assert_eq!(lent.bytes(&mem, a).unwrap(), &[1u8; 8192][..]);
        // A second write does not overwrite the snapshot with newer bytes.
        lent.before_write(&mem, 0x3000, 8192);
        mem.slice_mut(0x3000, 8192).unwrap().fill(3);
        assert_eq!(lent.bytes(&mem, a).unwrap(), &[1u8; 8192][..]);
        // Lent later, after the writes: the new bytes.
        let c = lent.lend(0x3000, 8192);
        assert_eq!(lent.bytes(&mem, c).unwrap(), &[3u8; 8192][..]);
        assert_eq!(lent.bytes(&mem, b).unwrap(), &[0u8; 64][..]);
        assert_eq!(lent.live(), 3);
        lent.release(a);
        lent.release(a); // a duplicate release is harmless
        lent.release(b);
        lent.release(99);
        assert!(lent.bytes(&mem, a).is_none());
        assert_eq!(lent.live(), 1);
        lent.release(c);
        assert!(lent.counts.iter().all(|&n| n == 0));
        // Keys are reused once released.
        assert!(lent.lend(0x1000, 64) <= 2);
    }

    #[test]
    fn chunks_sharing_a_counter_are_told_apart() {
        let mut mem = Memory::anonymous(0x900_0000, 0).unwrap();
        let far = (COUNTERS as u64) << CHUNK_SHIFT; // 64 MiB: the same counter as 0
        let mut lent = Lent::default();
        let a = lent.lend(0x2000, 4096);
        lent.before_write(&mem, far + 0x2000, 4096);
        mem.slice_mut(far + 0x2000, 4096).unwrap().fill(7);
        assert!(
            lent.entries[0].snapshot.is_none(),
            "no overlap, no snapshot"
        );
        lent.before_write(&mem, 0x2800, 8);
        assert!(lent.entries[0].snapshot.is_some());
        mem.slice_mut(0x2800, 8).unwrap().fill(7);
        assert_eq!(lent.bytes(&mem, a).unwrap(), &[0u8; 4096][..]);
        // A write spanning more than COUNTERS chunks still sees every loan.
        let b = lent.lend(0x8000, 64);
        lent.before_write(&mem, 0, usize::try_from(far * 2).unwrap());
        assert!(lent.entries[usize::try_from(b).unwrap()].snapshot.is_some());
    }
}
