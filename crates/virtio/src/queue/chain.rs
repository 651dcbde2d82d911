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
//! cannot outlive the mapping it points into. Up to [`INLINE_SEGMENTS`] segments live inside
//! the chain itself, so popping a typical chain allocates nothing.

use std::marker::PhantomData;

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

/// Segments a chain holds without allocating.
pub const INLINE_SEGMENTS: usize = 4;

/// One contiguous piece of a buffer, in guest memory (16 bytes). Its lifetime is that of
/// the guest-memory borrow, so a copied segment cannot outlive the mapping it points into.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m> {
    ptr: *mut u8,
    len: u32,
    _mem: PhantomData<&'m GuestMemory>,
}

impl Segment<'_> {
    const EMPTY: Self = Segment {
        ptr: std::ptr::null_mut(),
        len: 0,
        _mem: PhantomData,
    };

    #[inline(always)]
    fn new(ptr: *mut u8, len: u32) -> Self {
        Segment {
            ptr,
            len,
            _mem: PhantomData,
        }
    }

    /// Host address of the first byte. Valid while the chain's guest memory is borrowed.
    /// [`GuestMemory::guest_address`] maps it back to a guest address.
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
        // chain was built) that stays mapped while the segment's `'m` borrow is alive, which
        // outlives `&self`.
        unsafe { vm_memory::VolatileSlice::new(self.ptr, self.len as usize) }
    }
}

/// A popped, validated descriptor chain.
///
/// Device-readable segments come first, then device-writable ones. Complete the chain with
/// [`Queue::add_used`](crate::Queue::add_used) and its [`id`](Self::id).
#[derive(Debug)]
pub struct DescriptorChain<'m> {
    inline: [Segment<'m>; INLINE_SEGMENTS],
    /// All segments, once there are more than fit inline (empty and unallocated otherwise).
    spill: Vec<Segment<'m>>,
    n: u32,
    first_writable: u32,
    readable: u32,
    writable: u32,
    id: u16,
    _mem: PhantomData<&'m GuestMemory>,
}

// SAFETY: the segment pointers point into guest memory that the `'m` borrow keeps mapped; the
// chain only ever copies bytes through them, so moving it to another thread is sound.
unsafe impl Send for DescriptorChain<'_> {}

