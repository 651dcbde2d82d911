//! Descriptor chains: validated once when popped, then handed to devices as segments.
//!
//! Both ring layouts feed the same [`ChainBuilder`], so the rules live in one place:
//! - a walk visits at most as many descriptors as the queue has, plus one indirect table, so a
//!   cycle ends as [`ChainError::TooLong`] instead of hanging the device;
//! - indirect tables are not nested, are a non-zero multiple of 16 bytes, and must be
//!   negotiated; the descriptor pointing at one cannot also have `NEXT`;
//! - every buffer lies entirely inside guest memory (checked arithmetic throughout);
//! - device-writable buffers come after all device-readable ones (VIRTIO 1.2 §2.7.4.2);
//! - the readable and writable totals each fit in a `u32` (a used length is a `u32`).
//!
//! The resulting chain holds host pointers into guest memory borrowed for `'m`, so a chain
//! cannot outlive the mapping it points into.

use std::marker::PhantomData;

use smallvec::SmallVec;

use crate::memory::GuestMemory;

/// Descriptor flag: the chain continues (split: at `next`; packed: in the next slot).
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const DESC_F_INDIRECT: u16 = 4;

/// Largest indirect table we accept, in descriptors. The `next` field is 16 bits wide, so a
/// split-ring table cannot usefully be longer.
pub const MAX_INDIRECT_DESCRIPTORS: u32 = 1 << 16;

/// Why a chain was refused. The chain is completed with a used length of 0 and the queue
/// keeps working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index is not below the queue size.
    #[error("Head descriptor index {0} is out of range")]
    HeadOutOfRange(u16),
    /// A `next` index is not below the table size.
    #[error("Next descriptor index {0} is out of range")]
    NextOutOfRange(u16),
    /// The walk visited more descriptors than the queue (or table) holds: a cycle.
    #[error("Descriptor chain is longer than its table (a loop?)")]
    TooLong,
    /// The chain has more buffer segments than this queue accepts.
    #[error("Descriptor chain has more than {0} segments")]
    TooManySegments(usize),
    /// An indirect descriptor although `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    #[error("Indirect descriptor used without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// An indirect descriptor with `NEXT` set as well.
    #[error("Indirect descriptor also has the NEXT flag")]
    IndirectWithNext,
    /// An indirect descriptor inside an indirect table.
    #[error("Nested indirect descriptor table")]
    NestedIndirect,
    /// An indirect table of length 0, not a multiple of 16, or too long.
    #[error("Indirect table length {0} is invalid")]
    IndirectTableLength(u32),
    /// A buffer (or the indirect table) is not entirely inside guest memory.
    #[error("Buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("Device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The readable or writable bytes add up to more than 4 GiB - 1.
    #[error("Descriptor chain describes more than 4 GiB")]
    TooManyBytes,
}

/// One contiguous piece of a buffer, in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    addr: u64,
    ptr: *mut u8,
    len: u32,
}

impl Segment {
    /// Guest physical address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Host address of the first byte. Valid while the chain's guest memory is borrowed.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment as a `vm-memory` volatile slice, for zero-copy I/O.
    pub fn as_volatile_slice(&self) -> vm_memory::VolatileSlice<'_> {
        // SAFETY: `ptr..ptr + len` lies inside one guest-memory mapping (checked when the
        // chain was built) that stays mapped while the chain's `'m` borrow is alive, which
        // outlives `&self`.
        unsafe { vm_memory::VolatileSlice::new(self.ptr, self.len as usize) }
    }
}

pub(crate) type Segments = SmallVec<[Segment; 4]>;

/// A popped, validated descriptor chain.
///
/// Device-readable segments come first, then device-writable ones. Complete the chain with
/// [`Queue::add_used`](crate::Queue::add_used) and its [`id`](Self::id).
#[derive(Debug)]
pub struct DescriptorChain<'m> {
    id: u16,
    segs: Segments,
    first_writable: usize,
    readable: u32,
    writable: u32,
    _mem: PhantomData<&'m GuestMemory>,
}

// SAFETY: the segment pointers point into guest memory that the `'m` borrow keeps mapped; the
// chain only ever copies bytes through them, so moving it to another thread is sound.
unsafe impl Send for DescriptorChain<'_> {}

impl<'m> DescriptorChain<'m> {
    /// The id to complete the chain with: the head index (split) or buffer id (packed).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u32 {
        self.readable
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u32 {
        self.writable
    }

    /// The device-readable segments, in order.
    pub fn readable(&self) -> &[Segment] {
        self.segs.get(..self.first_writable).unwrap_or(&[])
    }

    /// The device-writable segments, in order.
    pub fn writable(&self) -> &[Segment] {
        self.segs.get(self.first_writable..).unwrap_or(&[])
    }

