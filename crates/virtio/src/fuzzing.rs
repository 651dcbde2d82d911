//! Structure-aware fuzzing of the queue engine, shared by the cargo-fuzz targets in `fuzz/`
//! and by tests that replay and seed them.
//!
//! The input is a little program for a driver and a device sharing one queue: a header
//! (queue size, ring features) and then operations, each an opcode byte and fixed-size
//! arguments. Any byte string decodes to some program, so libFuzzer's mutations stay
//! meaningful; [`encode`] builds seed programs. Operations mix a well-behaved driver (the
//! mock) with raw writes of arbitrary descriptors and ring fields, and the device side runs
//! the engine as a device would. The engine must never panic, loop without bound, or hand
//! out a buffer outside guest memory.

use std::io::{Read, Write};

use crate::memory::GuestMemory;
use crate::mock::{Buf, MockDriver, MockLayout, Placement};
use crate::queue::{DescriptorChain, OwnedDescriptorChain, Queue, RawDescriptor, RingFeatures};

/// Guest memory: two back-to-back regions of `HALF` bytes (chains may cross between them).
/// Small, because every run zeroes it; the largest fuzzed ring (512 entries) needs 16 KiB.
const HALF: usize = 1 << 17;
const MEM: u64 = 2 * HALF as u64;

/// One step of a fuzz program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The driver adds a chain of `(len, device-writable)` buffers.
    AddChain {
        /// Buffers.
        bufs: Vec<(u16, bool)>,
        /// 0 direct, 1 indirect, n ≥ 2 mixed after `n - 1` direct ones.
        placement: u8,
    },
    /// The driver publishes what it added.
    Publish,
    /// A raw descriptor written into the ring at `index`.
    WriteDesc {
        /// Ring slot.
        index: u16,
        /// How to pick the address: 0 data area, 1 end of memory, 2 raw, 3 ring area.
        sel: u8,
        /// Address offset (or raw low bits).
        off: u32,
        /// Length.
        len: u32,
        /// Flags.
        flags: u16,
        /// `next` or buffer id.
        next: u16,
    },
    /// Split: a raw head pushed to the avail ring and published.
    PushHead(u16),
    /// Split: the avail index set to any value.
    SetAvailIdx(u16),
    /// The device pops up to `n` chains; `hold` keeps them in flight instead of completing.
    Pop {
        /// How many.
        n: u8,
        /// Keep them in flight.
        hold: bool,
    },
    /// The device completes up to `n` held chains.
    Complete(u8),
    /// The device publishes.
    PublishUsed,
    /// The device re-enables notifications.
    Enable,
    /// The device disables notifications.
    Disable,
    /// The driver asks for interrupts, or not.
    SetInterrupts(bool),
    /// A raw 16-bit write into a ring area (0 desc, 1 driver, 2 device) at `off`.
    Poke {
        /// Area.
        area: u8,
        /// Offset, reduced modulo the area size.
        off: u16,
        /// Value.
        value: u16,
    },
    /// The device saves its state and restarts from it.
    SaveRestore,
}

/// Program header: queue size and ring features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Queue size (reduced to a valid one).
    pub size: u16,
    /// Bit 0 indirect, 1 event_idx, 2 in_order.
    pub features: u8,
}

