//! The virtqueue engine: one API over split and packed rings.
//!
//! A device sees the same [`Queue`] whichever layout the driver negotiated. A device thread
//! serves a queue like this (the driver here is the crate's mock, standing in for a guest):
//!
//! ```
//! # #[cfg(feature = "test-utils")] {
//! use std::io::Write;
//! use oxio_virtio::mock::{Buf, MockDriver, Placement};
//! use oxio_virtio::{DescriptorChain, RingFeatures};
//!
//! let features = RingFeatures { event_idx: true, indirect: true, ..Default::default() };
//! let mut driver = MockDriver::with_memory(256, features, 1 << 20);
//! let buf = driver.alloc(64).unwrap();
//! driver.add_chain(&[Buf::w(buf, 64)], Placement::Indirect).unwrap();
//! driver.publish();
//!
//! let mem = driver.mem().clone();
//! let mut queue = driver.device_queue();
//! let mut chain = DescriptorChain::new();
//! loop {
//!     queue.disable_notification();
//!     while queue.pop_into(&mem, &mut chain)? {       // many chains per wake-up
//!         let mut w = chain.writer();
//!         w.write_all(b"hello")?;
//!         queue.add_used(chain.id(), w.bytes_written()); // writes the element only
//!     }
//!     if queue.publish_used() {                       // one index store, one decision
//!         // interrupt.signal_used(index)?;
//!     }
//!     if !queue.enable_notification(&mem)? {          // re-checks: no lost kick
//!         break;
//!     }
//! }
//! assert_eq!(driver.used(), vec![(0, 5)]);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Malformed chains never reach the device: [`Queue::pop`] completes them with a used length
//! of 0, counts them in [`QueueStats`], and moves on. Only a broken ring itself (an avail index
//! running ahead, an unterminated packed chain) is a [`QueueError`].

mod chain;
pub mod inflight;
mod notify;
mod packed;
pub(crate) mod raw;
mod rw;
mod split;
mod state;

pub use chain::{
    ChainError, DescriptorChain, OwnedDescriptorChain, Segment, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_WRITE, MAX_INDIRECT_DESCRIPTORS,
};
pub use inflight::{InflightError, InflightRecovery, InflightRegion};
pub use notify::NotificationData;
pub use packed::{
    DESC_F_AVAIL, DESC_F_USED, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
};
pub use raw::RawDescriptor;
pub use rw::{Reader, Writer};
pub use split::{split_ring_sizes, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
pub use state::QueueState;

use std::collections::VecDeque;

use crate::memory::GuestMemory;
use chain::ChainBuilder;
use inflight::Inflight;
use packed::PackedRing;
use split::SplitRing;

/// Largest queue size the specification allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Default cap on segments per chain; see [`Queue::set_max_segments`].
pub const DEFAULT_MAX_SEGMENTS: u32 = 1024;

/// Errors that leave the queue unusable until the driver resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is not ready or its layout is invalid.
    #[error("Queue is not ready")]
    NotReady,
    /// The size is zero, too large, or (split) not a power of two.
    #[error("Invalid queue size {0}")]
    InvalidSize(u16),
    /// A ring area is not aligned as the specification requires.
    #[error("The {what} at {addr:#x} is misaligned")]
    Misaligned {
        /// Which area.
        what: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// A ring area is not inside one region of guest memory.
    #[error("The {what} at {addr:#x} is not inside one guest memory region")]
    RingOutOfMemory {
        /// Which area.
        what: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// The driver's avail index is more than the queue size ahead of ours.
    #[error("Driver's avail index {avail} runs more than the queue size ahead of {next}")]
    AvailIndexAhead {
        /// The driver's index.
        avail: u16,
        /// The device's next index.
        next: u16,
    },
    /// A packed chain without an end within a whole lap of the ring.
    #[error("Packed descriptor chain never ends")]
    UnterminatedChain,
    /// A saved state does not fit the queue.
    #[error("Saved queue state is invalid")]
    InvalidState,
    /// An index computation left the ring (a bug; reported rather than trusted).
    #[error("Internal ring index error")]
    Internal,
}

/// Ring features negotiated with the driver that change how the queue behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingFeatures {
    /// `VIRTIO_F_RING_PACKED`.
    pub packed: bool,
    /// `VIRTIO_F_INDIRECT_DESC`.
    pub indirect: bool,
    /// `VIRTIO_F_EVENT_IDX`.
    pub event_idx: bool,
    /// `VIRTIO_F_IN_ORDER`.
    pub in_order: bool,
}

impl RingFeatures {
    /// Extracts the ring features from a negotiated feature word.
    pub fn from_bits(features: u64) -> Self {
        use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED};
        use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
        let has = |bit: u32| features & (1u64 << bit) != 0;
        Self {
            packed: has(VIRTIO_F_RING_PACKED),
            indirect: has(VIRTIO_RING_F_INDIRECT_DESC),
            event_idx: has(VIRTIO_RING_F_EVENT_IDX),
            in_order: has(VIRTIO_F_IN_ORDER),
        }
    }
}

