//! Data byte order inside flits (omnixtend.md §1.5) and PutPartialData masks.
//!
//! The specification puts the byte at address `a` in lane `a mod 8` of a 64-bit word sent
//! big-endian, so each 8-byte flit is reversed on the wire. The C driver, its memory node and
//! Hofmann's host library copy bytes raw. Either order returns what a driver wrote when the
//! same driver reads it back; they differ only in the memory image the endpoint holds.

use super::FLIT;

/// How data bytes map to wire positions within a flit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneOrder {
    /// Host byte i of each flit is wire byte i (the C driver and its memory node; default).
    #[default]
    Raw,
    /// The specification's lanes: each flit is byte-reversed on the wire.
    Spec,
}

impl std::str::FromStr for LaneOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" | "c" => Ok(LaneOrder::Raw),
            "spec" => Ok(LaneOrder::Spec),
            _ => Err(format!(
                "unknown lane order {s:?}: use \"raw\" (C-compatible) or \"spec\""
            )),
        }
    }
}

/// Wire position of the byte at `addr`: the lane within the flit, reversed for `Spec`.
pub fn wire_pos(order: LaneOrder, addr: u64) -> usize {
    // `addr % 8` is below 8, so the cast is lossless.
    #[allow(clippy::cast_possible_truncation)]
    let lane = (addr % FLIT as u64) as usize;
    match order {
        LaneOrder::Raw => lane,
        LaneOrder::Spec => FLIT - 1 - lane,
    }
}

/// Copies memory bytes `src` (starting at address `addr`) into wire flits `dst`.
///
/// For transfers of at least a flit, `src` and `dst` have the same length and `addr` is
/// flit-aligned; shorter transfers land in their lanes of a single flit.
pub fn to_wire(order: LaneOrder, addr: u64, src: &[u8], dst: &mut [u8]) {
    if src.len() < FLIT {
        for (i, b) in src.iter().enumerate() {
            if let Some(d) = dst.get_mut(wire_pos(order, addr + i as u64)) {
                *d = *b;
            }
        }
        return;
    }
    let n = src.len().min(dst.len());
    match order {
        LaneOrder::Raw => dst[..n].copy_from_slice(&src[..n]),
        LaneOrder::Spec => {
            for (d, s) in dst[..n]
                .chunks_exact_mut(FLIT)
                .zip(src[..n].chunks_exact(FLIT))
            {
                for (i, b) in s.iter().enumerate() {
                    d[FLIT - 1 - i] = *b;
                }
            }
        }
    }
}

/// Copies wire flits `src` into memory bytes `dst` (starting at address `addr`): the inverse
/// of [`to_wire`].
pub fn from_wire(order: LaneOrder, addr: u64, src: &[u8], dst: &mut [u8]) {
    if dst.len() < FLIT {
        for (i, d) in dst.iter_mut().enumerate() {
            if let Some(b) = src.get(wire_pos(order, addr + i as u64)) {
                *d = *b;
            }
        }
        return;
    }
    // The reversal is its own inverse, so the same copy works both ways.
    let n = src.len().min(dst.len());
    match order {
        LaneOrder::Raw => dst[..n].copy_from_slice(&src[..n]),
        LaneOrder::Spec => {
            for (d, s) in dst[..n]
                .chunks_exact_mut(FLIT)
                .zip(src[..n].chunks_exact(FLIT))
            {
                for (i, b) in s.iter().enumerate() {
                    d[FLIT - 1 - i] = *b;
                }
            }
        }
    }
}

/// Mask word for bytes `from..to` of a 64-byte PutPartialData group: bit k enables byte k.
pub fn group_mask(from: usize, to: usize) -> u64 {
    let to = to.min(64);
    if from >= to {
        return 0;
    }
    let width = to - from;
    let ones = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_copies_and_spec_reverses_each_flit() {
        let mem: Vec<u8> = (0x40..0x50).collect();
        let mut wire = [0u8; 16];
        to_wire(LaneOrder::Raw, 0x40, &mem, &mut wire);
        assert_eq!(wire[..], mem[..]);
        to_wire(LaneOrder::Spec, 0x40, &mem, &mut wire);
        assert_eq!(wire[..8], [0x47, 0x46, 0x45, 0x44, 0x43, 0x42, 0x41, 0x40]);
        let mut back = [0u8; 16];
        from_wire(LaneOrder::Spec, 0x40, &wire, &mut back);
        assert_eq!(back[..], mem[..]);
    }

    #[test]
    fn sub_flit_data_sits_in_its_lanes() {
        let mut wire = [0u8; 8];
        to_wire(LaneOrder::Spec, 0x1002, &[0xaa, 0xbb], &mut wire);
        assert_eq!(wire, [0, 0, 0, 0, 0xbb, 0xaa, 0, 0]);
        let mut back = [0u8; 2];
        from_wire(LaneOrder::Spec, 0x1002, &wire, &mut back);
        assert_eq!(back, [0xaa, 0xbb]);
        to_wire(LaneOrder::Raw, 0x1002, &[0xaa, 0xbb], &mut wire);
        assert_eq!(wire[2..4], [0xaa, 0xbb]);
    }

    #[test]
    fn group_masks() {
        assert_eq!(group_mask(0, 64), u64::MAX);
        assert_eq!(group_mask(3, 5), 0b11000);
        assert_eq!(group_mask(5, 5), 0);
        assert_eq!(group_mask(60, 70), 0xf << 60);
    }
}
