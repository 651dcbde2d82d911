//! Structure-aware fuzzing of the virtio-blk device, driven through the mock driver.
//!
//! A program is a header (queue size, ring features) and operations: well-formed-looking
//! requests of every type with arbitrary sectors, lengths, flags and descriptor splits; raw
//! descriptors and avail entries; and "pump", which lets the device serve everything (on the
//! memory backend, synchronously). The device must never panic, every request it pops must be
//! completed exactly once, and the queue must keep serving.

use std::sync::Arc;

use crate::blk::{self, Block, BlockConfig};
use crate::device::VirtioDevice;
use crate::fuzzing::Bytes;
use crate::memory::GuestMemory;
use crate::mock::{Buf, MockDriver, MockLayout, Placement};
use crate::queue::{RawDescriptor, RingFeatures};

const MEM: u64 = 4 << 20;
const MEM_USIZE: usize = 4 << 20;
const DISK: u64 = 1 << 20;

/// Runs one program; returns how many requests the device served.
pub fn run(data: &[u8]) -> u64 {
    let mut b = Bytes(data);
    let (Some(size), Some(f)) = (b.u8(), b.u8()) else {
        return 0;
    };
    let features = RingFeatures {
        packed: f & 1 != 0,
        indirect: f & 2 != 0,
        event_idx: f & 4 != 0,
        in_order: false,
    };
    let size = if features.packed {
        u16::from(size) % 64 + 1
    } else {
        1 << (size % 7)
    };
    let Ok(backend) = oxio_block::memory::MemoryBackend::new(DISK) else {
        return 0;
    };
    let cfg = BlockConfig {
        queue_size: size.next_power_of_two(),
        max_range_segments: 4,
        ..Default::default()
    };
    let mut dev = Block::new(Arc::new(backend), cfg);
    let _ = dev.set_features(dev.device_features());
    let Ok(mem) = GuestMemory::anonymous(&[(0, MEM_USIZE)]) else {
        return 0;
    };
    let mut d = MockDriver::new(
        mem.clone(),
        size,
        features,
        MockLayout::new(0x1000, size, MEM),
    );
    let Ok(mut q) = dev.direct_queue(d.device_queue()) else {
        return 0;
    };
    for _ in 0..512 {
        let Some(op) = b.u8() else { break };
        let ok = match op % 4 {
            0 => request(&mut b, &mut d).is_some(),
            1 => raw_desc(&mut b, &d).is_some(),
            2 => b.u16().map(|h| d.push_raw_head(h)).is_some(),
            _ => {
                d.publish();
                if !q.run_until_idle(&mem) {
                    return q.stats().popped;
                }
                let s = q.stats();
                assert_eq!(
                    s.popped, s.used,
                    "every popped request completes exactly once"
                );
                d.used();
                true
            }
        };
        if !ok {
            break;
        }
    }
    q.stats().popped
}

fn request(b: &mut Bytes<'_>, d: &mut MockDriver) -> Option<()> {
    let kind = [
        blk::types::IN,
        blk::types::OUT,
        blk::types::FLUSH,
        blk::types::GET_ID,
        blk::types::DISCARD,
        blk::types::WRITE_ZEROES,
        99,
    ][usize::from(b.u8()? % 7)];
    let sel = b.u8()?;
    let sector = if sel & 1 != 0 {
        u64::from(b.u32()?) << 24
    } else {
        u64::from(b.u16()?) % 2100
    };
    let payload = u32::from(b.u16()? % 4) * 512 + u32::from(sel >> 4) * 16;
    let room = u32::from(b.u16()? % 16) * 256;
    let flags = b.u32()?;
    let shape = b.u8()?;
    if d.in_flight() >= usize::from(d.size()) / 2 {
        d.reset_alloc();
    }
    let mut readable = kind.to_le_bytes().to_vec();
    readable.extend(0u32.to_le_bytes());
    readable.extend(sector.to_le_bytes());
    for i in 0..payload / 16 {
        readable.extend((sector + u64::from(i)).to_le_bytes());
        readable.extend((flags & 0xff).to_le_bytes());
        readable.extend((flags >> 30).to_le_bytes());
    }
    let rlen = u32::try_from(readable.len()).ok()?;
    let r = d.alloc(rlen).ok()?;
    d.write(r, &readable);
    let w = d.alloc(room.max(1) + 1).ok()?;
    let mut bufs = Vec::new();
    if shape & 1 != 0 && rlen > 16 {
        bufs.extend([Buf::r(r, 16), Buf::r(r + 16, rlen - 16)]);
    } else if shape & 2 == 0 {
        bufs.push(Buf::r(r, rlen));
    }
    if room > 0 {
        bufs.push(Buf::w(w, room));
    }
    if shape & 4 == 0 {
        bufs.push(Buf::w(w + u64::from(room), 1));
    }
    if shape & 8 != 0 {
        bufs.reverse(); // wrong directions
    }
    let placement = match shape >> 4 & 3 {
        1 => Placement::Indirect,
        2 if bufs.len() > 1 => Placement::Mixed(1),
        _ => Placement::Direct,
    };
    if bufs.is_empty() {
        return Some(());
    }
    let _ = d.add_chain(&bufs, placement);
    Some(())
}

fn raw_desc(b: &mut Bytes<'_>, d: &MockDriver) -> Option<()> {
    let index = b.u16()? % d.size();
    let addr = u64::from(b.u32()?) << (b.u8()? % 24);
    let raw = RawDescriptor {
        addr,
        len: b.u32()? % 65536,
        next_or_id: b.u16()?,
        flags: b.u16()?,
    };
    d.write_desc(index, raw);
    Some(())
}

/// Seed programs: a little of every request type, on each ring layout.
pub fn seed_programs() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in [2u8, 6, 7] {
        let mut p = vec![4, f];
        for kind in 0..7u8 {
            // op 0: request(kind, sel=0x20 (two ranges), sector 8, payload 1, room 2, flags, shape)
            p.extend([
                0,
                kind,
                0x20,
                8,
                0,
                1,
                0,
                2,
                0,
                1,
                0,
                0,
                0,
                (kind & 1) * 0x11,
                3,
            ]);
        }
        p.push(3);
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blk_seeds_run_and_are_written() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_blk");
        let _ = std::fs::create_dir_all(&dir);
        for (i, p) in seed_programs().iter().enumerate() {
            assert_eq!(run(p), 7, "every seed request is served");
            let _ = std::fs::write(dir.join(format!("seed-{i:03}")), p);
        }
    }

    #[test]
    fn blk_random_programs_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..300 {
            let data = crate::fuzzing::pseudo_random_bytes(&mut x, len);
            let _ = run(&data);
        }
    }
}
