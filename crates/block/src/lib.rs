//! The block layer every oxio front-end shares: a completion-based [`BlockBackend`] and its
//! backends.
//!
//! ```text
//!  front-end thread/task                       backend
//!  ─────────────────────                       ───────
//!  queue = backend.open_queue(depth)   ─────>  one queue per thread or connection
//!  queue.submit(Request { tag, op })  ┐        (memory: runs inline;
//!  queue.submit(...)                  ├─────>   file: io_uring SQEs or a thread pool)
//!  queue.commit()                     ┘
//!  queue.reap(&mut completions)       <─────   completions, in any order, by `tag`
//!  wait on queue.notifier() (eventfd) <─────   signalled when completions arrive later
//! ```
//!
//! Why completion-based: the NBD server keeps up to hundreds of requests in flight per
//! connection and answers them out of order; virtio-blk pops a whole batch of descriptor
//! chains and publishes the used ring once per batch; the OmniXtend requester pipelines many
//! TileLink transactions. All three want "submit many, reap many, wake me on an fd", and none
//! of them should need tokio to do it (virtio-blk runs on plain vhost-user worker threads).
//!
//! Buffers are owned ([`IoBuf`], 4 KiB aligned so `O_DIRECT` works) and travel with the
//! request until its completion hands them back, so no backend ever borrows front-end memory
//! across an asynchronous boundary.
//!
//! Front-ends validate requests against [`Capabilities`] before submitting (the NBD server
//! maps each failure to the protocol's errno); backends check again with
//! [`Capabilities::check_range`] and complete bad requests with an error rather than panic.

mod blocking;
mod buf;
mod direct;
mod error;
pub mod file;
pub mod memory;
mod notify;
pub mod omnixtend;
mod spec;

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub use blocking::BlockingQueue;
pub use buf::IoBuf;
pub use direct::{DirectAccess, DIRECT_MAX_SLICES};
pub use error::{BlockError, Result};
pub use notify::Notifier;
pub use spec::{open_spec, parse_size, BackendSpec, SpecError};

/// Largest single read or write payload a front-end should submit (32 MiB, the NBD and Linux
/// kernel maximum). Backends accept larger buffers; front-ends use this for their limits.
pub const MAX_IO_BYTES: u32 = 32 << 20;

/// One operation on the device. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum Op {
    /// Fill `buf` (its whole length) from `offset`.
    Read {
        /// Byte offset on the device.
        offset: u64,
        /// Destination; its length is the read length. Handed back in the completion.
        buf: IoBuf,
    },
    /// Write all of `buf` at `offset`; with `fua`, complete only once the data is durable.
    Write {
        /// Byte offset on the device.
        offset: u64,
        /// Source data. Handed back in the completion so callers can reuse it.
        buf: IoBuf,
        /// Force unit access: durable before completion.
        fua: bool,
    },
    /// Make every write completed so far durable.
    Flush,
    /// Advisory: the range's content is no longer needed (it reads back as zero here).
    Discard {
        /// Byte offset on the device.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make the range read back as zeroes.
    WriteZeroes {
        /// Byte offset on the device.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The backend may deallocate the range (punch a hole) instead of writing zeroes.
        may_unmap: bool,
        /// Fail quickly with `ENOTSUP` (changing nothing) unless zeroing is faster than a
        /// write of zeroes would be.
        fast: bool,
    },
    /// Advisory prefetch of the range; no semantic effect.
    Cache {
        /// Byte offset on the device.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Op {
    /// The byte range the operation touches, `None` for [`Op::Flush`].
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Op::Read { offset, buf } | Op::Write { offset, buf, .. } => {
                Some((*offset, buf.len() as u64))
            }
            Op::Discard { offset, len }
            | Op::WriteZeroes { offset, len, .. }
            | Op::Cache { offset, len } => Some((*offset, *len)),
            Op::Flush => None,
        }
    }

    /// Whether the operation modifies the device.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Write { .. } | Op::Discard { .. } | Op::WriteZeroes { .. }
        )
    }

    /// Takes the buffer out of a read or write, for handing back in a completion.
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// A submitted operation with the caller's tag, echoed in its [`Completion`].
#[derive(Debug)]
pub struct Request {
    /// Opaque to the backend; identifies the completion.
    pub tag: u64,
    /// What to do.
    pub op: Op,
}

