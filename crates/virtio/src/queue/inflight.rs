//! Inflight I/O tracking (vhost-user `INFLIGHT_SHMFD`): a restarted backend resumes the
//! requests its predecessor popped but never completed.
//!
//! A device that completes out of order cannot rebuild "what was in flight" from the rings:
//! the avail ring (split) or descriptor ring (packed) entries of an old request may already
//! be overwritten. So every pop and every completion is also logged in a region of shared
//! memory that outlives the backend process (the frontend keeps its fd and hands it to the
//! next backend). The layout is the one the vhost-user specification describes ("Inflight
//! I/O tracking", `QueueRegionSplit` / `QueueRegionPacked`); each store is made in an order
//! that leaves the region recoverable wherever the process dies:
//!
//! - Split: pop `i` → `desc[i].counter = n++`, then `desc[i].inflight = 1`. Completion →
//!   `desc[i].next = last_batch_head`, `last_batch_head = i`. Publish → the ring's used
//!   index, then `inflight = 0` for the batch, then `used_idx`. At restart a `used_idx` that
//!   differs from the ring's used index means the last batch was published: its entries (the
//!   list from `last_batch_head`) are cleared.
//! - Packed: each popped chain's descriptors are copied into entries taken from a free list
//!   (`free_head`), the head entry getting `counter`, `num`, `last` and `inflight = 1`;
//!   `old_free_head` commits the pop. Completions are batched in process memory and, at
//!   publish, their entries go back on the free list, `used_idx`/`used_wrap_counter` move,
//!   the ring's first used flags are written, and `old_*` commit the batch. (Freeing at publish
//!   rather than at each completion keeps pops, which may come in between, from committing a
//!   batch that was never published.) At restart an uncommitted batch is kept if the ring shows
//!   it published, else rolled back; every entry on the free list is then not in flight.
//!
//! What remains in flight is resubmitted in counter order before anything new is popped.
//! Nothing here runs unless [`Queue::set_inflight`](super::Queue::set_inflight) was called.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::packed::{DESC_F_AVAIL, DESC_F_USED};
use super::raw::RawDescriptor;
use crate::memory::GuestMemory;

/// Version of the region layout (0 means "never initialised").
pub const INFLIGHT_VERSION: u16 = 1;

/// Alignment of each queue's region.
pub const INFLIGHT_ALIGN: usize = 64;

const SPLIT_HEADER: usize = 16;
const SPLIT_ENTRY: usize = 16;
const PACKED_HEADER: usize = 32;
const PACKED_ENTRY: usize = 32;

// Header fields (both layouts).
const VERSION: usize = 8;
const DESC_NUM: usize = 10;
// Split header.
const LAST_BATCH_HEAD: usize = 12;
const SPLIT_USED_IDX: usize = 14;
// Packed header.
const FREE_HEAD: usize = 12;
const OLD_FREE_HEAD: usize = 14;
const USED_IDX: usize = 16;
const OLD_USED_IDX: usize = 18;
const USED_WRAP: usize = 20;
const OLD_USED_WRAP: usize = 21;
// Entry fields.
const E_INFLIGHT: usize = 0;
const SPLIT_E_NEXT: usize = 6;
const E_COUNTER: usize = 8;
const P_E_NEXT: usize = 2;
const P_E_LAST: usize = 4;
const P_E_NUM: usize = 6;
const P_E_ID: usize = 16;
const P_E_FLAGS: usize = 18;
const P_E_LEN: usize = 20;
const P_E_ADDR: usize = 24;

