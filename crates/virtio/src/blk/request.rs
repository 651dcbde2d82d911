//! Parsing and validating a virtio-blk request (§5.2.6), once, before anything is executed.

use std::io::Read;

use super::{status, types, DWZ_F_UNMAP, HEADER_LEN, SECTOR_SIZE};
use crate::queue::DescriptorChain;

/// Bytes of one discard / write-zeroes range descriptor.
const RANGE_LEN: u32 = 16;

/// A validated request: every range is inside the device, every length fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `offset` into the writable data part.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length (a multiple of 512).
        len: u32,
    },
    /// Write the readable data part (`len` bytes) at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte length (a multiple of 512).
        len: u32,
    },
    /// Flush the write cache.
    Flush,
    /// Write the device id string into the data part (`len` bytes of room).
    GetId {
        /// Room for the id.
        len: u32,
    },
    /// Discard the ranges.
    Discard(Vec<Range>),
    /// Zero the ranges.
    WriteZeroes(Vec<Range>),
}

/// One range of a discard or write-zeroes request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// The device may deallocate (write-zeroes only).
    pub unmap: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Complete with this status byte.
    Status(u8),
    /// No device-writable byte for a status: complete with used length 0.
    NoStatus,
}

/// What the device offers and negotiated, for validation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Device size in bytes (a multiple of 512).
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_DISCARD` negotiated.
    pub discard: bool,
    /// `VIRTIO_BLK_F_WRITE_ZEROES` negotiated.
    pub write_zeroes: bool,
    /// Ranges per discard or write-zeroes request.
    pub max_range_segments: u32,
    /// Sectors per range.
    pub max_range_sectors: u32,
}

/// Parses `chain` into a request, or says how to refuse it.
pub fn parse(chain: &DescriptorChain<'_>, limits: &Limits) -> Result<Request, Reject> {
    if chain.writable_len() == 0 {
        return Err(Reject::NoStatus);
    }
    let ioerr = Reject::Status(status::IOERR);
    let mut r = chain.reader();
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header).map_err(|_| ioerr)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..16].try_into().map_err(|_| ioerr)?);
    // The status byte is the last writable byte; the rest of the writable part is data.
    let room = chain.writable_len() - 1;
    let payload = chain.readable_len() - HEADER_LEN;
    match kind {
        types::IN => {
            let offset = check_range(sector, u64::from(room), limits.capacity)?;
            Ok(Request::Read { offset, len: room })
        }
        types::OUT => {
            if limits.read_only {
                return Err(ioerr);
            }
            let offset = check_range(sector, u64::from(payload), limits.capacity)?;
            Ok(Request::Write {
                offset,
                len: payload,
            })
        }
        types::FLUSH => Ok(Request::Flush),
        types::GET_ID => Ok(Request::GetId { len: room }),
        types::DISCARD if limits.discard => {
            Ok(Request::Discard(ranges(&mut r, payload, limits, false)?))
        }
        types::WRITE_ZEROES if limits.write_zeroes => {
            Ok(Request::WriteZeroes(ranges(&mut r, payload, limits, true)?))
        }
        _ => Err(Reject::Status(status::UNSUPP)),
    }
}

/// Byte offset of `len` bytes at `sector`, if whole sectors inside the capacity.
fn check_range(sector: u64, len: u64, capacity: u64) -> Result<u64, Reject> {
    let ioerr = Reject::Status(status::IOERR);
    if len % SECTOR_SIZE != 0 {
        return Err(ioerr);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(ioerr)?;
    let end = offset.checked_add(len).ok_or(ioerr)?;
    if end > capacity {
        return Err(ioerr);
    }
    Ok(offset)
}

fn ranges(
    r: &mut crate::queue::Reader<'_>,
    payload: u32,
    limits: &Limits,
    zeroes: bool,
) -> Result<Vec<Range>, Reject> {
    let ioerr = Reject::Status(status::IOERR);
    if limits.read_only {
        return Err(ioerr);
    }
    let count = payload / RANGE_LEN;
    if payload == 0 || payload % RANGE_LEN != 0 || count > limits.max_range_segments {
        return Err(ioerr);
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut b = [0u8; RANGE_LEN as usize];
        r.read_exact(&mut b).map_err(|_| ioerr)?;
        let sector = u64::from_le_bytes(b[0..8].try_into().map_err(|_| ioerr)?);
        let sectors = u32::from_le_bytes(b[8..12].try_into().map_err(|_| ioerr)?);
        let flags = u32::from_le_bytes(b[12..16].try_into().map_err(|_| ioerr)?);
        // §5.2.6.2: unknown flags, or unmap on a discard, are unsupported.
        if flags & !DWZ_F_UNMAP != 0 || (!zeroes && flags & DWZ_F_UNMAP != 0) {
            return Err(Reject::Status(status::UNSUPP));
        }
        if sectors > limits.max_range_sectors {
            return Err(ioerr);
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let offset = check_range(sector, len, limits.capacity)?;
        out.push(Range {
            offset,
            len,
            unmap: flags & DWZ_F_UNMAP != 0,
        });
    }
    Ok(out)
}