/// The outcome of one [`Request`].
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// Success, or why it failed.
    pub result: Result<()>,
    /// The request's buffer (filled, for reads), for reads and writes.
    pub buf: Option<IoBuf>,
}

impl Completion {
    /// A completion that returns the request's buffer with `result`.
    pub fn new(req: Request, result: Result<()>) -> Self {
        Completion {
            tag: req.tag,
            result,
            buf: req.op.into_buf(),
        }
    }
}

/// The submission queue was full; the request is handed back untouched.
#[derive(Debug)]
pub struct QueueFull(pub Request);

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("The block queue is full; reap completions before submitting more")
    }
}

impl std::error::Error for QueueFull {}

/// Block size constraints, as NBD's `NBD_INFO_BLOCK_SIZE` and virtio-blk's config express
/// them. All are powers of two except `max`, which may be any value ≥ `preferred`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest granularity the backend handles without read-modify-write (1 = any byte).
    pub min: u32,
    /// The size that performs best.
    pub preferred: u32,
    /// Largest payload of a single read or write.
    pub max: u32,
}

/// What a backend can do. Front-ends advertise exactly these and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Device size in bytes.
    pub size: u64,
    /// Writes, discards and zeroing fail with `EPERM`.
    pub read_only: bool,
    /// [`Op::Flush`] does something (data may be cached before it).
    pub flush: bool,
    /// Writes honour `fua` natively or by flushing.
    pub fua: bool,
    /// [`Op::Discard`] releases storage.
    pub discard: bool,
    /// [`Op::WriteZeroes`] is efficient (not emulated by the front-end).
    pub write_zeroes: bool,
    /// [`Op::WriteZeroes`] with `fast` can succeed.
    pub fast_zero: bool,
    /// [`Op::Cache`] prefetches.
    pub cache: bool,
    /// Every queue sees every other queue's completed writes, and a flush on any queue
    /// covers them all (NBD's `CAN_MULTI_CONN`).
    pub multi_conn: bool,
    /// [`BlockBackend::extents`] reports real allocation status.
    pub extents: bool,
    /// Seeks are expensive (a hint).
    pub rotational: bool,
    /// Block size constraints.
    pub block_size: BlockSizes,
}

impl Capabilities {
    /// Checks that `[offset, offset+len)` lies within the device.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Checks a request against the capabilities: range, read-only, supported operation.
    pub fn check(&self, op: &Op) -> Result<()> {
        if op.is_write() && self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if let Op::WriteZeroes { fast: true, .. } = op {
            if !self.fast_zero {
                return Err(BlockError::NotSupported("fast zeroing"));
            }
        }
        match op.range() {
            Some((offset, len)) => self.check_range(offset, len),
            None => Ok(()),
        }
    }
}

/// Allocation status of a run of bytes, as NBD's `base:allocation` context reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (> 0).
    pub len: u64,
    /// The range is not allocated (a hole).
    pub hole: bool,
    /// The range reads as zeroes.
    pub zero: bool,
}

/// A block device implementation. Shared by every front-end thread (`Send + Sync`); each
/// thread or connection opens its own [`BlockQueue`].
pub trait BlockBackend: Send + Sync + fmt::Debug {
    /// What the backend supports; constant for the backend's lifetime.
    fn capabilities(&self) -> Capabilities;

    /// Opens a queue that keeps up to `depth` requests in flight.
    fn open_queue(&self, depth: usize) -> Result<Box<dyn BlockQueue>>;

    /// Appends the allocation status of `[offset, offset+len)` to `out`, in order, starting at
    /// `offset`. It may describe less than `len` (at least one extent) but never more. The
    /// default says "allocated data", which is always a safe answer.
    fn extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        self.capabilities().check_range(offset, len)?;
        if len > 0 {
            out.push(Extent {
                len,
                hole: false,
                zero: false,
            });
        }
        Ok(())
    }

    /// A one-line human description for logs and `--help` output.
    fn describe(&self) -> String;

    /// Direct access to the storage, for backends whose data lives in this process's memory
    /// (see [`DirectAccess`]). Front-ends that can use it skip queues and buffers entirely;
    /// everything else uses [`BlockBackend::open_queue`]. The default is `None`.
    fn direct(&self) -> Option<&dyn DirectAccess> {
        None
    }
}