/// Why an inflight region cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflightError {
    /// The region pointer is null or not aligned to [`INFLIGHT_ALIGN`].
    #[error("Inflight region is not aligned to {INFLIGHT_ALIGN} bytes")]
    Misaligned,
    /// The region is smaller than the queue needs.
    #[error("Inflight region of {have} bytes is too small for {need}")]
    TooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The queue is larger than the region's descriptor count.
    #[error("Queue of {size} entries does not fit an inflight region of {desc_num}")]
    QueueTooLarge {
        /// Queue size.
        size: u16,
        /// Entries in the region.
        desc_num: u16,
    },
    /// The region was written by something else (another version or queue size).
    #[error("Inflight region has version {version} and {desc_num} entries; expected {INFLIGHT_VERSION} and {expected}")]
    Incompatible {
        /// Version found.
        version: u16,
        /// Entries found.
        desc_num: u16,
        /// Entries expected.
        expected: u16,
    },
    /// The region's positions or lists do not fit the queue (it was overwritten).
    #[error("Inflight region is inconsistent: {0}")]
    Corrupt(&'static str),
    /// The queue is not set up (addresses, size) or its rings are not in guest memory.
    #[error("Queue rings are not readable in guest memory")]
    Rings,
}

/// Bytes of one queue's region for `queue_size` entries, whatever the ring layout (the
/// larger, packed, layout, rounded up to [`INFLIGHT_ALIGN`]): a transport can size the
/// shared file before the driver chooses a layout.
pub fn queue_region_size(queue_size: u16) -> usize {
    let n = usize::from(queue_size);
    let need = (PACKED_HEADER + PACKED_ENTRY * n).max(SPLIT_HEADER + SPLIT_ENTRY * n);
    need.div_ceil(INFLIGHT_ALIGN) * INFLIGHT_ALIGN
}

/// One queue's slice of the shared inflight memory, handed to [`Queue::set_inflight`].
///
/// [`Queue::set_inflight`]: super::Queue::set_inflight
pub struct InflightRegion {
    ptr: NonNull<u8>,
    len: usize,
    _keep: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the region is plain shared memory kept mapped by `_keep`; the queue that owns the
// `InflightRegion` is its only user in this process, and all accesses are atomic.
unsafe impl Send for InflightRegion {}

impl fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InflightRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl InflightRegion {
    /// Wraps `len` bytes at `ptr`, kept mapped by `keep` (say, an `Arc` of the mapping).
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be readable and writable memory that stays mapped as long as
    /// `keep` lives, and no other region handed to a queue may overlap it. Another process
    /// (the frontend) may map it too, as long as it does not write it while a queue runs.
    pub unsafe fn new(
        ptr: *mut u8,
        len: usize,
        keep: Arc<dyn Any + Send + Sync>,
    ) -> Result<Self, InflightError> {
        let ptr = NonNull::new(ptr).ok_or(InflightError::Misaligned)?;
        if ptr.as_ptr() as usize % INFLIGHT_ALIGN != 0 {
            return Err(InflightError::Misaligned);
        }
        Ok(Self {
            ptr,
            len,
            _keep: keep,
        })
    }

    /// A zeroed region on the heap, for tests and for devices without a transport.
    pub fn anonymous(queue_size: u16) -> Self {
        let words = queue_region_size(queue_size) / 8 + INFLIGHT_ALIGN / 8;
        let buf: Arc<Box<[AtomicU64]>> = Arc::new((0..words).map(|_| AtomicU64::new(0)).collect());
        let base = buf.as_ptr().cast::<u8>().cast_mut();
        let skip = base.align_offset(INFLIGHT_ALIGN);
        // SAFETY: `skip < INFLIGHT_ALIGN`, and the buffer has `INFLIGHT_ALIGN` spare bytes.
        let ptr = unsafe { base.add(skip) };
        Self {
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            len: queue_region_size(queue_size),
            _keep: buf,
        }
    }

    /// Bytes of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the region's bytes (for tests and diagnostics).
    pub fn snapshot(&self) -> Vec<u8> {
        (0..self.len).map(|i| self.load_u8(i)).collect()
    }

    /// Overwrites the region with `bytes` (for tests: simulating a state a crash left).
    pub fn restore_snapshot(&self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate().take(self.len) {
            self.put_u8(i, *b);
        }
    }

    fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let end = off.checked_add(std::mem::size_of::<T>())?;
        if end > self.len || off % std::mem::align_of::<T>() != 0 {
            return None;
        }
        // SAFETY: `off + size_of::<T>() <= len`: inside the region; alignment checked above
        // (the base is `INFLIGHT_ALIGN`-aligned).
        Some(unsafe { self.ptr.as_ptr().add(off) }.cast::<T>())
    }

