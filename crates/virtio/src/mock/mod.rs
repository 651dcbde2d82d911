//! A driver-side model of both ring layouts, for tests, benchmarks and fuzzing.
//!
//! [`MockDriver`] lays out a queue in real guest memory ([`GuestMemory`]), builds direct,
//! indirect and mixed chains, makes them available, reads the used ring back, and follows the
//! event-index rules a real driver follows when deciding to notify the device. It writes guest
//! memory through `vm-memory`, independently of the engine it tests.

mod packed;
mod split;

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;
use crate::queue::{Queue, RingAddresses, RingFeatures};

/// One buffer of a chain the mock builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// How a chain's descriptors are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// All in the ring's descriptor table.
    Direct,
    /// One ring descriptor pointing at an indirect table holding all of them.
    Indirect,
    /// The first `n` in the ring, the rest in an indirect table (split rings only).
    Mixed(usize),
}

/// Why the mock could not add a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    /// Not enough free descriptors or buffer ids.
    #[error("The ring is full")]
    Full,
    /// The data area is exhausted.
    #[error("Out of data memory")]
    OutOfData,
    /// The chain is empty or the placement does not fit the layout.
    #[error("Invalid chain")]
    Invalid,
}

/// Memory layout of a mock queue.
#[derive(Debug, Clone, Copy)]
pub struct MockLayout {
    /// Ring addresses.
    pub addrs: RingAddresses,
    /// First byte of the area handed out by [`MockDriver::alloc`].
    pub data_start: u64,
    /// End of that area.
    pub data_end: u64,
}

impl MockLayout {
    /// Places the rings at `base` (page aligned) and data after them, up to `end`.
    pub fn new(base: u64, size: u16, end: u64) -> Self {
        let n = u64::from(size);
        let page = |x: u64| (x + 0xfff) & !0xfff;
        let desc = page(base);
        let driver = page(desc + 16 * n);
        let device = page(driver + 6 + 2 * n);
        let data_start = page(device + 6 + 8 * n);
        Self {
            addrs: RingAddresses {
                desc,
                driver,
                device,
            },
            data_start,
            data_end: end,
        }
    }
}

/// A driver for one queue. See the [module documentation](self).
#[derive(Debug)]
pub struct MockDriver {
    mem: GuestMemory,
    size: u16,
    features: RingFeatures,
    layout: MockLayout,
    data_next: u64,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Split(split::SplitDriver),
    Packed(packed::PackedDriver),
}

impl MockDriver {
    /// A driver for a queue of `size` entries with `features`, laid out per `layout`.
    pub fn new(mem: GuestMemory, size: u16, features: RingFeatures, layout: MockLayout) -> Self {
        let inner = if features.packed {
            Inner::Packed(packed::PackedDriver::new(size))
        } else {
            Inner::Split(split::SplitDriver::new(size))
        };
        let d = Self {
            mem,
            size,
            features,
            layout,
            data_next: layout.data_start,
            inner,
        };
        d.zero_rings();
        d
    }

    /// A driver on fresh anonymous memory of `mem_size` bytes at guest address 0.
    pub fn with_memory(size: u16, features: RingFeatures, mem_size: usize) -> Self {
        let mem = GuestMemory::anonymous(&[(0, mem_size)]).expect("mock guest memory");
        let layout = MockLayout::new(0x1000, size, mem_size as u64);
        Self::new(mem, size, features, layout)
    }

    fn zero_rings(&self) {
        let a = self.layout.addrs;
        let n = usize::from(self.size);
        for (addr, len) in [
            (a.desc, 16 * n),
            (a.driver, 6 + 2 * n),
            (a.device, 6 + 8 * n),
        ] {
            self.write(addr, &vec![0; len]);
        }
    }

    /// The guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Ring features.
    pub fn features(&self) -> RingFeatures {
        self.features
    }

    /// Ring addresses.
    pub fn addresses(&self) -> RingAddresses {
        self.layout.addrs
    }

