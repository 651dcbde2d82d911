//! Device configuration: what the host chose, and the config space the driver reads.

use oxio_block::Capabilities;

use super::{features, SECTOR_SIZE};
use crate::device::features as ring;

/// What the host chooses for a block device.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Request queues (VIRTIO_BLK_F_MQ when more than one).
    pub num_queues: u16,
    /// Entries per queue (a power of two, at most 32768).
    pub queue_size: u16,
    /// Refuse writes even if the backend allows them.
    pub read_only: bool,
    /// `GET_ID` answer (at most 20 bytes are sent).
    pub serial: String,
    /// Largest data segment the driver may send (`size_max`).
    pub size_max: u32,
    /// Segments per discard or write-zeroes request.
    pub max_range_segments: u32,
    /// Requests in flight per queue to the backend.
    pub depth: usize,
    /// Longest time (ns) a queue's thread polls the rings and the backend before it sleeps
    /// with driver notifications on; the window adapts below it (0: never poll). While it
    /// polls, the driver does not kick (each kick costs the guest a VM exit).
    pub poll_max_ns: u64,
    /// Longest time (ns) a completion may wait for others still in flight on the backend, so
    /// that they reach the driver with one interrupt (0: publish at once). Never applies when
    /// nothing else is in flight, so a lone request is never delayed.
    pub coalesce_ns: u64,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            num_queues: 1,
            queue_size: 256,
            read_only: false,
            serial: "oxio".into(),
            size_max: 1 << 20,
            max_range_segments: 16,
            depth: 256,
            poll_max_ns: 0,
            coalesce_ns: 0,
        }
    }
}

impl BlockConfig {
    /// `seg_max`: data segments per request, leaving room for header and status.
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size).saturating_sub(2).max(1)
    }
}

/// The 60-byte `virtio_blk_config` (§5.2.4) for a backend and a host config.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; 60],
}

impl ConfigSpace {
    /// Lays out the config space.
    pub fn new(caps: &Capabilities, cfg: &BlockConfig) -> Self {
        let mut b = [0u8; 60];
        let blk_size = caps.block_size.min.max(512);
        let phys = caps.block_size.preferred.max(blk_size);
        let put = |b: &mut [u8; 60], off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(&mut b, 0, &(caps.size / SECTOR_SIZE).to_le_bytes());
        put(&mut b, 8, &cfg.size_max.to_le_bytes());
        put(&mut b, 12, &cfg.seg_max().to_le_bytes());
        put(&mut b, 20, &blk_size.to_le_bytes());
        // topology: physical block exponent (in logical blocks), min I/O size in blocks.
        let exp = (phys / blk_size).trailing_zeros();
        b[24] = u8::try_from(exp).unwrap_or(0);
        let min_io = u16::try_from(phys / blk_size).unwrap_or(1);
        put(&mut b, 26, &min_io.to_le_bytes());
        put(&mut b, 34, &cfg.num_queues.to_le_bytes());
        // Ranges of up to 1 GiB each, aligned to the block size.
        let max_sectors = u32::try_from((1u64 << 30) / SECTOR_SIZE).unwrap_or(u32::MAX);
        let align = blk_size / 512;
        put(&mut b, 36, &max_sectors.to_le_bytes());
        put(&mut b, 40, &cfg.max_range_segments.to_le_bytes());
        put(&mut b, 44, &align.to_le_bytes());
        put(&mut b, 48, &max_sectors.to_le_bytes());
        put(&mut b, 52, &cfg.max_range_segments.to_le_bytes());
        b[56] = 1; // write_zeroes_may_unmap
        Self { bytes: b }
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, out) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *out = at.and_then(|a| self.bytes.get(a)).copied().unwrap_or(0);
        }
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        let mut b = [0u8; 8];
        self.read(0, &mut b);
        u64::from_le_bytes(b)
    }
}

/// Features offered for a backend and a host config.
pub fn offered_features(caps: &Capabilities, cfg: &BlockConfig) -> u64 {
    let mut f = ring::VERSION_1
        | ring::EVENT_IDX
        | ring::INDIRECT_DESC
        | ring::RING_PACKED
        | features::SIZE_MAX
        | features::SEG_MAX
        | features::BLK_SIZE
        | features::TOPOLOGY;
    if cfg.read_only || caps.read_only {
        f |= features::RO;
    } else {
        if caps.discard {
            f |= features::DISCARD;
        }
        if caps.write_zeroes {
            f |= features::WRITE_ZEROES;
        }
    }
    if caps.flush {
        f |= features::FLUSH;
    }
    if cfg.num_queues > 1 {
        f |= features::MQ;
    }
    f
}
