//! virtio-blk (VIRTIO 1.2 §5.2) on any [`oxio_block::BlockBackend`].
//!
//! Each request is validated once ([`request`]): header present and device-readable, a
//! device-writable status byte at the end, sector arithmetic checked, ranges inside the
//! capacity, directions right. Bad requests complete with `IOERR` or `UNSUPP` and the queue
//! keeps serving. Good ones go to the backend's completion interface, many in flight per
//! queue; completions are written back in batches, with one used-index publish and at most
//! one interrupt per batch. Each queue has its own worker thread.

mod config;
mod device;
pub mod request;
mod worker;

pub use config::{offered_features, BlockConfig, ConfigSpace};
pub use device::Block;
#[cfg(any(test, feature = "test-utils"))]
pub use device::DirectQueue;

/// Sector size the protocol counts in, whatever the device's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header (`type`, `reserved`, `sector`).
pub const HEADER_LEN: u32 = 16;
/// Bytes of a `GET_ID` answer.
pub const ID_BYTES: usize = 20;

/// Feature bits (§5.2.3).
pub mod features {
    /// `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The device supports cache flush.
    pub const FLUSH: u64 = 1 << 9;
    /// `topology` is valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Several request queues.
    pub const MQ: u64 = 1 << 12;
    /// DISCARD requests.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES requests.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types (§5.2.6).
pub mod types {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id string.
    pub const GET_ID: u32 = 8;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Zero ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported by this device.
    pub const UNSUPP: u8 = 2;
}

/// `virtio_blk_discard_write_zeroes.flags`: the device may deallocate the range.
pub const DWZ_F_UNMAP: u32 = 1;

#[cfg(test)]
mod tests;
