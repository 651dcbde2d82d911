//! A deterministic test pattern shared by the host and the guest: every byte depends on its
//! absolute position and a seed, so a block that lands at the wrong offset, or stale data,
//! never matches.

/// The pattern byte at absolute position `pos` for `seed`.
pub fn byte_at(pos: u64, seed: u64) -> u8 {
    let index = usize::try_from(pos % 8).unwrap_or(0);
    splitmix64(seed ^ (pos / 8)).to_le_bytes()[index]
}

/// Fills `buf`, which holds the bytes at positions `offset..offset + buf.len()`.
pub fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (pos, b) in (offset..).zip(buf.iter_mut()) {
        *b = byte_at(pos, seed);
    }
}

/// The absolute position of the first byte of `buf` (at `offset`) that differs from the
/// pattern, or `None` when all match.
pub fn first_mismatch(buf: &[u8], offset: u64, seed: u64) -> Option<u64> {
    (offset..)
        .zip(buf.iter())
        .find(|&(pos, &b)| b != byte_at(pos, seed))
        .map(|(pos, _)| pos)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_check_agree_at_any_offset() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 12_345, 7);
        assert_eq!(first_mismatch(&buf, 12_345, 7), None);
        assert_eq!(first_mismatch(&buf, 12_345, 8), Some(12_345));
        assert!(first_mismatch(&buf, 12_345 + 8, 7).is_some());
        buf[100] ^= 1;
        assert_eq!(first_mismatch(&buf, 12_345, 7), Some(12_445));
    }
}