/// Encodes a program (for seed corpora).
pub fn encode(h: Header, ops: &[Op]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(h.size.to_le_bytes());
    b.push(h.features);
    for op in ops {
        match op {
            Op::AddChain { bufs, placement } => {
                b.push(0);
                b.push(u8::try_from(bufs.len()).unwrap_or(u8::MAX));
                b.push(*placement);
                for (len, w) in bufs {
                    b.extend(len.to_le_bytes());
                    b.push(u8::from(*w));
                }
            }
            Op::Publish => b.push(1),
            Op::WriteDesc {
                index,
                sel,
                off,
                len,
                flags,
                next,
            } => {
                b.push(2);
                b.extend(index.to_le_bytes());
                b.push(*sel);
                b.extend(off.to_le_bytes());
                b.extend(len.to_le_bytes());
                b.extend(flags.to_le_bytes());
                b.extend(next.to_le_bytes());
            }
            Op::PushHead(h) => {
                b.push(3);
                b.extend(h.to_le_bytes());
            }
            Op::SetAvailIdx(i) => {
                b.push(4);
                b.extend(i.to_le_bytes());
            }
            Op::Pop { n, hold } => b.extend([5, *n, u8::from(*hold)]),
            Op::Complete(n) => b.extend([6, *n]),
            Op::PublishUsed => b.push(7),
            Op::Enable => b.push(8),
            Op::Disable => b.push(9),
            Op::SetInterrupts(on) => b.extend([10, u8::from(*on)]),
            Op::Poke { area, off, value } => {
                b.extend([11, *area]);
                b.extend(off.to_le_bytes());
                b.extend(value.to_le_bytes());
            }
            Op::SaveRestore => b.push(12),
        }
    }
    b
}

/// A cursor over fuzz input: little-endian integers, `None` once the input runs out.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Bytes<'_> {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&x, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(x)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// Decodes a program; trailing bytes that do not form a whole operation are ignored.
pub fn decode(data: &[u8]) -> Option<(Header, Vec<Op>)> {
    let mut b = Bytes(data);
    let h = Header {
        size: b.u16()?,
        features: b.u8()?,
    };
    let mut ops = Vec::new();
    while let Some(op) = decode_op(&mut b) {
        ops.push(op);
    }
    Some((h, ops))
}

fn decode_op(b: &mut Bytes<'_>) -> Option<Op> {
    Some(match b.u8()? % 13 {
        0 => {
            let n = b.u8()? % 9;
            let placement = b.u8()?;
            let mut bufs = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                bufs.push((b.u16()?, b.u8()? & 1 == 1));
            }
            Op::AddChain { bufs, placement }
        }
        1 => Op::Publish,
        2 => Op::WriteDesc {
            index: b.u16()?,
            sel: b.u8()?,
            off: b.u32()?,
            len: b.u32()?,
            flags: b.u16()?,
            next: b.u16()?,
        },
        3 => Op::PushHead(b.u16()?),
        4 => Op::SetAvailIdx(b.u16()?),
        5 => Op::Pop {
            n: b.u8()?,
            hold: b.u8()? & 1 == 1,
        },
        6 => Op::Complete(b.u8()?),
        7 => Op::PublishUsed,
        8 => Op::Enable,
        9 => Op::Disable,
        10 => Op::SetInterrupts(b.u8()? & 1 == 1),
        11 => Op::Poke {
            area: b.u8()?,
            off: b.u16()?,
            value: b.u16()?,
        },
        _ => Op::SaveRestore,
    })
}

thread_local! {
    static MEMORY: Option<GuestMemory> =
        GuestMemory::anonymous(&[(0, HALF), (HALF as u64, HALF)]).ok();
}

/// Two back-to-back regions, reused between runs and zeroed so each run is deterministic.
fn fresh_memory() -> Option<GuestMemory> {
    let mem = MEMORY.with(Clone::clone)?;
    let zeros = vec![0u8; HALF];
    for base in [0u64, HALF as u64] {
        vm_memory::Bytes::write_slice(mem.mmap(), &zeros, vm_memory::GuestAddress(base)).ok()?;
    }
    Some(mem)
}

struct World {
    d: MockDriver,
    q: Queue,
    mem: GuestMemory,
    held: Vec<OwnedDescriptorChain>,
    packed: bool,
}

/// Runs one program on a split (`packed == false`) or packed queue.
pub fn run(data: &[u8], packed: bool) {
    let Some((h, ops)) = decode(data) else { return };
    let size = if packed {
        h.size % 512 + 1
    } else {
        1 << (h.size % 10)
    };
    let features = RingFeatures {
        packed,
        indirect: h.features & 1 != 0,
        event_idx: h.features & 2 != 0,
        in_order: h.features & 4 != 0,
    };
    let Some(mem) = fresh_memory() else { return };
    let layout = MockLayout::new(0x1000, size, MEM);
    let d = MockDriver::new(mem.clone(), size, features, layout);
    let q = d.device_queue();
    let mut w = World {
        d,
        q,
        mem,
        held: Vec::new(),
        packed,
    };
    for op in ops.iter().take(4096) {
        if !w.step(op) {
            break;
        }
    }
}

