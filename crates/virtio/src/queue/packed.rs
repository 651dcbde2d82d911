//! The packed virtqueue, device side (VIRTIO 1.2 §2.8).
//!
//! One ring of descriptors that the driver marks available and the device marks used, with
//! a wrap counter on each side. Positions are tracked here as `(index, wrap)`; for event
//! arithmetic they are mapped to a linear counter modulo `2 * size` ([`lin`]).
//!
//! Batched publishing: the flags of the first used descriptor of a batch are written last
//! (with `Release`), so the driver sees the whole batch at once, as Linux vhost does.

use std::sync::atomic::{fence, Ordering};

use super::chain::{ChainBuilder, ChainError, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use super::raw::{Area, AreaError, RawDescriptor};
use super::{QueueError, RingAddresses, RingFeatures, Walked};
use crate::memory::GuestMemory;

/// Descriptor flag: available (compared with the driver's wrap counter).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: used (compared with the device's wrap counter).
pub const DESC_F_USED: u16 = 1 << 15;
/// Event suppression: notifications enabled.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression: notifications disabled.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression: notify at the descriptor given by `off_wrap` (needs EVENT_IDX).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

const FLAGS: usize = 14;

/// Position of a ring slot as a counter modulo `2 * size`: the first lap (wrap counter 1,
/// the initial value) is `0..size`, the second `size..2 * size`.
fn lin(idx: u16, wrap: bool, size: u16) -> u32 {
    u32::from(idx) + if wrap { 0 } else { u32::from(size) }
}

#[derive(Debug)]
pub(crate) struct PackedRing {
    ring: Area,
    driver: Area,
    device: Area,
    size: u16,
    features: RingFeatures,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// Ring slots each buffer id took when popped, to advance `next_used` when it is used
    /// (0 means 1: the table is allocated zeroed, which costs nothing until touched).
    slots_by_id: Vec<u16>,
    /// The first used descriptor of the current batch, whose flags are written at publish.
    batch_head: Option<(u16, u16)>,
    signalled: Option<u32>,
    notifications_enabled: bool,
}

impl PackedRing {
    pub(crate) fn new(
        mem: &GuestMemory,
        addrs: RingAddresses,
        size: u16,
        features: RingFeatures,
        (next_avail, avail_wrap): (u16, bool),
        (next_used, used_wrap): (u16, bool),
    ) -> Result<Self, QueueError> {
        if size == 0 || size > super::MAX_QUEUE_SIZE {
            return Err(QueueError::InvalidSize(size));
        }
        if next_avail >= size || next_used >= size {
            return Err(QueueError::InvalidState);
        }
        let area = |addr, len, align, what| {
            Area::new(mem, addr, len, align).map_err(|e| match e {
                AreaError::Misaligned => QueueError::Misaligned { what, addr },
                AreaError::OutOfMemory => QueueError::RingOutOfMemory { what, addr },
            })
        };
        Ok(Self {
            ring: area(addrs.desc, 16 * usize::from(size), 16, "descriptor ring")?,
            driver: area(addrs.driver, 4, 4, "driver event suppression")?,
            device: area(addrs.device, 4, 4, "device event suppression")?,
            size,
            features,
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
            slots_by_id: vec![0; 1 << 16],
            batch_head: None,
            signalled: Some(lin(next_used, used_wrap, size)),
            notifications_enabled: true,
        })
    }

    pub(crate) fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    pub(crate) fn next_used(&self) -> (u16, bool) {
        (self.next_used, self.used_wrap)
    }

    fn is_avail(&self, flags: u16, wrap: bool) -> bool {
        (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
    }

    #[inline]
    fn advance(&self, idx: &mut u16, wrap: &mut bool, by: u16) {
        let next = u32::from(*idx) + u32::from(by);
        if next >= u32::from(self.size) {
            *idx = u16::try_from(next - u32::from(self.size)).unwrap_or(0);
            *wrap = !*wrap;
        } else {
            *idx = u16::try_from(next).unwrap_or(0);
        }
    }

    #[inline]
    pub(crate) fn pop(
        &mut self,
        builder: &mut ChainBuilder<'_, '_>,
    ) -> Result<Option<Walked>, QueueError> {
        let off = 16 * usize::from(self.next_avail);
        let flags = self
            .ring
            .load_u16_acquire(off + FLAGS)
            .ok_or(QueueError::Internal)?;
        if !self.is_avail(flags, self.avail_wrap) {
            return Ok(None);
        }
        let (mut idx, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut error = None;
        let mut slots: u16 = 0;
        let id = loop {
            if slots == self.size {
                // No descriptor without NEXT in a whole lap: the ring itself is broken.
                return Err(QueueError::UnterminatedChain);
            }
            let d = self
                .ring
                .packed_desc(usize::from(idx))
                .ok_or(QueueError::Internal)?;
            slots += 1;
            self.advance(&mut idx, &mut wrap, 1);
            if error.is_none() {
                error = self.add_desc(builder, &d).err();
            }
            if d.flags & DESC_F_NEXT == 0 {
                break d.next_or_id;
            }
        };
        (self.next_avail, self.avail_wrap) = (idx, wrap);
        if let Some(s) = self.slots_by_id.get_mut(usize::from(id)) {
            *s = slots;
        }
        Ok(Some((id, error.map_or(Ok(()), Err))))
    }

    #[inline]
    fn add_desc(&self, b: &mut ChainBuilder<'_, '_>, d: &RawDescriptor) -> Result<(), ChainError> {
        if d.flags & DESC_F_INDIRECT == 0 {
            return b.push(d.addr, d.len, d.flags & DESC_F_WRITE != 0);
        }
        if !self.features.indirect {
            return Err(ChainError::IndirectNotNegotiated);
        }
        if d.flags & DESC_F_NEXT != 0 {
            return Err(ChainError::IndirectWithNext);
        }
        let (table, count) = b.indirect_table(d.addr, d.len)?;
        // Every entry of a packed indirect table is part of the chain (§2.8.7); NEXT is ignored.
        for i in 0..count as usize {
            let e = table.packed_desc(i).ok_or(ChainError::TooLong)?;
            if e.flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::NestedIndirect);
            }
            b.push(e.addr, e.len, e.flags & DESC_F_WRITE != 0)?;
        }
        Ok(())
    }

    /// The ring descriptors of the chain with buffer `id` just popped from `start` (for the
    /// inflight log; the driver leaves them alone until the chain is used).
    pub(crate) fn popped_descriptors(
        &self,
        start: (u16, bool),
        id: u16,
        out: &mut Vec<RawDescriptor>,
    ) {
        out.clear();
        let slots = self.slots_by_id.get(usize::from(id)).copied().unwrap_or(1);
        let (mut idx, mut wrap) = start;
        for _ in 0..slots.max(1) {
            if let Some(d) = self.ring.packed_desc(usize::from(idx)) {
                out.push(d);
            }
            self.advance(&mut idx, &mut wrap, 1);
        }
    }

    /// Walks a chain logged before a restart (its ring descriptors, from the inflight log)
    /// into `b`; its completion will move the used position by as many slots.
    pub(crate) fn resubmit(
        &mut self,
        b: &mut ChainBuilder<'_, '_>,
        id: u16,
        descs: &[RawDescriptor],
    ) -> Result<(), ChainError> {
        if let Some(s) = self.slots_by_id.get_mut(usize::from(id)) {
            *s = u16::try_from(descs.len()).unwrap_or(u16::MAX);
        }
        for d in descs {
            self.add_desc(b, d)?;
        }
        Ok(())
    }

    /// Writes a used descriptor; its flags wait for `publish` if it opens the batch.
    #[inline]
    pub(crate) fn add_used(&mut self, id: u16, len: u32) {
        let off = 16 * usize::from(self.next_used);
        let mut flags = if self.used_wrap {
            DESC_F_AVAIL | DESC_F_USED
        } else {
            0
        };
        if len > 0 {
            flags |= DESC_F_WRITE;
        }
        self.ring.store_u32(off + 8, len);
        self.ring.store_u16(off + 12, id);
        if self.batch_head.is_none() {
            self.batch_head = Some((self.next_used, flags));
        } else {
            self.ring.store_u16_release(off + FLAGS, flags);
        }
        let slots = self
            .slots_by_id
            .get(usize::from(id))
            .copied()
            .unwrap_or(1)
            .max(1);
        let (mut idx, mut wrap) = (self.next_used, self.used_wrap);
        self.advance(&mut idx, &mut wrap, slots);
        (self.next_used, self.used_wrap) = (idx, wrap);
    }

    /// Publishes the batch and says whether the driver wants an interrupt (§2.8.10, §2.8.21).
    pub(crate) fn publish(&mut self) -> bool {
        let Some((slot, flags)) = self.batch_head.take() else {
            return false;
        };
        self.ring
            .store_u16_release(16 * usize::from(slot) + FLAGS, flags);
        fence(Ordering::SeqCst);
        let new = lin(self.next_used, self.used_wrap, self.size);
        let old = self.signalled.replace(new);
        let off_wrap = self.driver.load_u16(0).unwrap_or(0);
        match self.driver.load_u16(2).unwrap_or(0) & 3 {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if self.features.event_idx => {
                let Some(old) = old else { return true };
                let m = 2 * u32::from(self.size);
                let event = lin(off_wrap & 0x7fff, off_wrap & 0x8000 != 0, self.size) % m;
                // Notify if the event position lies in [old, new), modulo 2 * size.
                (event + m - old) % m < (new + m - old) % m
            }
            _ => true,
        }
    }

    fn write_device_event(&self, flags: u16) {
        if flags == RING_EVENT_FLAGS_DESC {
            let off_wrap = self.next_avail | if self.avail_wrap { 0x8000 } else { 0 };
            self.device.store_u16(0, off_wrap);
        }
        self.device.store_u16_release(2, flags);
    }

    pub(crate) fn disable_notification(&mut self) {
        if self.notifications_enabled {
            self.notifications_enabled = false;
            self.write_device_event(RING_EVENT_FLAGS_DISABLE);
        }
    }

    pub(crate) fn enable_notification(&mut self) -> Result<bool, QueueError> {
        self.notifications_enabled = true;
        let mode = if self.features.event_idx {
            RING_EVENT_FLAGS_DESC
        } else {
            RING_EVENT_FLAGS_ENABLE
        };
        self.write_device_event(mode);
        fence(Ordering::SeqCst);
        self.has_available()
    }

    pub(crate) fn has_available(&mut self) -> Result<bool, QueueError> {
        let off = 16 * usize::from(self.next_avail);
        let flags = self
            .ring
            .load_u16_acquire(off + FLAGS)
            .ok_or(QueueError::Internal)?;
        Ok(self.is_avail(flags, self.avail_wrap))
    }

    /// With EVENT_IDX and the driver asking for an event at a descriptor (the DESC mode, which
    /// Linux keeps at the position it has consumed up to): that `off_wrap` and our used
    /// position, both with the wrap counter in bit 15, when the first lies behind the second.
    /// The driver then has not taken completions we published.
    pub(crate) fn driver_behind(&self) -> Option<(u16, u16)> {
        if !self.features.event_idx || self.driver.load_u16(2)? & 3 != RING_EVENT_FLAGS_DESC {
            return None;
        }
        let off_wrap = self.driver.load_u16(0)?;
        let m = 2 * u32::from(self.size);
        let event = lin(off_wrap & 0x7fff, off_wrap & 0x8000 != 0, self.size) % m;
        let used = lin(self.next_used, self.used_wrap, self.size);
        let behind = (used + m - event) % m;
        let used_wrap = self.next_used | if self.used_wrap { 0x8000 } else { 0 };
        (behind > 0 && behind <= u32::from(self.size)).then_some((off_wrap, used_wrap))
    }

    pub(crate) fn history_known(&self) -> bool {
        self.signalled.is_some()
    }

    pub(crate) fn forget_signalled(&mut self) {
        self.signalled = None;
    }
}