    fn load_u8(&self, off: usize) -> u8 {
        let Some(p) = self.ptr::<u8>(off) else {
            return 0;
        };
        // SAFETY: in bounds and aligned (`ptr`); the memory is only accessed atomically.
        unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Acquire)
    }

    fn load_u16(&self, off: usize) -> u16 {
        let Some(p) = self.ptr::<u16>(off) else {
            return 0;
        };
        // SAFETY: as in `load_u8`.
        unsafe { AtomicU16::from_ptr(p) }.load(Ordering::Acquire)
    }

    fn load_u32(&self, off: usize) -> u32 {
        let Some(p) = self.ptr::<u32>(off) else {
            return 0;
        };
        // SAFETY: as in `load_u8`.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Acquire)
    }

    fn load_u64(&self, off: usize) -> u64 {
        let Some(p) = self.ptr::<u64>(off) else {
            return 0;
        };
        // SAFETY: as in `load_u8`.
        unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Acquire)
    }

    // Stores are `Release`: the order of stores is what makes the region recoverable, and a
    // killed process leaves exactly a prefix of them behind.

    fn put_u8(&self, off: usize, v: u8) {
        if crash::dead() {
            return;
        }
        if let Some(p) = self.ptr::<u8>(off) {
            // SAFETY: as in `load_u8`.
            unsafe { AtomicU8::from_ptr(p) }.store(v, Ordering::Release);
        }
    }

    fn put_u16(&self, off: usize, v: u16) {
        if crash::dead() {
            return;
        }
        if let Some(p) = self.ptr::<u16>(off) {
            // SAFETY: as in `load_u8`.
            unsafe { AtomicU16::from_ptr(p) }.store(v, Ordering::Release);
        }
    }

    fn put_u32(&self, off: usize, v: u32) {
        if crash::dead() {
            return;
        }
        if let Some(p) = self.ptr::<u32>(off) {
            // SAFETY: as in `load_u8`.
            unsafe { AtomicU32::from_ptr(p) }.store(v, Ordering::Release);
        }
    }

    fn put_u64(&self, off: usize, v: u64) {
        if crash::dead() {
            return;
        }
        if let Some(p) = self.ptr::<u64>(off) {
            // SAFETY: as in `load_u8`.
            unsafe { AtomicU64::from_ptr(p) }.store(v, Ordering::Release);
        }
    }
}

/// Simulated process death for tests: after a budget of stores, every later store (to the
/// region and the used ring's publish) is dropped, as if the process had been killed there.
pub(crate) mod crash {
    #[cfg(test)]
    use std::cell::Cell;

