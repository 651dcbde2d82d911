//! The split virtqueue, device side (VIRTIO 1.2 §2.7).
//!
//! Indices live here, on the host side: `next_avail` and `next_used` are never read back
//! from guest memory, so a guest rewriting `used.idx` cannot confuse the device. The avail
//! index is read once per batch (`cached_avail`) with `Acquire`, and the used index is stored
//! once per batch with `Release`.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use super::chain::{ChainBuilder, ChainError, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use super::raw::{Area, AreaError};
use super::{QueueError, RingAddresses, RingFeatures, Walked};
use crate::memory::GuestMemory;

/// `avail.flags`: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device does not want notifications.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

const IDX: usize = 2;
const RING: usize = 4;

/// Bytes of each split-ring area for a queue of `size` entries.
pub fn split_ring_sizes(size: u16) -> (usize, usize, usize) {
    let n = usize::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

#[derive(Debug)]
pub(crate) struct SplitRing {
    desc: Area,
    avail: Area,
    used: Area,
    size: u16,
    features: RingFeatures,
    next_avail: Wrapping<u16>,
    cached_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    signalled_used: Option<Wrapping<u16>>,
    notifications_enabled: bool,
}

impl SplitRing {
    pub(crate) fn new(
        mem: &GuestMemory,
        addrs: RingAddresses,
        size: u16,
        features: RingFeatures,
        next_avail: u16,
        next_used: u16,
    ) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > super::MAX_QUEUE_SIZE {
            return Err(QueueError::InvalidSize(size));
        }
        let (d, a, u) = split_ring_sizes(size);
        let area = |addr, len, align, what| {
            Area::new(mem, addr, len, align).map_err(|e| match e {
                AreaError::Misaligned => QueueError::Misaligned { what, addr },
                AreaError::OutOfMemory => QueueError::RingOutOfMemory { what, addr },
            })
        };
        Ok(Self {
            desc: area(addrs.desc, d, 16, "descriptor table")?,
            avail: area(addrs.driver, a, 2, "available ring")?,
            used: area(addrs.device, u, 4, "used ring")?,
            size,
            features,
            next_avail: Wrapping(next_avail),
            cached_avail: Wrapping(next_avail),
            next_used: Wrapping(next_used),
            signalled_used: Some(Wrapping(next_used)),
            notifications_enabled: true,
        })
    }

    pub(crate) fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    pub(crate) fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Reads the driver's avail index; an index that runs more than the queue size ahead of
    /// ours is a broken queue, not a reason to loop.
    #[inline]
    fn load_avail_idx(&self) -> Result<Wrapping<u16>, QueueError> {
        let idx = Wrapping(
            self.avail
                .load_u16_acquire(IDX)
                .ok_or(QueueError::Internal)?,
        );
        if (idx - self.next_avail).0 > self.size {
            return Err(QueueError::AvailIndexAhead {
                avail: idx.0,
                next: self.next_avail.0,
            });
        }
        Ok(idx)
    }

    /// Walks the next available chain into `b`; returns its head and whether it is valid.
    #[inline]
    pub(crate) fn pop(
        &mut self,
        b: &mut ChainBuilder<'_, '_>,
    ) -> Result<Option<Walked>, QueueError> {
        if self.next_avail == self.cached_avail {
            self.cached_avail = self.load_avail_idx()?;
            if self.next_avail == self.cached_avail {
                return Ok(None);
            }
        }
        let slot = usize::from(self.next_avail.0 & (self.size - 1));
        let head = self
            .avail
            .load_u16(RING + 2 * slot)
            .ok_or(QueueError::Internal)?;
        self.next_avail += 1;
        Ok(Some((head, self.walk(b, head))))
    }

    #[inline]
    pub(crate) fn walk(&self, b: &mut ChainBuilder<'_, '_>, head: u16) -> Result<(), ChainError> {
        if head >= self.size {
            return Err(ChainError::HeadOutOfRange(head));
        }
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut ttl = table_len;
        let mut indirect = false;
        let mut i = head;
        loop {
            if ttl == 0 {
                return Err(ChainError::TooLong);
            }
            ttl -= 1;
            let d = table
                .split_desc(usize::from(i))
                .ok_or(ChainError::NextOutOfRange(i))?;
            if d.flags & DESC_F_INDIRECT != 0 {
                if indirect {
                    return Err(ChainError::NestedIndirect);
                }
                if !self.features.indirect {
                    return Err(ChainError::IndirectNotNegotiated);
                }
                if d.flags & DESC_F_NEXT != 0 {
                    return Err(ChainError::IndirectWithNext);
                }
                (table, table_len) = b.indirect_table(d.addr, d.len)?;
                ttl = table_len;
                indirect = true;
                i = 0;
                continue;
            }
            b.push(d.addr, d.len, d.flags & DESC_F_WRITE != 0)?;
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            i = d.next_or_id;
            if u32::from(i) >= table_len {
                return Err(ChainError::NextOutOfRange(i));
            }
        }
    }

    /// Writes a used element without publishing it.
    #[inline]
    pub(crate) fn add_used(&mut self, id: u16, len: u32) {
        let slot = usize::from(self.next_used.0 & (self.size - 1));
        self.used
            .store_used_elem(RING + 8 * slot, u32::from(id), len);
        self.next_used += 1;
    }

    /// Publishes the used index and says whether the driver wants an interrupt for the
    /// elements published since the last interrupt (§2.7.7.2 / §2.7.10).
    pub(crate) fn publish(&mut self) -> bool {
        self.used.store_u16_release(IDX, self.next_used.0);
        // The store above must be visible before we read the driver's suppression state;
        // otherwise we could miss a driver that re-enabled interrupts in between.
        fence(Ordering::SeqCst);
        if self.features.event_idx {
            let new = self.next_used;
            let old = self.signalled_used.replace(new);
            let Some(old) = old else { return true };
            let used_event = Wrapping(
                self.avail
                    .load_u16(RING + 2 * usize::from(self.size))
                    .unwrap_or(0),
            );
            // Linux's vring_need_event: notify if used_event lies in [old, new).
            (new - used_event - Wrapping(1)) < (new - old)
        } else {
            let flags = self.avail.load_u16(0).unwrap_or(0);
            flags & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    pub(crate) fn disable_notification(&mut self) {
        if !self.notifications_enabled {
            return;
        }
        self.notifications_enabled = false;
        if !self.features.event_idx {
            self.used.store_u16(0, VRING_USED_F_NO_NOTIFY);
        }
    }

    /// Re-enables driver notifications and re-checks the ring, so a buffer made available
    /// just before the re-enable is never missed. Returns whether buffers are waiting.
    pub(crate) fn enable_notification(&mut self) -> Result<bool, QueueError> {
        self.notifications_enabled = true;
        if self.features.event_idx {
            let off = RING + 8 * usize::from(self.size);
            self.used.store_u16(off, self.next_avail.0);
        } else {
            self.used.store_u16(0, 0);
        }
        fence(Ordering::SeqCst);
        self.cached_avail = self.load_avail_idx()?;
        Ok(self.cached_avail != self.next_avail)
    }

    /// Whether the driver has made buffers available that we have not popped.
    pub(crate) fn has_available(&mut self) -> Result<bool, QueueError> {
        if self.cached_avail != self.next_avail {
            return Ok(true);
        }
        self.cached_avail = self.load_avail_idx()?;
        Ok(self.cached_avail != self.next_avail)
    }

    /// With EVENT_IDX: the driver's `used_event` and our published used index when the first
    /// stays behind the second: the driver has not taken completions we published. 0 is
    /// Linux's "callbacks off" marker, not a driver behind.
    pub(crate) fn driver_behind(&self) -> Option<(u16, u16)> {
        if !self.features.event_idx {
            return None;
        }
        let event = self.avail.load_u16(RING + 2 * usize::from(self.size))?;
        let used = self.next_used.0;
        let behind = event != used && event != 0 && used.wrapping_sub(event) <= self.size;
        behind.then_some((event, used))
    }

    pub(crate) fn history_known(&self) -> bool {
        self.signalled_used.is_some()
    }

    /// Forgets the interrupt history, so the next publish interrupts (after restore).
    pub(crate) fn forget_signalled(&mut self) {
        self.signalled_used = None;
    }
}