impl World {
    /// Runs one operation; `false` once the queue is broken (the device would reset it).
    fn step(&mut self, op: &Op) -> bool {
        match op {
            Op::AddChain { bufs, placement } => self.add_chain(bufs, *placement),
            Op::Publish => self.d.publish(),
            Op::WriteDesc {
                index,
                sel,
                off,
                len,
                flags,
                next,
            } => {
                let data = MockLayout::new(0x1000, self.d.size(), MEM).data_start;
                let addr = match sel % 4 {
                    0 => data + u64::from(*off) % (MEM - data),
                    1 => MEM - u64::from(*off % 64),
                    2 => u64::from(*off) << (sel / 4 % 40),
                    _ => self.d.addresses().desc + u64::from(*off % 4096),
                };
                let raw = RawDescriptor {
                    addr,
                    len: *len,
                    next_or_id: *next,
                    flags: *flags,
                };
                self.d.write_desc(index % self.d.size(), raw);
            }
            Op::PushHead(h) => self.d.push_raw_head(*h),
            Op::SetAvailIdx(i) => self.d.set_raw_avail_idx(*i),
            Op::Pop { n, hold } => return self.pop(*n, *hold),
            Op::Complete(n) => {
                for c in self.held.drain(..usize::from(*n).min(self.held.len())) {
                    self.q
                        .add_used(c.chain().id(), c.chain().writable_len() / 2);
                }
            }
            Op::PublishUsed => {
                self.q.publish_used();
                self.d.used();
            }
            Op::Enable => return self.q.enable_notification(&self.mem).is_ok(),
            Op::Disable => self.q.disable_notification(),
            Op::SetInterrupts(on) => self.d.set_interrupts(*on),
            Op::Poke { area, off, value } => self.poke(*area, *off, *value),
            Op::SaveRestore => {
                let s = self.q.state();
                let mut q = Queue::new(self.q.max_size());
                if q.restore(s).is_ok() {
                    self.q = q;
                }
            }
        }
        true
    }

    fn add_chain(&mut self, bufs: &[(u16, bool)], placement: u8) {
        let mut list = Vec::new();
        for &(len, write) in bufs {
            let Ok(addr) = self.d.alloc(u32::from(len)) else {
                self.d.reset_alloc();
                return;
            };
            list.push(Buf {
                addr,
                len: u32::from(len),
                write,
            });
        }
        let placement = match placement {
            0 => Placement::Direct,
            1 => Placement::Indirect,
            n => Placement::Mixed(usize::from(n - 1)),
        };
        let _ = self.d.add_chain(&list, placement);
    }