    #[cfg(test)]
    thread_local! {
        static BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Whether the simulated process is dead (consumes one store of the budget if not).
    #[cfg(test)]
    pub(crate) fn dead() -> bool {
        BUDGET.with(|b| match b.get() {
            None => false,
            Some(0) => true,
            Some(n) => {
                b.set(Some(n - 1));
                false
            }
        })
    }

    /// Whether the simulated process died (does not consume the budget).
    #[cfg(test)]
    pub(crate) fn is_dead() -> bool {
        BUDGET.with(|b| b.get() == Some(0))
    }

    #[cfg(test)]
    pub(crate) fn set_budget(stores: Option<u64>) {
        BUDGET.with(|b| b.set(stores));
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn dead() -> bool {
        false
    }
}

/// What [`Queue::set_inflight`](super::Queue::set_inflight) found in the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightRecovery {
    /// The region was new (never written): nothing to resubmit.
    pub fresh: bool,
    /// Heads (split) or buffer ids (packed) that will be served again, in pop order.
    pub resubmit: Vec<u16>,
    /// Where the rings resume: `(next_avail, next_used)` with wrap counters (packed).
    pub next_avail: (u16, bool),
    /// See `next_avail`.
    pub next_used: (u16, bool),
    /// Requests popped after the oldest one resubmitted and completed before the backend
    /// stopped: non-zero means it completed out of order, which the rings alone could not
    /// have recovered from.
    pub overtaken: usize,
}

/// The queue's side of the log: the region and the bookkeeping kept in process memory.
#[derive(Debug)]
pub(crate) struct Inflight {
    region: InflightRegion,
    desc_num: u16,
    counter: u64,
    /// Split: heads; packed: head entries; in counter order.
    pub(crate) resubmit: VecDeque<u16>,
    /// Completions since the last publish: heads (split) or head entries (packed).
    batch: Vec<u16>,
    packed: bool,
    /// Split: mirror of `last_batch_head`. Packed: mirror of `free_head`.
    head: u16,
    /// Packed: the head entry of each buffer id in flight (`u16::MAX`: none).
    entry_of_id: Vec<u16>,
    /// Packed: scratch for a popped chain's descriptors.
    scratch: Vec<RawDescriptor>,
    /// Logging stopped after the region turned out inconsistent (reported once).
    broken: bool,
}

impl Inflight {
    /// Sets up logging on `region` for a queue of `size` entries, recovering what a previous
    /// backend left. `start` is where the rings would resume without the log.
    pub(crate) fn attach(
        region: InflightRegion,
        mem: &GuestMemory,
        rings: &super::RingAddresses,
        size: u16,
        packed: bool,
        start: ((u16, bool), (u16, bool)),
    ) -> Result<(Self, InflightRecovery), InflightError> {
        let need = queue_region_size(size);
        if region.len < need {
            return Err(InflightError::TooSmall {
                need,
                have: region.len,
            });
        }
        let version = region.load_u16(VERSION);
        let desc_num = region.load_u16(DESC_NUM);
        let mut me = Self {
            region,
            desc_num: size,
            counter: 0,
            resubmit: VecDeque::new(),
            batch: Vec::with_capacity(usize::from(size)),
            packed,
            head: 0,
            entry_of_id: if packed {
                vec![u16::MAX; 1 << 16]
            } else {
                Vec::new()
            },
            scratch: Vec::new(),
            broken: false,
        };
        if version == 0 {
            me.init(start.1);
            let rec = InflightRecovery {
                fresh: true,
                resubmit: Vec::new(),
                next_avail: start.0,
                next_used: start.1,
                overtaken: 0,
            };
            return Ok((me, rec));
        }
        if version != INFLIGHT_VERSION || desc_num != size {
            return Err(InflightError::Incompatible {
                version,
                desc_num,
                expected: size,
            });
        }
        let rec = if packed {
            me.recover_packed(mem, rings)?
        } else {
            me.recover_split(mem, rings)?
        };
        Ok((me, rec))
    }

    fn entry(&self, i: u16) -> usize {
        if self.packed {
            PACKED_HEADER + PACKED_ENTRY * usize::from(i)
        } else {
            SPLIT_HEADER + SPLIT_ENTRY * usize::from(i)
        }
    }

    fn init(&mut self, used: (u16, bool)) {
        let r = &self.region;
        r.put_u64(0, 0);
        r.put_u16(DESC_NUM, self.desc_num);
        if self.packed {
            for i in 0..self.desc_num {
                let e = self.entry(i);
                r.put_u8(e + E_INFLIGHT, 0);
                r.put_u16(e + P_E_NEXT, i + 1);
            }
            r.put_u16(FREE_HEAD, 0);
            r.put_u16(OLD_FREE_HEAD, 0);
            r.put_u16(USED_IDX, used.0);
            r.put_u16(OLD_USED_IDX, used.0);
            r.put_u8(USED_WRAP, u8::from(used.1));
            r.put_u8(OLD_USED_WRAP, u8::from(used.1));
        } else {
            for i in 0..self.desc_num {
                r.put_u8(self.entry(i) + E_INFLIGHT, 0);
            }
            r.put_u16(LAST_BATCH_HEAD, 0);
            r.put_u16(SPLIT_USED_IDX, used.0);
        }
        r.put_u16(VERSION, INFLIGHT_VERSION);
        self.head = 0;
    }