/// Guest addresses of the three ring areas (the names of virtio-mmio's registers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingAddresses {
    /// Descriptor table (split) or descriptor ring (packed).
    pub desc: u64,
    /// Available ring (split) or driver event suppression (packed).
    pub driver: u64,
    /// Used ring (split) or device event suppression (packed).
    pub device: u64,
}

/// Counters a device can report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains handed to the device.
    pub popped: u64,
    /// Malformed chains completed with length 0.
    pub invalid_chains: u64,
    /// Used elements written.
    pub used: u64,
    /// Batches published.
    pub published: u64,
    /// Publishes after which the driver wanted an interrupt.
    pub interrupts: u64,
}

/// What a ring walk produced.
#[derive(Debug)]
pub enum Popped<'m> {
    /// A valid chain.
    Chain(DescriptorChain<'m>),
    /// A malformed chain: complete it with `id` (the queue's `pop` does so itself).
    Invalid {
        /// The id to complete it with.
        id: u16,
        /// What was wrong.
        error: ChainError,
    },
}

/// A walked chain: its id, and whether it was valid.
pub(crate) type Walked = (u16, Result<(), ChainError>);

#[derive(Debug)]
enum Ring {
    Split(SplitRing),
    Packed(PackedRing),
}

/// Completions held back so that an `IN_ORDER` queue uses buffers in the order they were
/// made available, whatever order the device finishes them in.
#[derive(Debug, Default)]
struct InOrder {
    /// Ids in the order they were popped.
    popped: VecDeque<u16>,
    /// For each id: 0 if not completed, else its used length + 1. Allocated zeroed, so
    /// setting up an in-order queue costs nothing until ids are touched.
    done: Vec<u64>,
}

/// A virtqueue, device side. See the [module documentation](self).
#[derive(Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    addrs: RingAddresses,
    features: RingFeatures,
    max_segments: u32,
    /// Where the rings start after (re)activation: restored or initial indices.
    start: QueueState,
    ring: Option<Ring>,
    mem: Option<GuestMemory>,
    hint: usize,
    in_order: InOrder,
    /// Completions made before the rings were activated (after a restore), written at
    /// activation. At most one per ring entry.
    early_used: Vec<(u16, u32)>,
    /// Whether we know what the driver was last told: true for a fresh queue, false after
    /// a restore or a rebase, when the next publish must interrupt to be safe.
    history_known: bool,
    /// `stats.used` at the last publish.
    used_at_publish: u64,
    stats: QueueStats,
    /// vhost-user inflight log, if the transport set one ([`Queue::set_inflight`]).
    inflight: Option<Box<Inflight>>,
}

impl Queue {
    /// A queue that accepts sizes up to `max_size` (which must be a power of two, at most
    /// 32768); its size starts at `max_size`.
    pub fn new(max_size: u16) -> Self {
        let max_size = max_size.clamp(1, MAX_QUEUE_SIZE);
        Self {
            max_size,
            size: max_size,
            ready: false,
            addrs: RingAddresses::default(),
            features: RingFeatures::default(),
            max_segments: DEFAULT_MAX_SEGMENTS,
            start: QueueState::default(),
            ring: None,
            mem: None,
            hint: 0,
            in_order: InOrder::default(),
            early_used: Vec::new(),
            history_known: true,
            used_at_publish: 0,
            stats: QueueStats::default(),
            inflight: None,
        }
    }