/// A submission/completion queue on a backend, owned by one thread at a time.
///
/// Protocol: `submit` any number of requests (up to `depth` not yet reaped), `commit` to
/// make sure the backend started them, then `reap`. When `reap` returns nothing and requests
/// are in flight, wait until [`BlockQueue::notifier`] is readable, then `reap` again.
/// Completions that happen inside `submit`/`commit` (the memory backend completes inline)
/// are available to `reap` at once and do not signal the notifier.
pub trait BlockQueue: Send + fmt::Debug {
    /// Queues one request. The backend may start it now or at the next `commit`.
    fn submit(&mut self, req: Request) -> std::result::Result<(), QueueFull>;

    /// Starts every submitted request (one system call for a batch, where it matters).
    fn commit(&mut self) -> Result<()>;

    /// Moves every available completion to `out`; returns how many. Clears the notifier.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize;

    /// An eventfd that becomes readable when completions arrive asynchronously.
    fn notifier(&self) -> BorrowedFd<'_>;

    /// Requests submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// The `depth` the queue was opened with.
    fn depth(&self) -> usize;

    /// Starts a read into (`write == false`) or a write from (`write == true`) memory the
    /// caller owns, described by `iov`, at `offset`: the zero-copy path for front-ends whose
    /// data already sits in memory that outlives the request (a VMM's guest RAM, which
    /// virtio-blk would otherwise copy through an [`IoBuf`]). It completes through
    /// [`reap`](Self::reap) like any request, with `buf: None`. A queue that cannot do it
    /// returns [`VectoredUnsupported`] without side effects (the default) and the caller
    /// uses [`submit`](Self::submit) instead. `iov` itself is copied.
    ///
    /// # Safety
    ///
    /// The memory `iov` describes must stay mapped and writable (reads), and the caller must
    /// not touch it (reads) or change it (writes), until the completion for `tag` has been
    /// reaped or the queue dropped (dropping waits for the kernel).
    unsafe fn submit_vectored(
        &mut self,
        tag: u64,
        offset: u64,
        iov: &[RawSlice],
        write: bool,
    ) -> std::result::Result<(), VectoredUnsupported> {
        let _ = (tag, offset, iov, write);
        Err(VectoredUnsupported)
    }
}

/// One piece of caller-owned memory for [`BlockQueue::submit_vectored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSlice {
    /// First byte.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a plain address and length; the `submit_vectored` contract governs access.
unsafe impl Send for RawSlice {}

/// [`BlockQueue::submit_vectored`] is not available for this queue or request: use
/// [`BlockQueue::submit`] with an [`IoBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectoredUnsupported;

/// A shared, dynamically typed backend, as front-ends hold it.
pub type SharedBackend = Arc<dyn BlockBackend>;

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(size: u64) -> Capabilities {
        Capabilities {
            size,
            read_only: false,
            flush: true,
            fua: true,
            discard: true,
            write_zeroes: true,
            fast_zero: false,
            cache: true,
            multi_conn: true,
            extents: true,
            rotational: false,
            block_size: BlockSizes {
                min: 1,
                preferred: 4096,
                max: MAX_IO_BYTES,
            },
        }
    }

    #[test]
    fn range_checks_catch_overflow_and_end() {
        let c = caps(4096);
        assert!(c.check_range(0, 4096).is_ok());
        assert!(c.check_range(4096, 0).is_ok());
        assert!(matches!(
            c.check_range(4095, 2),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            c.check_range(u64::MAX, 2),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn read_only_and_fast_zero_are_enforced() {
        let mut c = caps(1 << 20);
        let zero = Op::WriteZeroes {
            offset: 0,
            len: 512,
            may_unmap: false,
            fast: true,
        };
        assert_eq!(c.check(&zero).map_err(|e| e.errno()), Err(libc::ENOTSUP));
        c.read_only = true;
        let write = Op::Write {
            offset: 0,
            buf: IoBuf::zeroed(512),
            fua: false,
        };
        assert_eq!(c.check(&write).map_err(|e| e.errno()), Err(libc::EPERM));
        assert!(c
            .check(&Op::Read {
                offset: 0,
                buf: IoBuf::zeroed(512)
            })
            .is_ok());
    }
}
