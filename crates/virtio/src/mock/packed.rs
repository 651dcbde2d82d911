//! The packed-ring half of the mock driver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};

use super::{read_u16, read_u32, write_packed_desc, write_u16, Buf, MockError};
use crate::memory::GuestMemory;
use crate::queue::{
    RawDescriptor, RingAddresses, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_USED,
    DESC_F_WRITE, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
};

#[derive(Debug)]
pub(super) struct PackedDriver {
    size: u16,
    free_ids: VecDeque<u16>,
    free_slots: u16,
    /// Ring slots taken by each id in flight.
    slots: HashMap<u16, u16>,
    next_avail: u16,
    avail_wrap: bool,
    /// Heads written except for their flags: (slot, flags).
    pending: Vec<(u16, u16)>,
    /// Avail position (linear, mod 2 * size) at the last kick and now.
    kicked: u32,
    published: u32,
    used_slot: u16,
    used_wrap: bool,
}

impl PackedDriver {
    pub(super) fn new(size: u16) -> Self {
        Self {
            size,
            free_ids: (0..size).collect(),
            free_slots: size,
            slots: HashMap::new(),
            next_avail: 0,
            avail_wrap: true,
            pending: Vec::new(),
            kicked: 0,
            published: 0,
            used_slot: 0,
            used_wrap: true,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn lin(&self, idx: u16, wrap: bool) -> u32 {
        u32::from(idx) + if wrap { 0 } else { u32::from(self.size) }
    }

    fn avail_flags(&self, write: bool, next: bool) -> u16 {
        let (a, u) = if self.avail_wrap {
            (DESC_F_AVAIL, 0)
        } else {
            (0, DESC_F_USED)
        };
        a | u | (if write { DESC_F_WRITE } else { 0 }) | (if next { DESC_F_NEXT } else { 0 })
    }

    fn step(&mut self) {
        self.next_avail += 1;
        if self.next_avail == self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    pub(super) fn add_chain(
        &mut self,
        mem: &GuestMemory,
        a: RingAddresses,
        direct: &[Buf],
        indirect: &[Buf],
        table: Option<(u64, u32)>,
    ) -> Result<u16, MockError> {
        let need = u16::try_from(direct.len() + usize::from(table.is_some()))
            .map_err(|_| MockError::Full)?;
        if need > self.free_slots {
            return Err(MockError::Full);
        }
        let id = self.free_ids.pop_front().ok_or(MockError::Full)?;
        self.free_slots -= need;
        self.slots.insert(id, need);
        let head = self.next_avail;
        let mut head_flags = 0;
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        if let Some((taddr, tlen)) = table {
            for (i, b) in indirect.iter().enumerate() {
                let f = if b.write { DESC_F_WRITE } else { 0 };
                let d = RawDescriptor {
                    addr: b.addr,
                    len: b.len,
                    next_or_id: id,
                    flags: f,
                };
                write_packed_desc(mem, taddr + 16 * i as u64, d);
            }
            descs.push((taddr, tlen, DESC_F_INDIRECT));
        } else {
            for (i, b) in direct.iter().enumerate() {
                let next = i + 1 < direct.len();
                let f =
                    (if b.write { DESC_F_WRITE } else { 0 }) | (if next { DESC_F_NEXT } else { 0 });
                descs.push((b.addr, b.len, f));
            }
        }
        for (i, (addr, len, f)) in descs.into_iter().enumerate() {
            let flags = self.avail_flags(f & DESC_F_WRITE != 0, f & DESC_F_NEXT != 0)
                | (f & DESC_F_INDIRECT);
            let slot = self.next_avail;
            // The head's flags are written last, at publish: that makes the chain available.
            let visible = if i == 0 { 0 } else { flags };
            if i == 0 {
                head_flags = flags;
                // Keep the head unavailable until published: flags as the device last wrote.
                let old = read_u16(mem, a.desc + 16 * u64::from(slot) + 14);
                let d = RawDescriptor {
                    addr,
                    len,
                    next_or_id: id,
                    flags: old,
                };
                write_packed_desc(mem, a.desc + 16 * u64::from(slot), d);
            } else {
                let d = RawDescriptor {
                    addr,
                    len,
                    next_or_id: id,
                    flags: visible,
                };
                write_packed_desc(mem, a.desc + 16 * u64::from(slot), d);
            }
            self.step();
        }
        self.pending.push((head, head_flags));
        Ok(id)
    }

    pub(super) fn publish(&mut self, mem: &GuestMemory, a: RingAddresses) {
        // Later heads first, so the device cannot run past the first head before the rest
        // of the batch is in place.
        for &(slot, flags) in self.pending.iter().rev() {
            fence(Ordering::Release);
            write_u16(mem, a.desc + 16 * u64::from(slot) + 14, flags);
        }
        self.pending.clear();
        self.published = self.lin(self.next_avail, self.avail_wrap);
    }

    pub(super) fn kick_needed(
        &mut self,
        mem: &GuestMemory,
        a: RingAddresses,
        event_idx: bool,
    ) -> bool {
        fence(Ordering::SeqCst);
        let (old, new) = (self.kicked, self.published);
        self.kicked = new;
        if old == new {
            return false;
        }
        let off_wrap = read_u16(mem, a.device);
        match read_u16(mem, a.device + 2) & 3 {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if event_idx => {
                let m = 2 * u32::from(self.size);
                let event = self.lin(off_wrap & 0x7fff, off_wrap & 0x8000 != 0) % m;
                (event + m - old) % m < (new + m - old) % m
            }
            _ => true,
        }
    }

    pub(super) fn used(&mut self, mem: &GuestMemory, a: RingAddresses) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        loop {
            let base = a.desc + 16 * u64::from(self.used_slot);
            let flags = read_u16(mem, base + 14);
            fence(Ordering::Acquire);
            let avail = flags & DESC_F_AVAIL != 0;
            let used = flags & DESC_F_USED != 0;
            if avail != self.used_wrap || used != self.used_wrap {
                return out;
            }
            let len = read_u32(mem, base + 8);
            let id = read_u16(mem, base + 12);
            let n = self.slots.remove(&id).unwrap_or(1);
            self.free_ids.push_back(id);
            self.free_slots += n;
            out.push((id, len));
            let next = u32::from(self.used_slot) + u32::from(n);
            if next >= u32::from(self.size) {
                self.used_wrap = !self.used_wrap;
            }
            self.used_slot = u16::try_from(next % u32::from(self.size)).unwrap_or(0);
        }
    }

    pub(super) fn set_interrupts(
        &mut self,
        mem: &GuestMemory,
        a: RingAddresses,
        on: bool,
        event_idx: bool,
    ) {
        if !on {
            write_u16(mem, a.driver + 2, RING_EVENT_FLAGS_DISABLE);
        } else if event_idx {
            let off_wrap = self.used_slot | if self.used_wrap { 0x8000 } else { 0 };
            write_u16(mem, a.driver, off_wrap);
            write_u16(mem, a.driver + 2, RING_EVENT_FLAGS_DESC);
        } else {
            write_u16(mem, a.driver + 2, RING_EVENT_FLAGS_ENABLE);
        }
        fence(Ordering::SeqCst);
    }
}