    /// Entries with `inflight = 1`, as `(counter, index)` sorted by counter; and how many
    /// entries not in flight were popped after the oldest of them (see
    /// [`InflightRecovery::overtaken`]). Also moves the pop counter past every counter in
    /// the region, so counters grow over the region's whole life.
    fn in_flight_entries(&mut self) -> (Vec<(u64, u16)>, usize) {
        let mut v = Vec::new();
        let mut done = Vec::new();
        for i in 0..self.desc_num {
            let e = self.entry(i);
            let counter = self.region.load_u64(e + E_COUNTER);
            self.counter = self.counter.max(counter.wrapping_add(1));
            if self.region.load_u8(e + E_INFLIGHT) == 1 {
                v.push((counter, i));
            } else {
                done.push(counter);
            }
        }
        v.sort_unstable();
        let oldest = v.first().map_or(u64::MAX, |e| e.0);
        let overtaken = done.iter().filter(|&&c| c > oldest).count();
        (v, overtaken)
    }

    fn recover_split(
        &mut self,
        mem: &GuestMemory,
        rings: &super::RingAddresses,
    ) -> Result<InflightRecovery, InflightError> {
        let ring_used = read_u16(mem, rings.device.checked_add(2))?;
        let r = &self.region;
        let logged = r.load_u16(SPLIT_USED_IDX);
        if logged != ring_used {
            // The last batch was published but the backend died before logging it: its
            // entries are the list from `last_batch_head`.
            let batch = ring_used.wrapping_sub(logged).min(self.desc_num);
            let mut i = r.load_u16(LAST_BATCH_HEAD);
            for _ in 0..batch {
                if i >= self.desc_num {
                    break;
                }
                r.put_u8(self.entry(i) + E_INFLIGHT, 0);
                i = r.load_u16(self.entry(i) + SPLIT_E_NEXT);
            }
            r.put_u16(SPLIT_USED_IDX, ring_used);
        }
        self.head = r.load_u16(LAST_BATCH_HEAD);
        let (entries, overtaken) = self.in_flight_entries();
        self.resubmit = entries.iter().map(|e| e.1).collect();
        let in_flight = u16::try_from(entries.len()).unwrap_or(u16::MAX);
        Ok(InflightRecovery {
            fresh: false,
            resubmit: self.resubmit.iter().copied().collect(),
            next_avail: (ring_used.wrapping_add(in_flight), true),
            next_used: (ring_used, true),
            overtaken,
        })
    }

    fn recover_packed(
        &mut self,
        mem: &GuestMemory,
        rings: &super::RingAddresses,
    ) -> Result<InflightRecovery, InflightError> {
        let r = &self.region;
        let n = self.desc_num;
        let used = (r.load_u16(USED_IDX), r.load_u8(USED_WRAP) != 0);
        let old_used = (r.load_u16(OLD_USED_IDX), r.load_u8(OLD_USED_WRAP) != 0);
        if used != old_used && old_used.0 < n {
            // A batch was being published. If the ring shows its first element used, the
            // driver may have seen it: commit the batch; otherwise roll it back.
            let flags_at = rings
                .desc
                .checked_add(16 * u64::from(old_used.0) + 14)
                .ok_or(InflightError::Rings)?;
            let flags = read_u16(mem, Some(flags_at))?;
            let avail = if old_used.1 {
                DESC_F_AVAIL
            } else {
                DESC_F_USED
            };
            if flags & (DESC_F_AVAIL | DESC_F_USED) != avail {
                r.put_u16(OLD_FREE_HEAD, r.load_u16(FREE_HEAD));
                r.put_u16(OLD_USED_IDX, used.0);
                r.put_u8(OLD_USED_WRAP, u8::from(used.1));
            }
        }
        let free = r.load_u16(OLD_FREE_HEAD);
        let used = (r.load_u16(OLD_USED_IDX), r.load_u8(OLD_USED_WRAP) != 0);
        if used.0 >= n || free > n {
            return Err(InflightError::Corrupt(
                "used position or free list head out of range",
            ));
        }
        r.put_u16(FREE_HEAD, free);
        r.put_u16(USED_IDX, used.0);
        r.put_u8(USED_WRAP, u8::from(used.1));
        // Whatever is on the free list is not in flight (this also drops a half-logged pop).
        let mut i = free;
        for _ in 0..n {
            if i >= n {
                break;
            }
            r.put_u8(self.entry(i) + E_INFLIGHT, 0);
            i = r.load_u16(self.entry(i) + P_E_NEXT);
        }
        self.head = free;
        let mut slots: u32 = 0;
        let mut ids = Vec::new();
        let (entries, overtaken) = self.in_flight_entries();
        for (_, h) in entries {
            let Some((id, num)) = self.packed_chain_end(h) else {
                tracing::warn!(entry = h, "dropping an inconsistent inflight entry");
                self.region.put_u8(self.entry(h) + E_INFLIGHT, 0);
                continue;
            };
            slots += u32::from(num);
            if let Some(e) = self.entry_of_id.get_mut(usize::from(id)) {
                *e = h;
            }
            self.resubmit.push_back(h);
            ids.push(id);
        }
        // The device popped exactly the slots of what is in flight beyond the used position.
        let size = u32::from(n);
        let total = u32::from(used.0) + slots;
        let idx = u16::try_from(total % size).unwrap_or(0);
        let wrap = used.1 ^ ((total / size) % 2 == 1);
        Ok(InflightRecovery {
            fresh: false,
            resubmit: ids,
            next_avail: (idx, wrap),
            next_used: used,
            overtaken,
        })
    }

