//! The io_uring engine: one ring per queue, its completions signalled on the queue's eventfd.
//!
//! Each in-flight request owns a slot; the slot index is the SQE's `user_data`. Buffers live
//! in the slot until the CQE arrives, so the kernel never sees freed memory; dropping the
//! queue waits for every outstanding CQE for the same reason. Short reads and writes are
//! resubmitted for the remainder.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use super::{sync_io, FileInner, DIRECT_ALIGN};
use crate::{
    BlockError, BlockQueue, Completion, Notifier, Op, QueueFull, RawSlice, Request, Result,
    VectoredUnsupported,
};

/// Largest length put in one SQE; longer buffers complete in several steps.
const MAX_SQE_BYTES: usize = 1 << 30;

/// Most iovecs in one SQE (the kernel's `UIO_MAXIOV`); more complete in several steps.
const MAX_IOVECS: usize = 1024;

#[derive(Debug)]
struct Slot {
    /// The request; for a vectored one, its tag with a placeholder op (`vec` has the rest).
    req: Request,
    /// Bytes already transferred (reads and writes).
    done: usize,
    /// A [`BlockQueue::submit_vectored`] transfer on the caller's memory.
    vec: Option<Box<VecIo>>,
}

/// A vectored read or write on caller-owned memory.
#[derive(Debug)]
struct VecIo {
    offset: u64,
    write: bool,
    iov: Vec<RawSlice>,
    total: usize,
    /// Every piece is aligned for `O_DIRECT`.
    aligned: bool,
    /// The iovecs of the SQE in flight (the rest of the transfer), kept until its CQE.
    cur: IoVecs,
}

#[derive(Debug, Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: plain addresses into memory governed by the `submit_vectored` contract.
unsafe impl Send for IoVecs {}

