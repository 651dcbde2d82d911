//! Raw, bounds-checked access to ring memory the guest shares with us.
//!
//! The rings are validated once at activation (inside one guest-memory region, correctly
//! aligned), then read and written through these small typed views. Each accessor checks its
//! index against the view's length, so a bug in index arithmetic can never reach outside the
//! ring: it yields `None` or is ignored, and the caller reports a queue error.
//!
//! Accesses are volatile or atomic, never Rust references into guest memory, because the guest
//! writes the same bytes concurrently.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::memory::GuestMemory;

/// A validated area of guest memory: `len` bytes at `ptr`, naturally aligned for its fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Area {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an `Area` is a pointer into a guest-memory mapping kept alive by the `GuestMemory`
// its owner holds; all accesses through it are volatile or atomic.
unsafe impl Send for Area {}

/// Why an area could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AreaError {
    Misaligned,
    OutOfMemory,
}

impl Area {
    /// Validates `[addr, addr + len)`: inside one region of `mem` and aligned to `align`.
    pub(crate) fn new(
        mem: &GuestMemory,
        addr: u64,
        len: usize,
        align: u64,
    ) -> Result<Self, AreaError> {
        if addr % align != 0 {
            return Err(AreaError::Misaligned);
        }
        let len64 = u64::try_from(len).map_err(|_| AreaError::OutOfMemory)?;
        let mut hint = 0;
        let ptr = mem
            .translate(addr, len64, &mut hint)
            .ok_or(AreaError::OutOfMemory)?;
        Ok(Self { ptr, len })
    }

    #[inline]
    fn at<T>(&self, off: usize) -> Option<*mut T> {
        let end = off.checked_add(std::mem::size_of::<T>())?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off + size_of::<T>() <= len`, so the pointer stays inside the validated
        // area. Alignment: areas are aligned as the ring layout requires and every caller
        // uses offsets that are multiples of `size_of::<T>()` from the area start.
        Some(unsafe { self.ptr.add(off) }.cast::<T>())
    }

    /// Loads a little-endian u16 with `Acquire` ordering (indices and flags the guest
    /// publishes after writing what they guard).
    #[inline]
    pub(crate) fn load_u16_acquire(&self, off: usize) -> Option<u16> {
        let p = self.at::<u16>(off)?;
        // SAFETY: `p` is in bounds and 2-byte aligned (see `at`); `AtomicU16` has the same
        // layout as `u16`, and all concurrent accesses to it (the guest's) are atomic stores
        // or plain aligned stores of the same width.
        Some(u16::from_le(
            unsafe { AtomicU16::from_ptr(p) }.load(Ordering::Acquire),
        ))
    }

    #[inline]
    pub(crate) fn load_u16(&self, off: usize) -> Option<u16> {
        let p = self.at::<u16>(off)?;
        // SAFETY: in bounds and aligned (see `at`); volatile because the guest may change it.
        Some(u16::from_le(unsafe { p.read_volatile() }))
    }

    #[inline]
    pub(crate) fn store_u16(&self, off: usize, v: u16) {
        if let Some(p) = self.at::<u16>(off) {
            // SAFETY: in bounds and aligned (see `at`).
            unsafe { p.write_volatile(v.to_le()) }
        }
    }

    /// Stores a u16 with `Release` ordering, publishing everything written before it.
    #[inline]
    pub(crate) fn store_u16_release(&self, off: usize, v: u16) {
        if let Some(p) = self.at::<u16>(off) {
            // SAFETY: in bounds and aligned (see `at`); see `load_u16_acquire` for atomicity.
            unsafe { AtomicU16::from_ptr(p) }.store(v.to_le(), Ordering::Release);
        }
    }

    #[inline]
    pub(crate) fn store_u32(&self, off: usize, v: u32) {
        if let Some(p) = self.at::<u32>(off) {
            // SAFETY: in bounds and aligned (see `at`).
            unsafe { p.write_volatile(v.to_le()) }
        }
    }

    /// Stores an 8-byte used-ring element `{id: u32, len: u32}` (4-byte aligned, so as two
    /// volatile u32 stores after one bounds check).
    #[inline]
    pub(crate) fn store_used_elem(&self, off: usize, id: u32, len: u32) {
        if let Some(p) = self.at::<[u32; 2]>(off) {
            let p = p.cast::<u32>();
            // SAFETY: `at` checked that all 8 bytes are in bounds; `off` is 4-byte aligned
            // (used ring base is 4-aligned and elements are 8 bytes), so both halves are.
            unsafe {
                p.write_volatile(id.to_le());
                p.add(1).write_volatile(len.to_le());
            }
        }
    }
}

/// A descriptor as read from guest memory, in either layout.
///
/// Split (`virtq_desc`): `le64 addr; le32 len; le16 flags; le16 next`.
/// Packed (`pvirtq_desc`): `le64 addr; le32 len; le16 id; le16 flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDescriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `next` (split) or buffer `id` (packed).
    pub next_or_id: u16,
    /// Descriptor flags.
    pub flags: u16,
}

impl RawDescriptor {
    /// The 16 bytes of a split-ring descriptor.
    pub fn to_split_bytes(self) -> [u8; 16] {
        self.to_bytes(self.flags, self.next_or_id)
    }

    /// The 16 bytes of a packed-ring descriptor.
    pub fn to_packed_bytes(self) -> [u8; 16] {
        self.to_bytes(self.next_or_id, self.flags)
    }

    fn to_bytes(self, at12: u16, at14: u16) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&at12.to_le_bytes());
        b[14..16].copy_from_slice(&at14.to_le_bytes());
        b
    }
}

impl Area {
    /// Reads split-ring descriptor `i` of a table in this area (`None` past the end).
    #[inline]
    pub(crate) fn split_desc(&self, i: usize) -> Option<RawDescriptor> {
        let (addr, len, flags, next) = self.desc_fields(i)?;
        Some(RawDescriptor {
            addr,
            len,
            flags,
            next_or_id: next,
        })
    }

    /// The four fields of 16-byte descriptor `i`, after one bounds check.
    #[inline(always)]
    fn desc_fields(&self, i: usize) -> Option<(u64, u32, u16, u16)> {
        let p = self.at::<[u64; 2]>(i.checked_mul(16)?)?.cast::<u8>();
        // SAFETY: `at` checked that the 16 bytes are in bounds; descriptor tables and rings
        // are 8-byte aligned (checked at set-up), so each field is naturally aligned.
        unsafe {
            Some((
                u64::from_le(p.cast::<u64>().read_volatile()),
                u32::from_le(p.add(8).cast::<u32>().read_volatile()),
                u16::from_le(p.add(12).cast::<u16>().read_volatile()),
                u16::from_le(p.add(14).cast::<u16>().read_volatile()),
            ))
        }
    }

    /// Reads packed-ring descriptor `i` of a ring or table in this area.
    #[inline]
    pub(crate) fn packed_desc(&self, i: usize) -> Option<RawDescriptor> {
        let (addr, len, id, flags) = self.desc_fields(i)?;
        Some(RawDescriptor {
            addr,
            len,
            next_or_id: id,
            flags,
        })
    }
}