    fn pop(&mut self, n: u8, hold: bool) -> bool {
        for _ in 0..n {
            match self.q.pop(&self.mem) {
                Ok(Some(c)) => {
                    check_chain(&self.mem, &c);
                    if hold && self.held.len() < 4096 {
                        self.held.push(c.into_owned(&self.mem));
                    } else {
                        let len = serve(&c);
                        self.q.add_used(c.id(), len);
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        true
    }

    fn poke(&self, area: u8, off: u16, value: u16) {
        let a = self.d.addresses();
        let n = u64::from(self.d.size());
        let (base, len) = match area % 3 {
            0 => (a.desc, 16 * n),
            1 => (a.driver, if self.packed { 4 } else { 6 + 2 * n }),
            _ => (a.device, if self.packed { 4 } else { 6 + 8 * n }),
        };
        let off = (u64::from(off) % len) & !1;
        self.d.write(base + off, &value.to_le_bytes());
    }
}

/// Every segment of a chain must lie in guest memory, contiguous in one mapping, and the
/// totals must add up.
fn check_chain(mem: &GuestMemory, c: &DescriptorChain<'_>) {
    for s in c.readable().iter().chain(c.writable()) {
        let first = mem.guest_address(s.as_ptr());
        let last_ptr = s.as_ptr().wrapping_add(s.len() as usize - 1);
        let last = mem.guest_address(last_ptr);
        assert!(first.is_some() && last == first.map(|f| f + u64::from(s.len()) - 1));
    }
    let r: u64 = c.readable().iter().map(|s| u64::from(s.len())).sum();
    let w: u64 = c.writable().iter().map(|s| u64::from(s.len())).sum();
    assert_eq!(
        (r, w),
        (u64::from(c.readable_len()), u64::from(c.writable_len()))
    );
}

/// Reads everything and writes half the space, as a device would.
fn serve(c: &DescriptorChain<'_>) -> u32 {
    let mut sink = Vec::new();
    let _ = c.reader().read_to_end(&mut sink);
    let mut w = c.writer();
    let n = (c.writable_len() / 2) as usize;
    let _ = w.write_all(&vec![0x5a; n.min(1 << 16)]);
    w.bytes_written()
}

/// `len` bytes from a xorshift generator (deterministic noise for never-panic tests).
#[cfg(test)]
pub(crate) fn pseudo_random_bytes(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Seed programs: well-formed traffic of each kind, plus a few classic malformations.
pub fn seed_programs() -> Vec<Vec<u8>> {
    let chain = |n: u16, placement| Op::AddChain {
        bufs: (0..n).map(|i| (64 + i * 16, i + 1 == n)).collect(),
        placement,
    };
    let traffic = |placement| {
        let mut ops = Vec::new();
        for _ in 0..8 {
            ops.extend([chain(3, placement), chain(1, 0), Op::Publish]);
            ops.extend([
                Op::Pop { n: 4, hold: true },
                Op::Complete(4),
                Op::PublishUsed,
            ]);
        }
        ops
    };
    let cycle = vec![
        Op::WriteDesc {
            index: 0,
            sel: 0,
            off: 0,
            len: 8,
            flags: 1,
            next: 1,
        },
        Op::WriteDesc {
            index: 1,
            sel: 0,
            off: 0,
            len: 8,
            flags: 1,
            next: 0,
        },
        Op::PushHead(0),
        Op::Pop { n: 1, hold: false },
    ];
    let outside = vec![
        Op::WriteDesc {
            index: 0,
            sel: 2,
            off: 0xffff_ffff,
            len: 64,
            flags: 0,
            next: 0,
        },
        Op::PushHead(0),
        Op::Pop { n: 1, hold: false },
        Op::SetAvailIdx(0x7fff),
        Op::Pop { n: 1, hold: false },
    ];
    let notify = vec![
        Op::SetInterrupts(true),
        Op::Disable,
        chain(2, 0),
        Op::Publish,
        Op::Enable,
        Op::Pop { n: 2, hold: false },
        Op::PublishUsed,
        Op::SaveRestore,
        chain(2, 1),
        Op::Publish,
        Op::Pop { n: 2, hold: false },
        Op::PublishUsed,
    ];
    let mut out = Vec::new();
    for features in [0u8, 1, 3, 7] {
        for size in [8u16, 3, 255] {
            let h = Header { size, features };
            for ops in [
                traffic(0),
                traffic(1),
                traffic(2),
                cycle.clone(),
                outside.clone(),
                notify.clone(),
            ] {
                out.push(encode(h, &ops));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        for p in seed_programs() {
            let (h, ops) = decode(&p).unwrap();
            assert_eq!(encode(h, &ops), p);
        }
    }

    /// Runs every seed on both layouts and writes the seed corpora for `fuzz/`.
    #[test]
    fn seeds_run_and_are_written() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (target, packed) in [("virtio_split", false), ("virtio_packed", true)] {
            let dir = root.join(target);
            let _ = std::fs::create_dir_all(&dir);
            for (i, p) in seed_programs().iter().enumerate() {
                run(p, packed);
                let _ = std::fs::write(dir.join(format!("seed-{i:03}")), p);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_u64;
        for len in 0..400 {
            let data = pseudo_random_bytes(&mut x, len);
            run(&data, false);
            run(&data, true);
        }
    }
}