    /// A packed head entry's buffer id and descriptor count, if its chain is consistent.
    fn packed_chain_end(&self, h: u16) -> Option<(u16, u16)> {
        let r = &self.region;
        let e = self.entry(h);
        let num = r.load_u16(e + P_E_NUM);
        let last = r.load_u16(e + P_E_LAST);
        if num == 0 || num > self.desc_num || last >= self.desc_num {
            return None;
        }
        let mut i = h;
        for _ in 1..num {
            i = r.load_u16(self.entry(i) + P_E_NEXT);
            if i >= self.desc_num {
                return None;
            }
        }
        (i == last).then(|| (r.load_u16(self.entry(last) + P_E_ID), num))
    }

    /// Packed: the descriptors logged for head entry `h` (its chain, as the ring held it).
    pub(crate) fn packed_chain(&self, h: u16, out: &mut Vec<RawDescriptor>) -> Option<u16> {
        let (id, num) = self.packed_chain_end(h)?;
        out.clear();
        let mut i = h;
        for k in 0..num {
            if k > 0 {
                i = self.region.load_u16(self.entry(i) + P_E_NEXT);
            }
            let e = self.entry(i);
            out.push(RawDescriptor {
                addr: self.region.load_u64(e + P_E_ADDR),
                len: self.region.load_u32(e + P_E_LEN),
                next_or_id: self.region.load_u16(e + P_E_ID),
                flags: self.region.load_u16(e + P_E_FLAGS),
            });
        }
        Some(id)
    }

    fn stop_logging(&mut self, why: &str) {
        if !self.broken {
            tracing::warn!(
                why,
                "inflight log stopped: a restart will not resubmit requests"
            );
        }
        self.broken = true;
    }

