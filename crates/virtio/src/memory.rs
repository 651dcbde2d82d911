//! Guest memory: a `vm-memory` multi-region mapping plus a flat table of host addresses, so
//! the queue engine translates a guest address with a few compares instead of a trait call.
//!
//! Every translation is bounds-checked: a range that is not entirely inside guest memory is
//! refused. A range that crosses from one region into a region that starts right where it
//! ends is split into one host piece per region.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors from building a [`GuestMemory`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `vm-memory` refused the layout.
    #[error("Cannot map guest memory")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
    /// A region has no host mapping.
    #[error("Guest memory region at {0:#x} has no host mapping")]
    NoHostAddress(u64),
}

/// One region of guest memory as the queue engine sees it.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    /// Exclusive end; `start < end` always.
    end: u64,
    host: *mut u8,
}

#[derive(Debug)]
struct Inner {
    mmap: GuestMemoryMmap,
    regions: Box<[HostRegion]>,
}

/// A shared handle to guest memory. Cloning is cheap (one `Arc`).
///
/// The host mappings stay alive while any clone exists, which is what makes the raw pointers
/// the queue engine derives from it valid.
#[derive(Debug, Clone)]
pub struct GuestMemory {
    inner: Arc<Inner>,
}

// SAFETY: the raw host pointers in `regions` point into mappings owned by `mmap`, which is
// `Send + Sync`; the table itself is immutable after construction. Guest memory is shared with
// the guest by design, and every access through these pointers is a volatile or atomic access
// or a byte copy, never a Rust reference to guest-controlled data.
unsafe impl Send for Inner {}
// SAFETY: see the `Send` argument above; nothing in `Inner` has interior mutability.
unsafe impl Sync for Inner {}

impl GuestMemory {
    /// Wraps an existing `vm-memory` mapping.
    pub fn new(mmap: GuestMemoryMmap) -> Result<Self, MemoryError> {
        let mut regions = Vec::with_capacity(mmap.num_regions());
        for region in mmap.iter() {
            let start = region.start_addr().0;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| MemoryError::NoHostAddress(start))?;
            let end = start.saturating_add(region.len());
            if end > start {
                regions.push(HostRegion { start, end, host });
            }
        }
        regions.sort_by_key(|r| r.start);
        Ok(Self {
            inner: Arc::new(Inner {
                mmap,
                regions: regions.into_boxed_slice(),
            }),
        })
    }

    /// Maps anonymous memory for each `(guest address, length)` range.
    pub fn anonymous(ranges: &[(u64, usize)]) -> Result<Self, MemoryError> {
        let ranges: Vec<_> = ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        Self::new(GuestMemoryMmap::from_ranges(&ranges)?)
    }

    /// The underlying `vm-memory` mapping, for `Bytes` accesses outside the hot path.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.inner.mmap
    }

    /// Whether two handles share the same mapping.
    pub fn same_as(&self, other: &GuestMemory) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Number of regions.
    pub fn num_regions(&self) -> usize {
        self.inner.regions.len()
    }

    /// Translates `[addr, addr + len)` to a host pointer when the whole range lies in one
    /// region. `hint` is the index of the region that matched last time; it is updated.
    #[inline]
    pub(crate) fn translate(&self, addr: u64, len: u64, hint: &mut usize) -> Option<*mut u8> {
        let regions = &self.inner.regions;
        let end = addr.checked_add(len)?;
        let r = match regions.get(*hint) {
            Some(r) if r.start <= addr && addr < r.end => r,
            _ => {
                let idx = self.find(addr)?;
                *hint = idx;
                regions.get(idx)?
            }
        };
        // An empty range at the very end of a region is fine; past the end is not.
        if end > r.end {
            return None;
        }
        let offset = usize::try_from(addr - r.start).ok()?;
        // SAFETY: `offset < r.end - r.start`, the length of the mapping that starts at
        // `r.host`, so the result stays inside the same mapping.
        Some(unsafe { r.host.add(offset) })
    }

    /// Calls `f(host_ptr, piece_len)` for each host piece of `[addr, addr + len)`, crossing
    /// into following regions when they are contiguous in guest address space. Returns
    /// `None` if any byte of the range is outside guest memory (`f` may have been called for
    /// a prefix already).
    pub(crate) fn for_each_piece(
        &self,
        addr: u64,
        len: u64,
        hint: &mut usize,
        mut f: impl FnMut(*mut u8, u64),
    ) -> Option<()> {
        if let Some(ptr) = self.translate(addr, len, hint) {
            f(ptr, len);
            return Some(());
        }
        addr.checked_add(len)?;
        let (mut addr, mut left) = (addr, len);
        while left > 0 {
            let idx = self.find(addr)?;
            let r = self.inner.regions.get(idx)?;
            let piece = left.min(r.end - addr);
            let ptr = self.translate(addr, piece, hint)?;
            f(ptr, piece);
            addr += piece;
            left -= piece;
        }
        Some(())
    }

    /// Maps a host pointer into guest memory back to its guest address (for diagnostics and
    /// tests; the hot path never needs it).
    pub fn guest_address(&self, ptr: *const u8) -> Option<u64> {
        let p = ptr as usize;
        self.inner.regions.iter().find_map(|r| {
            let base = r.host as usize;
            let len = usize::try_from(r.end - r.start).ok()?;
            (p >= base && p < base + len).then(|| r.start + (p - base) as u64)
        })
    }

    fn find(&self, addr: u64) -> Option<usize> {
        let regions = &self.inner.regions;
        let idx = regions.partition_point(|r| r.end <= addr);
        regions.get(idx).filter(|r| r.start <= addr).map(|_| idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> GuestMemory {
        GuestMemory::anonymous(&[(0, 0x1000), (0x1000, 0x1000), (0x10000, 0x1000)]).unwrap()
    }

    #[test]
    fn translate_inside_and_outside() {
        let mem = two_regions();
        let mut hint = 0;
        assert!(mem.translate(0x10, 0x20, &mut hint).is_some());
        assert!(mem.translate(0xff0, 0x10, &mut hint).is_some());
        assert!(
            mem.translate(0xff0, 0x11, &mut hint).is_none(),
            "crosses into next region"
        );
        assert!(mem.translate(0x2000, 1, &mut hint).is_none(), "in the hole");
        assert!(mem.translate(0x10800, 0x800, &mut hint).is_some());
        assert_eq!(hint, 2);
        assert!(mem.translate(0x10800, 0x801, &mut hint).is_none());
        assert!(mem.translate(u64::MAX, 2, &mut hint).is_none(), "overflow");
    }

    #[test]
    fn pieces_cross_contiguous_regions_only() {
        let mem = two_regions();
        let mut hint = 0;
        let mut pieces = Vec::new();
        mem.for_each_piece(0xf00, 0x200, &mut hint, |_, l| pieces.push(l))
            .unwrap();
        assert_eq!(pieces, vec![0x100, 0x100]);
        assert!(mem
            .for_each_piece(0x1f00, 0x200, &mut hint, |_, _| {})
            .is_none());
    }
}