impl Default for DescriptorChain<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> DescriptorChain<'m> {
    /// An empty chain, to be filled by [`Queue::pop_into`](crate::Queue::pop_into) (which
    /// reuses its storage, so a device can pop without initialising or moving chains).
    #[inline(always)]
    pub fn new() -> Self {
        Self {
            inline: [Segment::EMPTY; INLINE_SEGMENTS],
            spill: Vec::new(),
            n: 0,
            first_writable: u32::MAX,
            readable: 0,
            writable: 0,
            id: 0,
            _mem: PhantomData,
        }
    }

    #[inline(always)]
    fn segments(&self) -> &[Segment<'m>] {
        let n = self.n as usize;
        if n <= INLINE_SEGMENTS {
            &self.inline[..n]
        } else {
            &self.spill
        }
    }

    #[inline(always)]
    fn split(&self) -> usize {
        (self.first_writable.min(self.n)) as usize
    }

    /// The id to complete the chain with: the head index (split) or buffer id (packed).
    #[inline]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Total device-readable bytes.
    #[inline]
    pub fn readable_len(&self) -> u32 {
        self.readable
    }

    /// Total device-writable bytes.
    #[inline]
    pub fn writable_len(&self) -> u32 {
        self.writable
    }

    /// The device-readable segments, in order.
    #[inline]
    pub fn readable(&self) -> &[Segment<'m>] {
        let segs = self.segments();
        segs.get(..self.split()).unwrap_or(segs)
    }

    /// The device-writable segments, in order.
    #[inline]
    pub fn writable(&self) -> &[Segment<'m>] {
        self.segments().get(self.split()..).unwrap_or(&[])
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
            // Re-tagging the segments 'static is sound: `_mem` keeps the mapping alive for as
            // long as the owned chain exists, and `chain()` hands them out only for that long.
            chain: DescriptorChain {
                inline: self.inline.map(|g| Segment::new(g.ptr, g.len)),
                spill: self
                    .spill
                    .into_iter()
                    .map(|g| Segment::new(g.ptr, g.len))
                    .collect(),
                n: self.n,
                first_writable: self.first_writable,
                readable: self.readable,
                writable: self.writable,
                id: self.id,
                _mem: PhantomData,
            },
            _mem: mem.clone(),
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

/// Builds a chain from descriptors one at a time, applying the common rules, directly into
/// the caller's [`DescriptorChain`].
pub(crate) struct ChainBuilder<'c, 'm> {
    chain: &'c mut DescriptorChain<'m>,
    mem: &'m GuestMemory,
    /// Index of the memory region the last buffer was in (most chains stay in one).
    pub(crate) hint: usize,
    max_segments: u32,
    readable: u64,
    writable: u64,
}

impl<'c, 'm> ChainBuilder<'c, 'm> {
    #[inline(always)]
    pub(crate) fn new(
        chain: &'c mut DescriptorChain<'m>,
        mem: &'m GuestMemory,
        hint: usize,
        max_segments: u32,
    ) -> Self {
        chain.n = 0;
        chain.first_writable = u32::MAX;
        if !chain.spill.is_empty() {
            chain.spill.clear();
        }
        Self {
            chain,
            mem,
            hint,
            max_segments,
            readable: 0,
            writable: 0,
        }
    }

    /// Adds one buffer descriptor (not an indirect one).
    #[inline(always)]
    pub(crate) fn push(&mut self, addr: u64, len: u32, write: bool) -> Result<(), ChainError> {
        // The sums cannot overflow a u64 (at most 2^17 descriptors of at most 2^32 bytes);
        // `finish` checks that each fits in a u32.
        if write {
            if self.chain.first_writable == u32::MAX {
                self.chain.first_writable = self.chain.n;
            }
            self.writable += u64::from(len);
        } else {
            if self.chain.first_writable != u32::MAX {
                return Err(ChainError::ReadableAfterWritable);
            }
            self.readable += u64::from(len);
        }
        if len == 0 {
            return Ok(());
        }
        // Fast path: the whole buffer in one region, and room inline.
        match self.mem.translate(addr, u64::from(len), &mut self.hint) {
            Some(ptr) => self.add(Segment::new(ptr, len)),
            None => self.push_pieces(addr, len),
        }
    }

    #[inline(always)]
    fn add(&mut self, seg: Segment<'m>) -> Result<(), ChainError> {
        let n = self.chain.n as usize;
        if let Some(slot) = self.chain.inline.get_mut(n) {
            *slot = seg;
            self.chain.n += 1;
            return Ok(());
        }
        self.add_spilled(seg)
    }

    #[cold]
    fn add_spilled(&mut self, seg: Segment<'m>) -> Result<(), ChainError> {
        if self.chain.n >= self.max_segments {
            return Err(ChainError::TooManySegments(self.max_segments as usize));
        }
        if self.chain.spill.is_empty() {
            let inline = self.chain.inline;
            self.chain.spill.extend_from_slice(&inline);
        }
        self.chain.spill.push(seg);
        self.chain.n += 1;
        Ok(())
    }

    #[cold]
    fn push_pieces(&mut self, addr: u64, len: u32) -> Result<(), ChainError> {
        let mut pieces: Vec<Segment<'m>> = Vec::new();
        self.mem
            .for_each_piece(addr, u64::from(len), &mut self.hint, |ptr, l| {
                // Pieces of a `u32`-long buffer are `u32`-long.
                pieces.push(Segment::new(ptr, u32::try_from(l).unwrap_or(u32::MAX)));
            })
            .ok_or(ChainError::OutOfMemory { addr, len })?;
        for seg in pieces {
            if self.chain.n >= self.max_segments {
                return Err(ChainError::TooManySegments(self.max_segments as usize));
            }
            self.add(seg)?;
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
        // The table is read with 8-byte loads; Linux allocates tables with kmalloc, so an
        // unaligned one is refused (as an invalid chain) rather than read misaligned.
        let area = super::raw::Area::new(self.mem, addr, len as usize, 8)
            .map_err(|_| ChainError::OutOfMemory { addr, len })?;
        Ok((area, len / 16))
    }

    /// Completes the chain with its id and totals (each must fit a used length, a u32).
    #[inline(always)]
    pub(crate) fn finish(self, id: u16) -> Result<(), ChainError> {
        self.chain.id = id;
        self.chain.readable = u32::try_from(self.readable).map_err(|_| ChainError::TooManyBytes)?;
        self.chain.writable = u32::try_from(self.writable).map_err(|_| ChainError::TooManyBytes)?;
        Ok(())
    }
}