    /// Split: head `head` was popped.
    pub(crate) fn split_popped(&mut self, head: u16) {
        if self.broken || head >= self.desc_num {
            return;
        }
        let e = self.entry(head);
        self.region.put_u64(e + E_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.region.put_u8(e + E_INFLIGHT, 1);
    }

    /// Packed: the scratch buffer to fill with a popped chain's ring descriptors.
    pub(crate) fn scratch(&mut self) -> Vec<RawDescriptor> {
        std::mem::take(&mut self.scratch)
    }

    /// Packed: a chain with buffer `id` was popped; `descs` are its ring descriptors.
    pub(crate) fn packed_popped(&mut self, id: u16, descs: Vec<RawDescriptor>) {
        self.log_packed_pop(id, &descs);
        self.scratch = descs;
    }

    fn log_packed_pop(&mut self, id: u16, descs: &[RawDescriptor]) {
        if self.broken || descs.is_empty() {
            return;
        }
        let h = self.head;
        if h >= self.desc_num {
            return self.stop_logging("no free entry");
        }
        let r = &self.region;
        let he = self.entry(h);
        r.put_u16(he + P_E_NUM, 0);
        r.put_u64(he + E_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        r.put_u8(he + E_INFLIGHT, 1);
        let mut free = h;
        for (k, d) in descs.iter().enumerate() {
            if free >= self.desc_num {
                return self.stop_logging("free list ran out");
            }
            let last = k + 1 == descs.len();
            if last {
                r.put_u16(he + P_E_LAST, free);
            }
            r.put_u16(he + P_E_NUM, u16::try_from(k + 1).unwrap_or(u16::MAX));
            let e = self.entry(free);
            r.put_u64(e + P_E_ADDR, d.addr);
            r.put_u32(e + P_E_LEN, d.len);
            r.put_u16(e + P_E_FLAGS, d.flags);
            r.put_u16(e + P_E_ID, d.next_or_id);
            free = r.load_u16(e + P_E_NEXT);
            r.put_u16(FREE_HEAD, free);
            if last {
                r.put_u16(OLD_FREE_HEAD, free);
            }
        }
        self.head = free;
        if let Some(slot) = self.entry_of_id.get_mut(usize::from(id)) {
            *slot = h;
        }
    }

    /// Packed: hands the scratch buffer back.
    pub(crate) fn give_scratch(&mut self, descs: Vec<RawDescriptor>) {
        self.scratch = descs;
    }

    /// Packed: a resubmitted head entry was served again under buffer `id`.
    pub(crate) fn packed_resubmitted(&mut self, id: u16, h: u16) {
        if let Some(slot) = self.entry_of_id.get_mut(usize::from(id)) {
            *slot = h;
        }
    }

    /// A completion of `id` (split: head; packed: buffer id) was written.
    pub(crate) fn used(&mut self, id: u16) {
        if self.broken {
            return;
        }
        if self.packed {
            let Some(h) = self.entry_of_id.get_mut(usize::from(id)) else {
                return;
            };
            if *h < self.desc_num {
                self.batch.push(*h);
                *h = u16::MAX;
            }
            return;
        }
        if id >= self.desc_num {
            return;
        }
        self.region
            .put_u16(self.entry(id) + SPLIT_E_NEXT, self.head);
        self.region.put_u16(LAST_BATCH_HEAD, id);
        self.head = id;
        self.batch.push(id);
    }

    /// Before the ring publishes: `used` is where the used position will be after it.
    pub(crate) fn before_publish(&mut self, used: (u16, bool)) {
        if self.broken || !self.packed {
            return;
        }
        let r = &self.region;
        for &h in &self.batch {
            let last = r.load_u16(self.entry(h) + P_E_LAST);
            if last >= self.desc_num {
                continue;
            }
            r.put_u16(self.entry(last) + P_E_NEXT, self.head);
            r.put_u16(FREE_HEAD, h);
            self.head = h;
        }
        r.put_u16(USED_IDX, used.0);
        r.put_u8(USED_WRAP, u8::from(used.1));
    }

    /// After the ring published: `used` is the used position (split: the used index).
    pub(crate) fn after_publish(&mut self, used: (u16, bool)) {
        if self.broken {
            self.batch.clear();
            return;
        }
        let r = &self.region;
        for h in self.batch.drain(..) {
            let e = if self.packed {
                PACKED_HEADER + PACKED_ENTRY * usize::from(h)
            } else {
                SPLIT_HEADER + SPLIT_ENTRY * usize::from(h)
            };
            r.put_u8(e + E_INFLIGHT, 0);
        }
        if self.packed {
            r.put_u16(OLD_FREE_HEAD, self.head);
            r.put_u16(OLD_USED_IDX, used.0);
            r.put_u8(OLD_USED_WRAP, u8::from(used.1));
        } else {
            r.put_u16(SPLIT_USED_IDX, used.0);
        }
    }
}

fn read_u16(mem: &GuestMemory, addr: Option<u64>) -> Result<u16, InflightError> {
    let addr = addr.ok_or(InflightError::Rings)?;
    mem.mmap()
        .read_obj::<u16>(GuestAddress(addr))
        .map(u16::from_le)
        .map_err(|_| InflightError::Rings)
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