impl VecIo {
    /// Points `cur` at the bytes from `done` on; returns their length.
    fn fill_cur(&mut self, done: usize) -> usize {
        self.cur.0.clear();
        let (mut skip, mut len) = (done, 0);
        for s in &self.iov {
            if self.cur.0.len() == MAX_IOVECS || len >= MAX_SQE_BYTES {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let n = (s.len - skip).min(MAX_SQE_BYTES - len);
            self.cur.0.push(libc::iovec {
                // SAFETY: `skip < s.len`: inside the caller's piece.
                iov_base: unsafe { s.ptr.add(skip) }.cast(),
                iov_len: n,
            });
            len += n;
            skip = 0;
        }
        len
    }

    /// Zeroes the bytes from `done` on (a read past the end of a file that shrank).
    fn zero_from(&self, done: usize) {
        let mut skip = done;
        for s in &self.iov {
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            // SAFETY: inside the caller's piece, which `submit_vectored`'s contract keeps
            // writable for a read.
            unsafe { std::ptr::write_bytes(s.ptr.add(skip), 0, s.len - skip) };
            skip = 0;
        }
    }
}

pub(super) struct UringQueue {
    inner: Arc<FileInner>,
    ring: IoUring,
    notifier: Notifier,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    inline_done: Vec<Completion>,
    unsubmitted: usize,
    depth: usize,
    cqes: Vec<(u64, i32)>,
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl UringQueue {
    pub(super) fn new(inner: Arc<FileInner>, depth: usize) -> Result<Self> {
        let entries = u32::try_from(depth.next_power_of_two().clamp(8, 4096)).unwrap_or(4096);
        let ring = IoUring::new(entries).map_err(|e| BlockError::io("create an io_uring", e))?;
        let notifier = Notifier::new()?;
        ring.submitter()
            .register_eventfd(notifier.fd().as_raw_fd())
            .map_err(|e| BlockError::io("register the io_uring eventfd", e))?;
        Ok(UringQueue {
            inner,
            ring,
            notifier,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            inline_done: Vec::new(),
            unsubmitted: 0,
            depth,
            cqes: Vec::new(),
        })
    }

    /// Builds the SQE for the next step of the request in `slot`.
    fn sqe(&mut self, index: usize) -> Option<squeue::Entry> {
        let slot = self.slots.get_mut(index)?.as_mut()?;
        let user_data = index as u64;
        let done = slot.done;
        if let Some(v) = slot.vec.as_deref_mut() {
            let len = v.fill_cur(done);
            let at = v.offset + done as u64;
            let fd = if v.aligned {
                self.inner.fd_for(at, len as u64)
            } else {
                self.inner.buffered.as_raw_fd()
            };
            let n = u32::try_from(v.cur.0.len()).ok()?;
            let entry = if v.write {
                opcode::Writev::new(types::Fd(fd), v.cur.0.as_ptr(), n)
                    .offset(at)
                    .build()
            } else {
                opcode::Readv::new(types::Fd(fd), v.cur.0.as_ptr(), n)
                    .offset(at)
                    .build()
            };
            return Some(entry.user_data(user_data));
        }
        let entry = match &mut slot.req.op {
            Op::Read { offset, buf } => {
                let len = (buf.len() - done).min(MAX_SQE_BYTES);
                let fd = self.inner.fd_for(*offset + done as u64, len as u64);
                // SAFETY: `done < buf.len()`, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(done) };
                let len = u32::try_from(len).ok()?;
                opcode::Read::new(types::Fd(fd), ptr, len)
                    .offset(*offset + done as u64)
                    .build()
            }
            Op::Write { offset, buf, fua } => {
                let len = (buf.len() - done).min(MAX_SQE_BYTES);
                let fd = self.inner.fd_for(*offset + done as u64, len as u64);
                // SAFETY: `done < buf.len()`, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_ptr().add(done) };
                let len = u32::try_from(len).ok()?;
                let flags = if *fua { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(types::Fd(fd), ptr, len)
                    .offset(*offset + done as u64)
                    .rw_flags(flags)
                    .build()
            }
            _ => opcode::Fsync::new(types::Fd(self.inner.buffered.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        Some(entry.user_data(user_data))
    }

    fn push(&mut self, index: usize) -> Result<()> {
        let sqe = self
            .sqe(index)
            .ok_or(BlockError::Invalid("bad io_uring slot"))?;
        loop {
            // SAFETY: the SQE points into a buffer owned by `slots[index]`, which stays
            // allocated and unmoved (the `IoBuf` heap block) until its CQE is reaped.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.unsubmitted += 1;
                return Ok(());
            }
            self.commit()?;
        }
    }

    /// Handles one CQE: finish the request, or resubmit the rest of a short transfer.
    fn complete(&mut self, index: usize, res: i32) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let mut slot = slot;
        let (total, what) = match (&slot.vec, &slot.req.op) {
            (Some(v), _) => (v.total, if v.write { "write" } else { "read" }),
            (None, Op::Read { buf, .. }) => (buf.len(), "read"),
            (None, Op::Write { buf, .. }) => (buf.len(), "write"),
            _ => (0, "flush"),
        };
        let result = match usize::try_from(res) {
            Err(_) => Err(BlockError::from_errno(what, res.saturating_neg())),
            Ok(0) if slot.done < total => {
                if let Some(v) = slot.vec.as_deref().filter(|v| !v.write) {
                    v.zero_from(slot.done);
                    Ok(())
                } else if let Op::Read { buf, .. } = &mut slot.req.op {
                    // Past the end of a file that shrank: reads as zero.
                    buf[slot.done..].fill(0);
                    Ok(())
                } else {
                    Err(BlockError::Io {
                        op: what,
                        source: std::io::ErrorKind::WriteZero.into(),
                    })
                }
            }
            Ok(n) if slot.done + n < total => {
                slot.done += n;
                self.slots[index] = Some(slot);
                if let Err(e) = self.push(index) {
                    let slot = self.slots[index].take();
                    if let Some(slot) = slot {
                        self.finish(index, slot, Err(e));
                    }
                }
                return;
            }
            Ok(_) => Ok(()),
        };
        self.finish(index, slot, result);
    }

    fn finish(&mut self, index: usize, slot: Slot, result: Result<()>) {
        self.free.push(index);
        self.inline_done.push(Completion::new(slot.req, result));
    }

    fn slots_in_use(&self) -> usize {
        self.depth - self.free.len()
    }
}

impl BlockQueue for UringQueue {
    fn submit(&mut self, mut req: Request) -> std::result::Result<(), QueueFull> {
        if self.in_flight() >= self.depth {
            return Err(QueueFull(req));
        }
        if let Err(e) = self.inner.caps.check(&req.op) {
            self.inline_done.push(Completion::new(req, Err(e)));
            return Ok(());
        }
        if matches!(
            req.op,
            Op::Discard { .. } | Op::WriteZeroes { .. } | Op::Cache { .. }
        ) {
            let result = sync_io::execute(&self.inner, &mut req.op);
            self.inline_done.push(Completion::new(req, result));
            return Ok(());
        }
        if matches!(&req.op, Op::Read { buf, .. } | Op::Write { buf, .. } if buf.is_empty()) {
            self.inline_done.push(Completion::new(req, Ok(())));
            return Ok(());
        }
        let Some(index) = self.free.pop() else {
            return Err(QueueFull(req));
        };
        self.slots[index] = Some(Slot {
            req,
            done: 0,
            vec: None,
        });
        if let Err(e) = self.push(index) {
            if let Some(slot) = self.slots[index].take() {
                self.finish(index, slot, Err(e));
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.unsubmitted > 0 {
            self.ring
                .submit()
                .map_err(|e| BlockError::io("submit to io_uring", e))?;
            self.unsubmitted = 0;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.notifier.clear();
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &cqes {
            if let Ok(index) = usize::try_from(user_data) {
                self.complete(index, res);
            }
        }
        cqes.clear();
        self.cqes = cqes;
        if self.unsubmitted > 0 {
            if let Err(e) = self.commit() {
                tracing::warn!(%e, "resubmitting short transfers failed");
            }
        }
        let n = self.inline_done.len();
        out.append(&mut self.inline_done);
        n
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notifier.fd()
    }

    fn in_flight(&self) -> usize {
        self.slots_in_use() + self.inline_done.len()
    }

    fn depth(&self) -> usize {
        self.depth
    }

    unsafe fn submit_vectored(
        &mut self,
        tag: u64,
        offset: u64,
        iov: &[RawSlice],
        write: bool,
    ) -> std::result::Result<(), VectoredUnsupported> {
        if self.in_flight() >= self.depth {
            return Err(VectoredUnsupported);
        }
        let total: usize = iov.iter().map(|s| s.len).sum();
        let req = Request {
            tag,
            op: Op::Flush, // placeholder: `vec` describes the transfer
        };
        let check = if write && self.inner.caps.read_only {
            Err(BlockError::ReadOnly)
        } else {
            self.inner.caps.check_range(offset, total as u64)
        };
        if check.is_err() || total == 0 {
            self.inline_done.push(Completion::new(req, check));
            return Ok(());
        }
        let Some(index) = self.free.pop() else {
            return Err(VectoredUnsupported);
        };
        let aligned = iov.iter().all(|s| {
            (s.ptr as usize as u64) % DIRECT_ALIGN == 0 && s.len as u64 % DIRECT_ALIGN == 0
        });
        let vec = VecIo {
            offset,
            write,
            iov: iov.to_vec(),
            total,
            aligned,
            cur: IoVecs::default(),
        };
        self.slots[index] = Some(Slot {
            req,
            done: 0,
            vec: Some(Box::new(vec)),
        });
        if let Err(e) = self.push(index) {
            if let Some(slot) = self.slots[index].take() {
                self.finish(index, slot, Err(e));
            }
        }
        Ok(())
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still write into slot buffers: wait for every CQE before freeing.
        let mut sink = Vec::new();
        while self.slots_in_use() > 0 {
            let _ = self.commit();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Cannot tell when the kernel is done with the buffers: leak them
                    // rather than risk it writing into freed memory.
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            self.reap(&mut sink);
            sink.clear();
        }
    }
}
