//! `NBD_CMD_BLOCK_STATUS` for the `base:allocation` context.

use oxio_block::{BlockError, Extent};

use super::export::{Export, TransmissionMode};
use crate::wire::{cflags, chunk, state, RequestHeader};

/// Most descriptors in one reply (the specification's SHOULD limit).
const MAX_DESCRIPTORS: usize = 1 << 20;
/// Longest descriptor in a 32-bit reply: 2 GiB keeps it aligned to any block size.
const MAX_DESCRIPTOR_32: u64 = 1 << 31;

/// The chunk type for this mode.
pub(crate) fn chunk_kind(mode: &TransmissionMode) -> u16 {
    if mode.extended_headers() {
        chunk::BLOCK_STATUS_EXT
    } else {
        chunk::BLOCK_STATUS
    }
}

fn flags(e: &Extent) -> u32 {
    (if e.hole { state::HOLE } else { 0 }) | (if e.zero { state::ZERO } else { 0 })
}

/// Builds the chunk payload describing `[offset, offset+length)`. The caller has validated
/// the range and that the context was negotiated.
pub(crate) fn reply(
    export: &Export,
    mode: &TransmissionMode,
    h: &RequestHeader,
) -> Result<Vec<u8>, BlockError> {
    let mut extents = Vec::new();
    export.backend().extents(h.offset, h.length, &mut extents)?;
    let mut descs: Vec<(u64, u32)> = Vec::new();
    for e in extents.iter().filter(|e| e.len > 0) {
        match descs.last_mut() {
            Some((len, f)) if *f == flags(e) => *len += e.len,
            _ => descs.push((e.len, flags(e))),
        }
    }
    if descs.is_empty() {
        descs.push((h.length, 0));
    }
    let ext = mode.extended_headers();
    if !ext {
        descs = split_32(descs);
    }
    let one = h.flags & cflags::REQ_ONE != 0;
    descs.truncate(if one { 1 } else { MAX_DESCRIPTORS });
    let id = mode.allocation_context().unwrap_or(0);
    let mut out = Vec::with_capacity(8 + descs.len() * 16);
    out.extend_from_slice(&id.to_be_bytes());
    if ext {
        out.extend_from_slice(&u32::try_from(descs.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (len, f) in descs {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&u64::from(f).to_be_bytes());
        }
    } else {
        for (len, f) in descs {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&f.to_be_bytes());
        }
    }
    Ok(out)
}

fn split_32(descs: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
    let mut out = Vec::with_capacity(descs.len());
    for (mut len, f) in descs {
        while len > MAX_DESCRIPTOR_32 {
            out.push((MAX_DESCRIPTOR_32, f));
            len -= MAX_DESCRIPTOR_32;
        }
        out.push((len, f));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oxio_block::memory::MemoryBackend;
    use oxio_block::BlockingQueue;

    use super::*;
    use crate::wire::Command;

    #[test]
    fn holes_and_data_are_described_and_req_one_limits() {
        let backend = Arc::new(MemoryBackend::new(1 << 20).unwrap());
        let mut q = BlockingQueue::new(oxio_block::BlockBackend::open_queue(&*backend, 1).unwrap());
        q.write_at(65536, &[1; 65536], false).unwrap();
        let e = Export::new("", backend);
        let mode = TransmissionMode::structured(Some(7));
        let mut h = RequestHeader {
            flags: 0,
            command: Command::BlockStatus,
            cookie: 1,
            offset: 0,
            length: 1 << 20,
        };
        let p = reply(&e, &mode, &h).unwrap();
        let words: Vec<u32> = p
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, vec![7, 65536, 3, 65536, 0, (1 << 20) - 131072, 3]);
        h.flags = cflags::REQ_ONE;
        assert_eq!(reply(&e, &mode, &h).unwrap().len(), 12);
        let ext = reply(&e, &TransmissionMode::extended(Some(7)), &h).unwrap();
        assert_eq!(ext.len(), 8 + 16);
        assert_eq!(
            split_32(vec![(5 << 30, 0)]),
            vec![(2 << 30, 0), (2 << 30, 0), (1 << 30, 0)]
        );
    }
}
