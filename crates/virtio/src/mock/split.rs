//! The split-ring half of the mock driver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};

use super::{read_u16, read_u32, vring_need_event, write_split_desc, write_u16, Buf, MockError};
use crate::memory::GuestMemory;
use crate::queue::{RawDescriptor, RingAddresses, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

#[derive(Debug)]
pub(super) struct SplitDriver {
    size: u16,
    free: VecDeque<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    published: u16,
    kicked: u16,
    used_seen: u16,
}

fn flags(b: &Buf, next: bool) -> u16 {
    (if b.write { DESC_F_WRITE } else { 0 }) | (if next { DESC_F_NEXT } else { 0 })
}

impl SplitDriver {
    pub(super) fn new(size: u16) -> Self {
        Self {
            size,
            free: (0..size).collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            published: 0,
            kicked: 0,
            used_seen: 0,
        }
    }

    pub(super) fn start_at(&mut self, mem: &GuestMemory, a: RingAddresses, idx: u16) {
        self.avail_idx = idx;
        self.published = idx;
        self.kicked = idx;
        self.used_seen = idx;
        write_u16(mem, a.driver + 2, idx);
        write_u16(mem, a.device + 2, idx);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.chains.len()
    }

    pub(super) fn add_chain(
        &mut self,
        mem: &GuestMemory,
        a: RingAddresses,
        direct: &[Buf],
        indirect: &[Buf],
        table: Option<(u64, u32)>,
    ) -> Result<u16, MockError> {
        let need = direct.len() + usize::from(table.is_some());
        if need > self.free.len() {
            return Err(MockError::Full);
        }
        let slots: Vec<u16> = self.free.drain(..need).collect();
        for (i, b) in direct.iter().enumerate() {
            let last = i + 1 == direct.len() && table.is_none();
            let next = slots.get(i + 1).copied().unwrap_or(0);
            let d = RawDescriptor {
                addr: b.addr,
                len: b.len,
                next_or_id: next,
                flags: flags(b, !last),
            };
            write_split_desc(mem, a.desc + 16 * u64::from(slots[i]), d);
        }
        if let Some((taddr, tlen)) = table {
            for (i, b) in indirect.iter().enumerate() {
                let last = i + 1 == indirect.len();
                let next = u16::try_from(i + 1).unwrap_or(0);
                let d = RawDescriptor {
                    addr: b.addr,
                    len: b.len,
                    next_or_id: next,
                    flags: flags(b, !last),
                };
                write_split_desc(mem, taddr + 16 * i as u64, d);
            }
            let d = RawDescriptor {
                addr: taddr,
                len: tlen,
                next_or_id: 0,
                flags: DESC_F_INDIRECT,
            };
            write_split_desc(mem, a.desc + 16 * u64::from(slots[need - 1]), d);
        }
        let head = slots[0];
        self.chains.insert(head, slots);
        self.push_head(mem, a, head);
        Ok(head)
    }

    fn push_head(&mut self, mem: &GuestMemory, a: RingAddresses, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write_u16(mem, a.driver + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    pub(super) fn push_raw_head(&mut self, mem: &GuestMemory, a: RingAddresses, head: u16) {
        self.push_head(mem, a, head);
        self.publish(mem, a);
    }

    pub(super) fn publish(&mut self, mem: &GuestMemory, a: RingAddresses) {
        fence(Ordering::Release);
        write_u16(mem, a.driver + 2, self.avail_idx);
        self.published = self.avail_idx;
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
        if event_idx {
            let avail_event = read_u16(mem, a.device + 4 + 8 * u64::from(self.size));
            vring_need_event(avail_event, new, old)
        } else {
            read_u16(mem, a.device) & crate::queue::VRING_USED_F_NO_NOTIFY == 0
        }
    }

    pub(super) fn used(&mut self, mem: &GuestMemory, a: RingAddresses) -> Vec<(u16, u32)> {
        let idx = read_u16(mem, a.device + 2);
        fence(Ordering::Acquire);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let id = read_u32(mem, a.device + 4 + 8 * slot);
            let len = read_u32(mem, a.device + 8 + 8 * slot);
            let id = u16::try_from(id).unwrap_or(u16::MAX);
            if let Some(slots) = self.chains.remove(&id) {
                self.free.extend(slots);
            }
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub(super) fn set_interrupts(
        &mut self,
        mem: &GuestMemory,
        a: RingAddresses,
        on: bool,
        event_idx: bool,
    ) {
        if event_idx {
            // Interrupt when the device uses the element after everything seen so far.
            let event = if on {
                self.used_seen
            } else {
                self.used_seen.wrapping_sub(1)
            };
            write_u16(mem, a.driver + 4 + 2 * u64::from(self.size), event);
        } else {
            let flags = if on {
                0
            } else {
                crate::queue::VRING_AVAIL_F_NO_INTERRUPT
            };
            write_u16(mem, a.driver, flags);
        }
        fence(Ordering::SeqCst);
    }
}
