//! Blocking implementations of every operation: used by the thread pool for everything and
//! by the io_uring queue for the metadata operations (discard, zero, cache).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::FileInner;
use crate::{BlockError, Extent, Op, Result};

/// Largest zero buffer written when zeroing must fall back to writes.
const ZERO_CHUNK: usize = 1 << 20;

/// Runs `op` to completion on the calling thread.
pub(super) fn execute(inner: &FileInner, op: &mut Op) -> Result<()> {
    match op {
        Op::Read { offset, buf } => read(inner, *offset, buf),
        Op::Write { offset, buf, fua } => {
            let fd = inner.fd_for(*offset, buf.len() as u64);
            write_all(fd, *offset, buf)?;
            if *fua {
                datasync(inner)?;
            }
            Ok(())
        }
        Op::Flush => datasync(inner),
        Op::Discard { offset, len } => discard(inner, *offset, *len),
        Op::WriteZeroes {
            offset,
            len,
            may_unmap,
            fast,
        } => write_zeroes(inner, *offset, *len, *may_unmap, *fast),
        Op::Cache { offset, len } => cache(inner, *offset, *len),
    }
}

fn with_fd<T>(fd: RawFd, f: impl FnOnce(&std::fs::File) -> T) -> T {
    // SAFETY: `fd` belongs to a `File` owned by `FileInner`, which outlives this call; the
    // ManuallyDrop wrapper makes sure the borrowed descriptor is never closed here.
    let file = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    f(&file)
}

fn read(inner: &FileInner, offset: u64, buf: &mut [u8]) -> Result<()> {
    let fd = inner.fd_for(offset, buf.len() as u64);
    let mut done = 0;
    while done < buf.len() {
        match with_fd(fd, |f| f.read_at(&mut buf[done..], offset + done as u64)) {
            // The file shrank under us: what is not there reads as zero.
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlockError::io("read", e)),
        }
    }
    Ok(())
}

fn write_all(fd: RawFd, offset: u64, data: &[u8]) -> Result<()> {
    with_fd(fd, |f| f.write_all_at(data, offset)).map_err(|e| BlockError::io("write", e))
}

fn datasync(inner: &FileInner) -> Result<()> {
    inner
        .buffered
        .sync_data()
        .map_err(|e| BlockError::io("flush", e))
}

fn fallocate(inner: &FileInner, mode: i32, offset: u64, len: u64) -> Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(BlockError::Invalid("range too large for fallocate"));
    };
    // SAFETY: plain syscall on a descriptor owned by `inner`; no memory is passed.
    let rc = unsafe { libc::fallocate(inner.buffered.as_raw_fd(), mode, off, l) };
    if rc == 0 {
        Ok(())
    } else {
        Err(BlockError::io("fallocate", io::Error::last_os_error()))
    }
}

fn punch(inner: &FileInner, offset: u64, len: u64) -> Result<()> {
    if !inner.flag(&inner.punch_ok) {
        return Err(BlockError::NotSupported("punching holes"));
    }
    let r = fallocate(
        inner,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    );
    if let Err(BlockError::NotSupported(_)) = r {
        inner.punch_ok.store(false, Ordering::Relaxed);
    }
    r
}

fn discard(inner: &FileInner, offset: u64, len: u64) -> Result<()> {
    match punch(inner, offset, len) {
        // Discard is advisory: a filesystem that cannot punch holes simply keeps the data.
        Err(BlockError::NotSupported(_)) => Ok(()),
        r => r,
    }
}

fn write_zeroes(
    inner: &FileInner,
    offset: u64,
    len: u64,
    may_unmap: bool,
    fast: bool,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    if may_unmap {
        match punch(inner, offset, len) {
            Err(BlockError::NotSupported(_)) => {}
            r => return r,
        }
    }
    if inner.flag(&inner.zero_range_ok) {
        match fallocate(
            inner,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(BlockError::NotSupported(_)) => inner.zero_range_ok.store(false, Ordering::Relaxed),
            r => return r,
        }
    }
    // No ZERO_RANGE (tmpfs, block devices on some kernels): punch, then allocate again so
    // the range is not left as a hole when the caller asked for NO_HOLE.
    match punch(inner, offset, len) {
        Ok(()) if may_unmap => return Ok(()),
        Ok(()) => match fallocate(inner, libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) | Err(BlockError::NotSupported(_)) => return Ok(()),
            Err(e) => return Err(e),
        },
        Err(BlockError::NotSupported(_)) => {}
        Err(e) => return Err(e),
    }
    if fast {
        return Err(BlockError::NotSupported("fast zeroing"));
    }
    write_zero_buffers(inner, offset, len)
}

fn write_zero_buffers(inner: &FileInner, offset: u64, len: u64) -> Result<()> {
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK)];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = usize::try_from(end - at)
            .unwrap_or(ZERO_CHUNK)
            .min(zeros.len());
        write_all(inner.buffered.as_raw_fd(), at, &zeros[..n])?;
        at += n as u64;
    }
    Ok(())
}

fn cache(inner: &FileInner, offset: u64, len: u64) -> Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: advisory syscall on an owned descriptor; no memory is passed. Errors are
    // ignored because the hint has no semantic effect.
    unsafe {
        libc::posix_fadvise(
            inner.buffered.as_raw_fd(),
            off,
            l,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    Ok(())
}

fn lseek(fd: RawFd, offset: u64, whence: i32) -> Result<Option<u64>> {
    let off = libc::off_t::try_from(offset).map_err(|_| BlockError::Invalid("offset too large"))?;
    // SAFETY: lseek on an owned descriptor; SEEK_DATA/SEEK_HOLE move the shared file
    // position, which this crate never uses (all I/O is positional).
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r >= 0 {
        return Ok(u64::try_from(r).ok());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        e => Err(BlockError::io("find allocated ranges", e)),
    }
}

/// Describes `[offset, offset+len)` with `SEEK_DATA`/`SEEK_HOLE`.
pub(super) fn extents(fd: RawFd, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let data = lseek(fd, at, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        if data > at {
            out.push(Extent {
                len: data - at,
                hole: true,
                zero: true,
            });
            at = data;
            continue;
        }
        let hole = lseek(fd, at, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        if hole <= at {
            // Should not happen; report the rest as data rather than loop.
            out.push(Extent {
                len: end - at,
                hole: false,
                zero: false,
            });
            break;
        }
        out.push(Extent {
            len: hole - at,
            hole: false,
            zero: false,
        });
        at = hole;
    }
    Ok(())
}