    /// A byte stream over the readable part.
    pub fn reader(&self) -> super::Reader<'_> {
        super::Reader::new(self.readable(), self.readable)
    }

    /// A byte stream over the writable part.
    pub fn writer(&self) -> super::Writer<'_> {
        super::Writer::new(self.writable(), self.writable)
    }

    /// Binds the chain to an owned clone of its guest memory, so it can be kept in flight
    /// (for example while a backend works on it) without borrowing anything.
    pub fn into_owned(self, mem: &'m GuestMemory) -> OwnedDescriptorChain {
        OwnedDescriptorChain {
            _mem: mem.clone(),
            chain: DescriptorChain {
                id: self.id,
                segs: self.segs,
                first_writable: self.first_writable,
                readable: self.readable,
                writable: self.writable,
                _mem: PhantomData,
            },
        }
    }
}

/// A descriptor chain that owns a handle to its guest memory (see
/// [`DescriptorChain::into_owned`]).
#[derive(Debug)]
pub struct OwnedDescriptorChain {
    // Fields drop in declaration order: `chain` (which points into the mapping) goes before
    // the handle that keeps the mapping alive.
    chain: DescriptorChain<'static>,
    _mem: GuestMemory,
}

impl OwnedDescriptorChain {
    /// The chain; its lifetime is tied to `self`, which keeps the memory mapped.
    pub fn chain(&self) -> &DescriptorChain<'_> {
        &self.chain
    }
}

/// Builds a chain from descriptors one at a time, applying the common rules.
pub(crate) struct ChainBuilder<'m, 'h> {
    mem: &'m GuestMemory,
    hint: &'h mut usize,
    max_segments: usize,
    segs: Segments,
    first_writable: Option<usize>,
    readable: u64,
    writable: u64,
}

impl<'m, 'h> ChainBuilder<'m, 'h> {
    pub(crate) fn new(mem: &'m GuestMemory, hint: &'h mut usize, max_segments: usize) -> Self {
        Self {
            mem,
            hint,
            max_segments,
            segs: Segments::new(),
            first_writable: None,
            readable: 0,
            writable: 0,
        }
    }

    /// Adds one buffer descriptor (not an indirect one).
    #[inline]
    pub(crate) fn push(&mut self, addr: u64, len: u32, write: bool) -> Result<(), ChainError> {
        if write {
            if self.first_writable.is_none() {
                self.first_writable = Some(self.segs.len());
            }
            self.writable += u64::from(len);
            if self.writable > u64::from(u32::MAX) {
                return Err(ChainError::TooManyBytes);
            }
        } else {
            if self.first_writable.is_some() {
                return Err(ChainError::ReadableAfterWritable);
            }
            self.readable += u64::from(len);
            if self.readable > u64::from(u32::MAX) {
                return Err(ChainError::TooManyBytes);
            }
        }
        if len == 0 {
            return Ok(());
        }
        if self.segs.len() >= self.max_segments {
            return Err(ChainError::TooManySegments(self.max_segments));
        }
        // Fast path: the whole buffer in one region.
        if let Some(ptr) = self.mem.translate(addr, u64::from(len), self.hint) {
            self.segs.push(Segment { addr, ptr, len });
            return Ok(());
        }
        self.push_pieces(addr, len)
    }

    #[cold]
    fn push_pieces(&mut self, addr: u64, len: u32) -> Result<(), ChainError> {
        let mut pieces: SmallVec<[(u64, *mut u8, u32); 4]> = SmallVec::new();
        let mut at = addr;
        self.mem
            .for_each_piece(addr, u64::from(len), self.hint, |ptr, l| {
                // Pieces of a `u32`-long buffer are `u32`-long.
                let l = u32::try_from(l).unwrap_or(u32::MAX);
                pieces.push((at, ptr, l));
                at = at.wrapping_add(u64::from(l));
            })
            .ok_or(ChainError::OutOfMemory { addr, len })?;
        for (addr, ptr, len) in pieces {
            if self.segs.len() >= self.max_segments {
                return Err(ChainError::TooManySegments(self.max_segments));
            }
            self.segs.push(Segment { addr, ptr, len });
        }
        Ok(())
    }

    /// Validates an indirect descriptor and returns its table as an area of `count` entries.
    pub(crate) fn indirect_table(
        &mut self,
        addr: u64,
        len: u32,
    ) -> Result<(super::raw::Area, u32), ChainError> {
        if len == 0 || len % 16 != 0 || len / 16 > MAX_INDIRECT_DESCRIPTORS {
            return Err(ChainError::IndirectTableLength(len));
        }
        // The table is read with 8-byte loads; the spec requires 16-byte alignment for split
        // descriptor tables but not for indirect ones, so an unaligned table takes the
        // (checked) error path rather than a misaligned load.
        let area = super::raw::Area::new(self.mem, addr, len as usize, 8)
            .map_err(|_| ChainError::OutOfMemory { addr, len })?;
        Ok((area, len / 16))
    }

    pub(crate) fn finish(self, id: u16) -> DescriptorChain<'m> {
        let first_writable = self.first_writable.unwrap_or(self.segs.len());
        DescriptorChain {
            id,
            first_writable,
            segs: self.segs,
            // Both totals were checked against `u32::MAX` as they grew.
            readable: u32::try_from(self.readable).unwrap_or(u32::MAX),
            writable: u32::try_from(self.writable).unwrap_or(u32::MAX),
            _mem: PhantomData,
        }
    }
}
