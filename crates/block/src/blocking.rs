//! [`BlockingQueue`]: one request at a time, for simple callers (tools, tests, set-up code).

use std::collections::HashMap;

use crate::{BlockError, BlockQueue, Completion, IoBuf, Op, Request, Result};

/// Wraps a [`BlockQueue`] and waits for each request's completion before returning.
#[derive(Debug)]
pub struct BlockingQueue {
    queue: Box<dyn BlockQueue>,
    next_tag: u64,
    reaped: Vec<Completion>,
    /// Completions of requests other than the one being waited for (none in practice, since
    /// this wrapper submits one at a time; kept so nothing is ever dropped).
    stray: HashMap<u64, Completion>,
}

impl BlockingQueue {
    /// Wraps `queue`, which should be idle.
    pub fn new(queue: Box<dyn BlockQueue>) -> Self {
        BlockingQueue {
            queue,
            next_tag: 0,
            reaped: Vec::new(),
            stray: HashMap::new(),
        }
    }

    /// Runs one operation to completion; returns the buffer of a read or write.
    pub fn run(&mut self, op: Op) -> Result<Option<IoBuf>> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        if self.queue.submit(Request { tag, op }).is_err() {
            return Err(BlockError::Invalid(
                "blocking queue used while requests are in flight",
            ));
        }
        self.queue.commit()?;
        loop {
            if let Some(c) = self.stray.remove(&tag) {
                return c.result.map(|()| c.buf);
            }
            if self.queue.reap(&mut self.reaped) == 0 {
                self.queue_wait();
                continue;
            }
            for c in self.reaped.drain(..) {
                self.stray.insert(c.tag, c);
            }
        }
    }

    fn queue_wait(&self) {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.queue.notifier()),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the duration of the call. A
        // bounded timeout guards against a backend that completes without signalling.
        unsafe { libc::poll(&mut pfd, 1, 100) };
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<IoBuf> {
        let buf = self.run(Op::Read {
            offset,
            buf: IoBuf::zeroed(len),
        })?;
        buf.ok_or(BlockError::Invalid("read completed without its buffer"))
    }

    /// Writes `data` at `offset` (durably before returning, with `fua`).
    pub fn write_at(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.run(Op::Write {
            offset,
            buf: IoBuf::from_slice(data),
            fua,
        })
        .map(drop)
    }

    /// Makes completed writes durable.
    pub fn flush(&mut self) -> Result<()> {
        self.run(Op::Flush).map(drop)
    }

    /// Discards a range.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.run(Op::Discard { offset, len }).map(drop)
    }

    /// Zeroes a range.
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast: bool,
    ) -> Result<()> {
        self.run(Op::WriteZeroes {
            offset,
            len,
            may_unmap,
            fast,
        })
        .map(drop)
    }

    /// The wrapped queue.
    pub fn into_inner(self) -> Box<dyn BlockQueue> {
        self.queue
    }
}