    /// A device-side queue configured as the driver set it up (ready, size, addresses).
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size.next_power_of_two().max(self.size));
        q.set_size(self.size);
        q.set_addresses(self.layout.addrs);
        q.set_features(self.features);
        q.set_ready(true);
        q
    }

    /// Allocates `len` bytes (8-byte aligned) of guest memory for buffers or tables.
    pub fn alloc(&mut self, len: u32) -> Result<u64, MockError> {
        let addr = (self.data_next + 7) & !7;
        let end = addr
            .checked_add(u64::from(len))
            .ok_or(MockError::OutOfData)?;
        if end > self.layout.data_end {
            return Err(MockError::OutOfData);
        }
        self.data_next = end;
        Ok(addr)
    }

    /// Forgets all allocations (buffers in flight keep their bytes until overwritten).
    pub fn reset_alloc(&mut self) {
        self.data_next = self.layout.data_start;
    }

    /// Writes guest memory.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .mmap()
            .write_slice(data, GuestAddress(addr))
            .expect("mock write inside memory");
    }

    /// Reads guest memory.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        self.mem
            .mmap()
            .read_slice(data, GuestAddress(addr))
            .expect("mock read inside memory");
    }

    /// Adds a chain (not yet visible to the device until [`publish`](Self::publish)).
    /// Returns the id the device will complete it with.
    pub fn add_chain(&mut self, bufs: &[Buf], placement: Placement) -> Result<u16, MockError> {
        if bufs.is_empty() {
            return Err(MockError::Invalid);
        }
        let (direct, indirect) = match placement {
            Placement::Direct => (bufs, &[][..]),
            Placement::Indirect => (&[][..], bufs),
            Placement::Mixed(n) if n < bufs.len() => bufs.split_at(n),
            Placement::Mixed(_) => return Err(MockError::Invalid),
        };
        let table = if indirect.is_empty() {
            None
        } else {
            let len = u32::try_from(16 * indirect.len()).map_err(|_| MockError::Invalid)?;
            let addr = self.alloc(len)?;
            Some((addr, len))
        };
        let mem = self.mem.clone();
        let addrs = self.layout.addrs;
        match &mut self.inner {
            Inner::Split(d) => d.add_chain(&mem, addrs, direct, indirect, table),
            Inner::Packed(d) => {
                if !direct.is_empty() && table.is_some() {
                    return Err(MockError::Invalid);
                }
                d.add_chain(&mem, addrs, direct, indirect, table)
            }
        }
    }

    /// Makes the added chains visible to the device.
    pub fn publish(&mut self) {
        let addrs = self.layout.addrs;
        match &mut self.inner {
            Inner::Split(d) => d.publish(&self.mem, addrs),
            Inner::Packed(d) => d.publish(&self.mem, addrs),
        }
    }

    /// Whether the driver must notify the device about what it published since the last
    /// notification, per the device's suppression state; records the notification.
    pub fn kick_needed(&mut self) -> bool {
        let addrs = self.layout.addrs;
        let event_idx = self.features.event_idx;
        match &mut self.inner {
            Inner::Split(d) => d.kick_needed(&self.mem, addrs, event_idx),
            Inner::Packed(d) => d.kick_needed(&self.mem, addrs, event_idx),
        }
    }

    /// Reads the used elements the device published since the last call, as `(id, len)`,
    /// and frees their descriptors.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let addrs = self.layout.addrs;
        match &mut self.inner {
            Inner::Split(d) => d.used(&self.mem, addrs),
            Inner::Packed(d) => d.used(&self.mem, addrs),
        }
    }

    /// Asks for interrupts (or not). With EVENT_IDX, asks for one when the device has used
    /// everything outstanding (split: `used_event`; packed: the DESC event mode).
    pub fn set_interrupts(&mut self, enabled: bool) {
        let addrs = self.layout.addrs;
        let event_idx = self.features.event_idx;
        match &mut self.inner {
            Inner::Split(d) => d.set_interrupts(&self.mem, addrs, enabled, event_idx),
            Inner::Packed(d) => d.set_interrupts(&self.mem, addrs, enabled, event_idx),
        }
    }

    /// Split ring: writes `used_event` directly.
    pub fn set_used_event(&mut self, idx: u16) {
        let off = self.layout.addrs.driver + 4 + 2 * u64::from(self.size);
        self.write(off, &idx.to_le_bytes());
    }

    /// Packed ring: writes the driver event suppression structure directly (`off_wrap` with
    /// the wrap counter in bit 15, and the flags).
    pub fn set_driver_event(&mut self, off_wrap: u16, flags: u16) {
        let a = self.layout.addrs.driver;
        self.write(a, &off_wrap.to_le_bytes());
        self.write(a + 2, &flags.to_le_bytes());
    }

    /// Writes a raw descriptor, in this queue's layout, into the ring's table at `index`
    /// (for malformed-input tests).
    pub fn write_desc(&self, index: u16, desc: crate::queue::RawDescriptor) {
        let addr = self.layout.addrs.desc + 16 * u64::from(index);
        self.write_desc_at(addr, desc);
    }

    /// Writes a raw descriptor, in this queue's layout, at any guest address (an indirect
    /// table entry, say).
    pub fn write_desc_at(&self, addr: u64, desc: crate::queue::RawDescriptor) {
        if self.features.packed {
            write_packed_desc(&self.mem, addr, desc);
        } else {
            write_split_desc(&self.mem, addr, desc);
        }
    }

    /// Split ring: appends `head` to the avail ring without checks (for malformed-input
    /// tests), and publishes it.
    pub fn push_raw_head(&mut self, head: u16) {
        let addrs = self.layout.addrs;
        if let Inner::Split(d) = &mut self.inner {
            d.push_raw_head(&self.mem, addrs, head);
        }
    }

    /// Split ring: sets the avail index the device sees to any value (for malformed tests).
    pub fn set_raw_avail_idx(&mut self, idx: u16) {
        self.write(self.layout.addrs.driver + 2, &idx.to_le_bytes());
    }

    /// Chains added and not yet returned by the device.
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Split(d) => d.in_flight(),
            Inner::Packed(d) => d.in_flight(),
        }
    }

    /// Split ring: starts the driver's indices at `idx` (to test index wrap at 65536).
    /// Call before adding anything; configure the device with the same value.
    pub fn start_split_at(&mut self, idx: u16) {
        let addrs = self.layout.addrs;
        if let Inner::Split(d) = &mut self.inner {
            d.start_at(&self.mem, addrs, idx);
        }
    }
}

fn read_u16(mem: &GuestMemory, addr: u64) -> u16 {
    let mut b = [0u8; 2];
    mem.mmap()
        .read_slice(&mut b, GuestAddress(addr))
        .expect("mock read");
    u16::from_le_bytes(b)
}

fn write_u16(mem: &GuestMemory, addr: u64, v: u16) {
    mem.mmap()
        .write_slice(&v.to_le_bytes(), GuestAddress(addr))
        .expect("mock write");
}

fn read_u32(mem: &GuestMemory, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    mem.mmap()
        .read_slice(&mut b, GuestAddress(addr))
        .expect("mock read");
    u32::from_le_bytes(b)
}

fn write_split_desc(mem: &GuestMemory, addr: u64, d: crate::queue::RawDescriptor) {
    mem.mmap()
        .write_slice(&d.to_split_bytes(), GuestAddress(addr))
        .expect("mock write");
}

fn write_packed_desc(mem: &GuestMemory, addr: u64, d: crate::queue::RawDescriptor) {
    mem.mmap()
        .write_slice(&d.to_packed_bytes(), GuestAddress(addr))
        .expect("mock write");
}

/// Linux's `vring_need_event`: whether `event` lies in `[old, new)`.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}