    /// Largest size the device accepts.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Current size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the size the driver chose (takes effect at activation).
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
        self.ring = None;
    }

    /// Whether the driver marked the queue ready.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Marks the queue ready or not.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
        if !ready {
            self.ring = None;
        }
    }

    /// Ring addresses.
    pub fn addresses(&self) -> RingAddresses {
        self.addrs
    }

    /// Sets the ring addresses (takes effect at activation).
    pub fn set_addresses(&mut self, addrs: RingAddresses) {
        self.addrs = addrs;
        self.ring = None;
    }

    /// Negotiated ring features.
    pub fn features(&self) -> RingFeatures {
        self.features
    }

    /// Sets the negotiated ring features (takes effect at activation).
    pub fn set_features(&mut self, features: RingFeatures) {
        self.features = features;
        self.ring = None;
    }

    /// Caps the segments one chain may have (default [`DEFAULT_MAX_SEGMENTS`]); longer
    /// chains are completed as invalid. Bounds the memory a hostile driver can make us use.
    pub fn set_max_segments(&mut self, max: u32) {
        self.max_segments = max.max(1);
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Validates the layout against `mem` and starts the rings at the saved (or initial)
    /// indices. Called by `pop` on first use; call it early to report errors early.
    pub fn activate(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if self.size == 0 || self.size > self.max_size {
            return Err(QueueError::InvalidSize(self.size));
        }
        let s = self.start;
        let ring = if self.features.packed {
            Ring::Packed(PackedRing::new(
                mem,
                self.addrs,
                self.size,
                self.features,
                (s.next_avail, s.avail_wrap),
                (s.next_used, s.used_wrap),
            )?)
        } else {
            Ring::Split(SplitRing::new(
                mem,
                self.addrs,
                self.size,
                self.features,
                s.next_avail,
                s.next_used,
            )?)
        };
        self.ring = Some(ring);
        if !self.history_known {
            self.force_next_interrupt();
        }
        self.mem = Some(mem.clone());
        self.in_order = InOrder::default();
        if self.features.in_order {
            self.in_order.done = vec![0; 1 << 16];
        }
        for (id, len) in std::mem::take(&mut self.early_used) {
            self.write_used_unlogged(id, len); // logged when they were added
        }
        Ok(())
    }

    #[inline(always)]
    fn ring(&mut self, mem: &GuestMemory) -> Result<&mut Ring, QueueError> {
        if self.ring.is_none() || !matches!(&self.mem, Some(m) if m.same_as(mem)) {
            self.reactivate(mem)?;
        }
        self.ring.as_mut().ok_or(QueueError::NotReady)
    }

    /// First use, or the guest memory map changed: rebuilds the ring views from the current
    /// indices so no buffer is lost.
    #[cold]
    fn reactivate(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        if let Some(ring) = &self.ring {
            self.start = self.state();
            self.history_known = match ring {
                Ring::Split(r) => r.history_known(),
                Ring::Packed(r) => r.history_known(),
            };
        }
        self.activate(mem)
    }

    /// Pops the next valid chain, completing malformed ones (used length 0) on the way.
    #[inline]
    pub fn pop<'m>(
        &mut self,
        mem: &'m GuestMemory,
    ) -> Result<Option<DescriptorChain<'m>>, QueueError> {
        let mut chain = DescriptorChain::new();
        Ok(self.pop_into(mem, &mut chain)?.then_some(chain))
    }

    /// Like [`pop`](Self::pop), but refills `chain` in place; returns whether it did. The
    /// fastest way to serve a queue: no chain is initialised, moved or allocated.
    #[inline]
    pub fn pop_into<'m>(
        &mut self,
        mem: &'m GuestMemory,
        chain: &mut DescriptorChain<'m>,
    ) -> Result<bool, QueueError> {
        loop {
            let mut b = ChainBuilder::new(chain, mem, self.hint, self.max_segments);
            let Some((id, walked)) = self.walk_next(mem, &mut b)? else {
                return Ok(false);
            };
            match walked.and_then(|()| b.finish(id)) {
                Ok(()) => return Ok(true),
                Err(error) => {
                    tracing::debug!(id, %error, "completing malformed descriptor chain");
                    self.stats.invalid_chains += 1;
                    self.add_used(id, 0);
                }
            }
        }
    }

    /// Pops the next chain, valid or not; the caller completes invalid ones.
    pub fn pop_raw<'m>(&mut self, mem: &'m GuestMemory) -> Result<Option<Popped<'m>>, QueueError> {
        let mut chain = DescriptorChain::new();
        let mut b = ChainBuilder::new(&mut chain, mem, self.hint, self.max_segments);
        let Some((id, walked)) = self.walk_next(mem, &mut b)? else {
            return Ok(None);
        };
        Ok(Some(match walked.and_then(|()| b.finish(id)) {
            Ok(()) => Popped::Chain(chain),
            Err(error) => Popped::Invalid { id, error },
        }))
    }

    /// Walks the next available chain into `b`, keeping the statistics and in-order book.
    #[inline]
    fn walk_next(
        &mut self,
        mem: &GuestMemory,
        b: &mut ChainBuilder<'_, '_>,
    ) -> Result<Option<Walked>, QueueError> {
        if self.inflight.is_some() {
            return self.walk_next_logged(mem, b);
        }
        let walked = match self.ring(mem)? {
            Ring::Split(r) => r.pop(b),
            Ring::Packed(r) => r.pop(b),
        }?;
        self.hint = b.hint;
        if let Some((id, _)) = walked {
            self.count_popped(id);
        }
        Ok(walked)
    }

    #[inline]
    fn count_popped(&mut self, id: u16) {
        self.stats.popped += 1;
        if self.features.in_order {
            self.in_order.popped.push_back(id);
        }
    }

    /// [`walk_next`](Self::walk_next) with an inflight log: resubmitted chains first, then
    /// the ring, logging each pop.
    #[cold]
    fn walk_next_logged(
        &mut self,
        mem: &GuestMemory,
        b: &mut ChainBuilder<'_, '_>,
    ) -> Result<Option<Walked>, QueueError> {
        let Some(mut log) = self.inflight.take() else {
            return Ok(None);
        };
        let walked = self.walk_logged(mem, b, &mut log);
        self.inflight = Some(log);
        let walked = walked?;
        self.hint = b.hint;
        if let Some((id, _)) = walked {
            self.count_popped(id);
        }
        Ok(walked)
    }

    fn walk_logged(
        &mut self,
        mem: &GuestMemory,
        b: &mut ChainBuilder<'_, '_>,
        log: &mut Inflight,
    ) -> Result<Option<Walked>, QueueError> {
        let ring = self.ring(mem)?;
        if let Some(h) = log.resubmit.pop_front() {
            return Ok(Some(match ring {
                Ring::Split(r) => (h, r.walk(b, h)),
                Ring::Packed(r) => {
                    let mut descs = log.scratch();
                    let walked = match log.packed_chain(h, &mut descs) {
                        Some(id) => {
                            log.packed_resubmitted(id, h);
                            (id, r.resubmit(b, id, &descs))
                        }
                        // Checked at recovery; only a concurrent writer could get here.
                        None => return Err(QueueError::InvalidState),
                    };
                    log.give_scratch(descs);
                    walked
                }
            }));
        }
        match ring {
            Ring::Split(r) => {
                let walked = r.pop(b)?;
                if let Some((head, _)) = walked {
                    log.split_popped(head);
                }
                Ok(walked)
            }
            Ring::Packed(r) => {
                let start = r.next_avail();
                let walked = r.pop(b)?;
                if let Some((id, _)) = walked {
                    let mut descs = log.scratch();
                    r.popped_descriptors(start, id, &mut descs);
                    log.packed_popped(id, descs);
                }
                Ok(walked)
            }
        }
    }

    /// Records that the chain `id` is done and `len` bytes were written into it. The element
    /// is written now but only published by [`publish_used`](Self::publish_used).
    #[inline]
    pub fn add_used(&mut self, id: u16, len: u32) {
        if !self.features.in_order && self.inflight.is_none() {
            if let Some(Ring::Split(r)) = &mut self.ring {
                self.stats.used += 1;
                r.add_used(id, len);
                return;
            }
        }
        self.add_used_slow(id, len);
    }

    fn add_used_slow(&mut self, id: u16, len: u32) {
        if self.features.in_order {
            self.add_used_in_order(id, len);
        } else {
            self.write_used(id, len);
        }
    }

    #[inline]
    fn write_used(&mut self, id: u16, len: u32) {
        if let Some(log) = &mut self.inflight {
            log.used(id);
        }
        self.write_used_unlogged(id, len);
    }

    #[inline]
    fn write_used_unlogged(&mut self, id: u16, len: u32) {
        self.stats.used += 1;
        match &mut self.ring {
            Some(Ring::Split(r)) => r.add_used(id, len),
            Some(Ring::Packed(r)) => r.add_used(id, len),
            None if self.early_used.len() < usize::from(self.size) => {
                self.early_used.push((id, len));
            }
            None => tracing::warn!(id, "dropping a completion for an inactive queue"),
        }
    }

    fn add_used_in_order(&mut self, id: u16, len: u32) {
        if let Some(slot) = self.in_order.done.get_mut(usize::from(id)) {
            *slot = u64::from(len) + 1;
        }
        while let Some(&front) = self.in_order.popped.front() {
            let Some(slot) = self.in_order.done.get_mut(usize::from(front)) else {
                break;
            };
            // 0 means "not completed yet"; otherwise the length + 1.
            let Some(len) = slot.checked_sub(1).and_then(|l| u32::try_from(l).ok()) else {
                break;
            };
            *slot = 0;
            self.in_order.popped.pop_front();
            self.write_used(front, len);
        }
    }

    /// Publishes the used elements written since the last call (one index store) and says
    /// whether the driver wants an interrupt for them. Call once per batch.
    pub fn publish_used(&mut self) -> bool {
        if self.stats.used == self.used_at_publish {
            return false; // nothing new: no store, no interrupt
        }
        self.used_at_publish = self.stats.used;
        if self.inflight.is_some() {
            return self.publish_used_logged();
        }
        let notify = match &mut self.ring {
            Some(Ring::Split(r)) => r.publish(),
            Some(Ring::Packed(r)) => r.publish(),
            None => false,
        };
        self.stats.published += 1;
        if notify {
            self.stats.interrupts += 1;
        }
        notify
    }

    /// [`publish_used`](Self::publish_used) with an inflight log around the ring's publish.
    #[cold]
    fn publish_used_logged(&mut self) -> bool {
        let (Some(log), Some(ring)) = (&mut self.inflight, &mut self.ring) else {
            return false;
        };
        let used = match ring {
            Ring::Split(r) => (r.next_used(), true),
            Ring::Packed(r) => r.next_used(),
        };
        log.before_publish(used);
        #[cfg(test)]
        if inflight::crash::dead() {
            return false; // the simulated process died before the ring store
        }
        let notify = match ring {
            Ring::Split(r) => r.publish(),
            Ring::Packed(r) => r.publish(),
        };
        log.after_publish(used);
        self.stats.published += 1;
        if notify {
            self.stats.interrupts += 1;
        }
        notify
    }

    /// Attaches a vhost-user inflight region (`INFLIGHT_SHMFD`) and recovers what a previous
    /// backend left in it: the rings resume where that backend really stopped, and the
    /// requests it popped but never completed are popped again, in their original order,
    /// before anything new. Call after the size, addresses, features and base are set and
    /// before the first pop. See [`inflight`].
    pub fn set_inflight(
        &mut self,
        region: InflightRegion,
        mem: &GuestMemory,
    ) -> Result<InflightRecovery, InflightError> {
        let start = (
            (self.start.next_avail, self.start.avail_wrap),
            (self.start.next_used, self.start.used_wrap),
        );
        let (log, rec) = Inflight::attach(
            region,
            mem,
            &self.addrs,
            self.size,
            self.features.packed,
            start,
        )?;
        if !rec.fresh {
            if self.features.packed {
                self.set_packed_base(rec.next_avail, rec.next_used);
            } else {
                self.set_next_avail(rec.next_avail.0, rec.next_used.0);
            }
        }
        self.inflight = Some(Box::new(log));
        Ok(rec)
    }

    /// Chains still to be resubmitted from the inflight log.
    pub fn inflight_resubmit_pending(&self) -> usize {
        self.inflight.as_ref().map_or(0, |l| l.resubmit.len())
    }

    /// Asks the driver not to notify us (we are busy polling the ring).
    pub fn disable_notification(&mut self) {
        match &mut self.ring {
            Some(Ring::Split(r)) => r.disable_notification(),
            Some(Ring::Packed(r)) => r.disable_notification(),
            None => {}
        }
    }

    /// Asks the driver to notify us again, then re-checks the ring: returns `true` if buffers
    /// arrived meanwhile, in which case the caller must keep processing (no kick is lost).
    pub fn enable_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        match self.ring(mem)? {
            Ring::Split(r) => r.enable_notification(),
            Ring::Packed(r) => r.enable_notification(),
        }
    }

    /// With EVENT_IDX, when the driver has not taken completions we published (its event
    /// position lies behind our used position): the driver's event position and ours (split:
    /// `used_event` and the used index; packed: `off_wrap` and the used position, wrap counter
    /// in bit 15). If it waits for them, its interrupt was lost. `None` when the driver is up
    /// to date, has callbacks off, or without EVENT_IDX.
    pub fn driver_behind(&self) -> Option<(u16, u16)> {
        match &self.ring {
            Some(Ring::Split(r)) => r.driver_behind(),
            Some(Ring::Packed(r)) => r.driver_behind(),
            None => None,
        }
    }

    /// Whether the driver has made buffers available that we have not popped.
    pub fn has_available(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        match self.ring(mem)? {
            Ring::Split(r) => r.has_available(),
            Ring::Packed(r) => r.has_available(),
        }
    }

    /// Chains popped but not yet used, on an `IN_ORDER` queue (otherwise 0).
    pub fn in_order_pending(&self) -> usize {
        self.in_order.popped.len()
    }

    /// The indices to save so that a restarted backend resumes where this one stopped.
    pub fn state(&self) -> QueueState {
        let mut s = QueueState {
            size: self.size,
            ready: self.ready,
            addrs: self.addrs,
            features: self.features,
            ..self.start
        };
        match &self.ring {
            Some(Ring::Split(r)) => {
                s.next_avail = r.next_avail();
                s.next_used = r.next_used();
            }
            Some(Ring::Packed(r)) => {
                (s.next_avail, s.avail_wrap) = r.next_avail();
                (s.next_used, s.used_wrap) = r.next_used();
            }
            None => {}
        }
        s
    }

    /// Restores a saved state. The rings are re-validated at the next use, and the next
    /// publish interrupts the driver unconditionally (the interrupt history is not saved).
    pub fn restore(&mut self, state: QueueState) -> Result<(), QueueError> {
        if state.size == 0 || state.size > self.max_size {
            return Err(QueueError::InvalidState);
        }
        if state.features.packed
            && (state.next_avail >= state.size || state.next_used >= state.size)
        {
            return Err(QueueError::InvalidState);
        }
        self.size = state.size;
        self.ready = state.ready;
        self.addrs = state.addrs;
        self.features = state.features;
        self.start = state;
        self.ring = None;
        self.mem = None;
        self.history_known = false;
        // The old backend may have published without signalling: the next publish does both.
        self.used_at_publish = u64::MAX;
        Ok(())
    }

    /// Sets where the split ring's indices start (vhost-user `SET_VRING_BASE`): the avail
    /// index to pop next, and the used index, which are equal for a fresh queue.
    pub fn set_next_avail(&mut self, next_avail: u16, next_used: u16) {
        self.start.next_avail = next_avail;
        self.start.next_used = next_used;
        self.ring = None;
        self.history_known = false;
        // The old backend may have published without signalling: the next publish does both.
        self.used_at_publish = u64::MAX;
    }

    /// Sets where a packed ring starts (vhost-user `SET_VRING_BASE` with the wrap counter in
    /// bit 15 of each value).
    pub fn set_packed_base(&mut self, avail: (u16, bool), used: (u16, bool)) {
        (self.start.next_avail, self.start.avail_wrap) = avail;
        (self.start.next_used, self.start.used_wrap) = used;
        self.ring = None;
        self.history_known = false;
        // The old backend may have published without signalling: the next publish does both.
        self.used_at_publish = u64::MAX;
    }

    /// Returns the queue to its state after creation (device reset).
    pub fn reset(&mut self) {
        *self = Self {
            max_segments: self.max_segments,
            ..Self::new(self.max_size)
        };
    }

    /// Forces the next publish to interrupt (for example after the backend restarted).
    pub fn force_next_interrupt(&mut self) {
        match &mut self.ring {
            Some(Ring::Split(r)) => r.forget_signalled(),
            Some(Ring::Packed(r)) => r.forget_signalled(),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
