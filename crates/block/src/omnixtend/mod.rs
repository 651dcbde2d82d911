//! The OmniXtend backend: remote memory on a software or hardware OmniXtend memory node,
//! reached through [`oxio_omnixtend::requester::Requester`] (pipelined TileLink over raw
//! Ethernet or UDP).
//!
//! Every queue shares one requester (one TLoE connection); requests from all queues are
//! pipelined together. A write completes only when the node has acknowledged every
//! TileLink transfer of it, so Flush and FUA need no extra work, and several connections see
//! one coherent memory (multi-conn is safe). Write-zeroes is done as writes of zeros (in
//! 1 MiB pieces); discard and cache are not offered.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use oxio_omnixtend::requester::{IoError, Requester};

use crate::{
    BlockBackend, BlockError, BlockQueue, BlockSizes, Capabilities, Completion, Notifier, Op,
    QueueFull, Request, Result,
};

/// Bytes per write of zeros.
const ZERO_CHUNK: u64 = 1 << 20;

/// Remote memory as a block device.
pub struct OmnixtendBackend {
    req: Arc<Requester>,
    name: String,
}

impl fmt::Debug for OmnixtendBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmnixtendBackend")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OmnixtendBackend {
    /// A backend over a connected requester; `name` describes the node (e.g. its MAC).
    pub fn new(req: Arc<Requester>, name: impl Into<String>) -> OmnixtendBackend {
        OmnixtendBackend {
            req,
            name: name.into(),
        }
    }

    /// The requester (for stats).
    pub fn requester(&self) -> &Arc<Requester> {
        &self.req
    }
}

fn block_error(op: &'static str, e: IoError) -> BlockError {
    match e {
        IoError::OutOfRange { offset, len, size } => BlockError::OutOfRange { offset, len, size },
        IoError::Shutdown => BlockError::Shutdown,
        other => BlockError::io(op, std::io::Error::other(other)),
    }
}

impl BlockBackend for OmnixtendBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            size: self.req.size(),
            read_only: false,
            flush: true,
            fua: true,
            discard: false,
            write_zeroes: true,
            fast_zero: false,
            cache: false,
            multi_conn: true,
            extents: false,
            rotational: false,
            block_size: BlockSizes {
                min: 1,
                preferred: 4096,
                max: crate::MAX_IO_BYTES,
            },
        }
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn BlockQueue>> {
        let notifier = Notifier::new()?;
        let signal = Arc::new(notifier.try_clone()?);
        Ok(Box::new(OmnixtendQueue {
            req: self.req.clone(),
            depth: depth.max(1),
            pending: Vec::new(),
            shared: Arc::new(Shared {
                done: Mutex::new(Vec::new()),
                signal,
                signalled: AtomicBool::new(false),
            }),
            notifier,
            in_flight: 0,
        }))
    }

    fn describe(&self) -> String {
        format!(
            "OmniXtend memory node {} ({} bytes)",
            self.name,
            self.req.size()
        )
    }
}

struct Shared {
    done: Mutex<Vec<Completion>>,
    signal: Arc<Notifier>,
    /// The eventfd was signalled since the last reap: one write per batch, not per request.
    signalled: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Completion>> {
        // Pushing or draining a Vec leaves it consistent even after a panic elsewhere.
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, c: Completion) {
        self.lock().push(c);
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.signal.signal();
        }
    }
}

/// One queue: submissions go to the shared requester; its I/O thread completes them into
/// this queue's list and signals the eventfd.
struct OmnixtendQueue {
    req: Arc<Requester>,
    depth: usize,
    pending: Vec<Request>,
    shared: Arc<Shared>,
    notifier: Notifier,
    in_flight: usize,
}

impl fmt::Debug for OmnixtendQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmnixtendQueue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl OmnixtendQueue {
    fn start(&mut self, req: Request) {
        let Request { tag, op } = req;
        let shared = self.shared.clone();
        match op {
            Op::Read { offset, mut buf } => {
                self.req.submit_read(offset, vec![0; buf.len()], move |r| {
                    let result = r
                        .map(|data| buf.copy_from_slice(&data))
                        .map_err(|e| block_error("OmniXtend read", e));
                    shared.push(Completion {
                        tag,
                        result,
                        buf: Some(buf),
                    });
                });
            }
            Op::Write { offset, buf, .. } => {
                self.req.submit_write(offset, buf.to_vec(), move |r| {
                    let result = r.map(|_| ()).map_err(|e| block_error("OmniXtend write", e));
                    shared.push(Completion {
                        tag,
                        result,
                        buf: Some(buf),
                    });
                });
            }
            Op::WriteZeroes { offset, len, .. } => self.zero(tag, offset, len),
            Op::Flush => shared.push(Completion {
                tag,
                result: Ok(()),
                buf: None,
            }),
            Op::Discard { .. } | Op::Cache { .. } => {
                let result = Err(BlockError::NotSupported(
                    "discard and cache on OmniXtend memory",
                ));
                shared.push(Completion {
                    tag,
                    result,
                    buf: None,
                });
            }
        }
    }

    /// Writes zeros over `offset..offset + len` in pieces; completes once all are done.
    fn zero(&mut self, tag: u64, offset: u64, len: u64) {
        let shared = self.shared.clone();
        if len == 0 {
            return shared.push(Completion {
                tag,
                result: Ok(()),
                buf: None,
            });
        }
        let pieces = len.div_ceil(ZERO_CHUNK);
        let left = Arc::new(AtomicUsize::new(
            usize::try_from(pieces).unwrap_or(usize::MAX),
        ));
        let first_err: Arc<Mutex<Option<BlockError>>> = Arc::new(Mutex::new(None));
        for i in 0..pieces {
            let at = offset + i * ZERO_CHUNK;
            let n = ZERO_CHUNK.min(offset + len - at);
            let (shared, left, first_err) = (shared.clone(), left.clone(), first_err.clone());
            let zeros = vec![0u8; usize::try_from(n).unwrap_or(0)];
            self.req.submit_write(at, zeros, move |r| {
                if let Err(e) = r {
                    let mut slot = first_err.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(block_error("OmniXtend write-zeroes", e));
                }
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let err = first_err.lock().unwrap_or_else(|p| p.into_inner()).take();
                    shared.push(Completion {
                        tag,
                        result: err.map_or(Ok(()), Err),
                        buf: None,
                    });
                }
            });
        }
    }
}

impl BlockQueue for OmnixtendQueue {
    fn submit(&mut self, req: Request) -> std::result::Result<(), QueueFull> {
        if self.in_flight + self.pending.len() >= self.depth {
            return Err(QueueFull(req));
        }
        self.pending.push(req);
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        for req in std::mem::take(&mut self.pending) {
            self.in_flight += 1;
            self.start(req);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.notifier.clear();
        // Completions pushed after this point signal again.
        self.shared.signalled.store(false, Ordering::Release);
        let mut done = self.shared.lock();
        let n = done.len();
        out.append(&mut done);
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notifier.fd()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests;
