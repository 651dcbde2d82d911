//! One queue's I/O thread: pops requests, keeps many in flight on the backend, and writes
//! completions back in batches.
//!
//! The loop waits on three eventfds: the driver's kick, the backend's completions and a stop
//! signal. Each turn reaps completions, pops new requests while there is room (notifications
//! off meanwhile, re-enabled with a re-check so no kick is lost), then publishes the used ring
//! once and interrupts at most once. A stop drains the requests in flight before returning,
//! so no request the driver made available is lost or completed twice.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use oxio_block::{BlockQueue, Completion, IoBuf, Op, RawSlice, Request as BlockRequest};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Reject, Request};
use super::{status, HEADER_LEN, ID_BYTES};
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, Queue, QueueState};

const KICK: u64 = 0;
const BACKEND: u64 = 1;
const STOP: u64 = 2;

/// A request waiting for the backend.
struct InFlight<'m> {
    chain: DescriptorChain<'m>,
    /// Bytes to copy into the chain when a read completes.
    read_len: u32,
    /// Backend operations still outstanding (discard ranges are one each).
    pending: u32,
    status: u8,
}

/// Data buffers handed back by completed requests, reused so the hot path neither
/// allocates nor zeroes. Bounded in count and per-buffer size.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    free: Vec<IoBuf>,
}

impl BufPool {
    const MAX_BUFS: usize = 64;
    const MAX_LEN: usize = 1 << 20;

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    fn take(&mut self, len: usize) -> IoBuf {
        if let Some(i) = self.free.iter().rposition(|b| b.capacity() >= len) {
            let mut b = self.free.swap_remove(i);
            if b.set_len(len) {
                return b;
            }
        }
        IoBuf::zeroed(len)
    }

    fn give(&mut self, buf: IoBuf) {
        if self.free.len() < Self::MAX_BUFS && buf.capacity() <= Self::MAX_LEN {
            self.free.push(buf);
        }
    }
}

/// Everything one queue's thread owns.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) index: u16,
    pub(crate) queue: Queue,
    pub(crate) kick: EventFd,
    pub(crate) stop: EventFd,
    pub(crate) interrupt: Arc<dyn Interrupt>,
    pub(crate) backend: Box<dyn BlockQueue>,
    pub(crate) limits: request::Limits,
    pub(crate) serial: [u8; ID_BYTES],
    pub(crate) depth: usize,
    pub(crate) flush: bool,
    pub(crate) pool: BufPool,
    /// Scratch for the guest segments of a zero-copy read or write.
    pub(crate) iov: Vec<RawSlice>,
}

#[derive(Default)]
struct Slots<'m> {
    slots: Vec<Option<InFlight<'m>>>,
    free: Vec<usize>,
    used: usize,
}

impl<'m> Slots<'m> {
    fn insert(&mut self, f: InFlight<'m>) -> usize {
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(f);
            i
        } else {
            self.slots.push(Some(f));
            self.slots.len() - 1
        }
    }

    /// The index the next `insert` will use.
    fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    fn remove(&mut self, i: usize) -> Option<InFlight<'m>> {
        let f = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.used -= 1;
        Some(f)
    }
}

impl Worker {
    /// Serves the queue until stopped; returns its final state.
    pub(crate) fn run(mut self, mem: GuestMemory) -> (u16, QueueState) {
        if let Err(e) = self.event_loop(&mem) {
            tracing::error!(queue = self.index, error = %e, "virtio-blk queue stopped");
        }
        let state = (self.index, self.queue.state());
        // The backend queue waits for the kernel to finish zero-copy transfers into guest
        // memory when dropped: drop it while we still hold the memory.
        drop(self);
        drop(mem);
        state
    }

    fn event_loop(&mut self, mem: &GuestMemory) -> std::io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.kick.as_raw_fd(), KICK)?;
        add(self.backend.notifier().as_raw_fd(), BACKEND)?;
        add(self.stop.as_raw_fd(), STOP)?;
        let mut slots = Slots::default();
        let mut completions = Vec::new();
        let mut events = [EpollEvent::default(); 3];
        let mut stopping = false;
        let mut broken = false;
        loop {
            self.pump(mem, &mut slots, &mut completions, stopping, &mut broken);
            if stopping && slots.used == 0 {
                return Ok(());
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    KICK => drop(self.kick.read()),
                    STOP => {
                        drop(self.stop.read());
                        stopping = true;
                    }
                    _ => {}
                }
            }
        }
    }

    /// One turn of the loop without waiting: reaps and starts requests until nothing moves
    /// (completions free room, room lets more requests start, and backends that complete
    /// inline, like memory, do so at commit without signalling), then publishes the used ring
    /// once and interrupts at most once.
    fn pump<'m>(
        &mut self,
        mem: &'m GuestMemory,
        slots: &mut Slots<'m>,
        completions: &mut Vec<Completion>,
        stopping: bool,
        broken: &mut bool,
    ) {
        loop {
            let reaped = self.reap(slots, completions);
            let started = if stopping || *broken {
                0
            } else {
                self.serve(mem, slots).unwrap_or_else(|e| {
                    tracing::error!(queue = self.index, error = %e, "queue is broken until reset");
                    *broken = true;
                    0
                })
            };
            if reaped == 0 && started == 0 {
                break;
            }
        }
        if self.queue.publish_used() {
            if let Err(e) = self.interrupt.signal_used(self.index) {
                tracing::warn!(queue = self.index, error = %e, "cannot signal the driver");
            }
        }
    }

    /// Serves everything available now and waits for the backend to finish it (for
    /// benchmarks and fuzzing, which drive the device without threads). Returns `false` once
    /// the queue is broken.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn run_until_idle(&mut self, mem: &GuestMemory) -> bool {
        let mut slots = Slots::default();
        let mut completions = Vec::new();
        let mut broken = false;
        self.pump(mem, &mut slots, &mut completions, false, &mut broken);
        while slots.used > 0 {
            let mut fds = [libc::pollfd {
                fd: self.backend.notifier().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            self.pump(mem, &mut slots, &mut completions, true, &mut broken);
        }
        !broken
    }

    /// Pops and starts requests while there is room; returns how many it started, once the
    /// ring is empty (with notifications re-enabled) or the backend is full.
    fn serve<'m>(
        &mut self,
        mem: &'m GuestMemory,
        slots: &mut Slots<'m>,
    ) -> Result<usize, crate::queue::QueueError> {
        let mut started = 0;
        loop {
            self.queue.disable_notification();
            while slots.used < self.depth {
                let Some(chain) = self.queue.pop(mem)? else {
                    break;
                };
                self.start(chain, slots);
                started += 1;
            }
            if let Err(e) = self.backend.commit() {
                tracing::warn!(queue = self.index, error = %e, "backend commit failed");
            }
            if slots.used >= self.depth || !self.queue.enable_notification(mem)? {
                return Ok(started);
            }
        }
    }

    fn start<'m>(&mut self, chain: DescriptorChain<'m>, slots: &mut Slots<'m>) {
        let req = match request::parse(&chain, &self.limits) {
            Ok(r) => r,
            Err(Reject::NoStatus) => return self.queue.add_used(chain.id(), 0),
            Err(Reject::Status(s)) => return self.complete(&chain, s),
        };
        let zero_copy = match req {
            Request::Read { offset, len } => Some((offset, len, false)),
            Request::Write { offset, len } => Some((offset, len, true)),
            _ => None,
        };
        let chain = match zero_copy {
            Some((offset, len, write)) => {
                match self.start_zero_copy(chain, slots, offset, len, write) {
                    Ok(()) => return,
                    Err(chain) => chain,
                }
            }
            None => chain,
        };
        let ops = match req {
            Request::Read { offset, len } => {
                vec![Op::Read {
                    offset,
                    buf: self.pool.take(len as usize),
                }]
            }
            Request::Write { offset, len } => {
                let mut buf = self.pool.take(len as usize);
                let mut r = chain.reader();
                r.consume(HEADER_LEN as usize);
                if r.read_exact(&mut buf).is_err() {
                    return self.complete(&chain, status::IOERR);
                }
                vec![Op::Write {
                    offset,
                    buf,
                    fua: false,
                }]
            }
            Request::Flush if self.flush => vec![Op::Flush],
            Request::Flush => return self.complete(&chain, status::OK),
            Request::GetId { len } => {
                let n = (len as usize).min(ID_BYTES);
                let ok = chain.writer().write_all(&self.serial[..n]).is_ok();
                return self.complete(&chain, if ok { status::OK } else { status::IOERR });
            }
            Request::Discard(ranges) => ranges
                .iter()
                .map(|r| Op::Discard {
                    offset: r.offset,
                    len: r.len,
                })
                .collect(),
            Request::WriteZeroes(ranges) => ranges
                .iter()
                .map(|r| Op::WriteZeroes {
                    offset: r.offset,
                    len: r.len,
                    may_unmap: r.unmap,
                    fast: false,
                })
                .collect(),
        };
        let read_len = match &ops[..] {
            [Op::Read { buf, .. }] => u32::try_from(buf.len()).unwrap_or(0),
            _ => 0,
        };
        let pending = u32::try_from(ops.len()).unwrap_or(u32::MAX);
        let tag = slots.insert(InFlight {
            chain,
            read_len,
            pending,
            status: status::OK,
        }) as u64;
        for op in ops {
            if let Err(full) = self.backend.submit(BlockRequest { tag, op }) {
                // The backend refused: account the op as failed so the request completes.
                self.finish_op(
                    slots,
                    Completion::new(
                        full.0,
                        Err(oxio_block::BlockError::from_errno("submit", libc::EAGAIN)),
                    ),
                );
            }
        }
    }

    /// Starts a read or write straight on the chain's guest memory, if the backend can
    /// (`BlockQueue::submit_vectored`); otherwise hands the chain back for the copying path.
    fn start_zero_copy<'m>(
        &mut self,
        chain: DescriptorChain<'m>,
        slots: &mut Slots<'m>,
        offset: u64,
        len: u32,
        write: bool,
    ) -> Result<(), DescriptorChain<'m>> {
        // Data: after the header in the readable part (writes), or before the status byte
        // in the writable part (reads); `request::parse` checked both lengths.
        let (segments, mut skip) = if write {
            (chain.readable(), HEADER_LEN as usize)
        } else {
            (chain.writable(), 0)
        };
        self.iov.clear();
        let mut left = len as usize;
        for s in segments {
            if left == 0 {
                break;
            }
            let seg = s.len() as usize;
            if skip >= seg {
                skip -= seg;
                continue;
            }
            let n = (seg - skip).min(left);
            // SAFETY: `skip < seg`: inside the segment.
            let ptr = unsafe { s.as_ptr().add(skip) };
            self.iov.push(RawSlice { ptr, len: n });
            left -= n;
            skip = 0;
        }
        if left != 0 {
            return Err(chain);
        }
        let tag = slots.next_index();
        // SAFETY: the segments are guest memory, mapped for as long as this worker runs (the
        // transport stops the device and joins its workers before it changes the memory
        // table, and `run` drops the backend queue, which waits for the kernel, before the
        // memory). The driver does not touch the chain's buffers until we complete it, which
        // happens only after this request's completion.
        let started = unsafe {
            self.backend
                .submit_vectored(tag as u64, offset, &self.iov, write)
        };
        if started.is_err() {
            return Err(chain);
        }
        // Its completion is only reaped after this insert, which takes index `tag`.
        let at = slots.insert(InFlight {
            chain,
            read_len: 0,
            pending: 1,
            status: status::OK,
        });
        debug_assert_eq!(at, tag);
        Ok(())
    }

    fn reap(&mut self, slots: &mut Slots<'_>, completions: &mut Vec<Completion>) -> usize {
        let n = self.backend.reap(completions);
        for c in completions.drain(..) {
            self.finish_op(slots, c);
        }
        n
    }

    fn finish_op(&mut self, slots: &mut Slots<'_>, c: Completion) {
        let Ok(i) = usize::try_from(c.tag) else {
            return;
        };
        let Some(Some(f)) = slots.slots.get_mut(i) else {
            return;
        };
        if let Err(e) = &c.result {
            tracing::debug!(queue = self.index, error = %e, "backend request failed");
            f.status = status::IOERR;
        } else if let (Some(buf), true) = (&c.buf, f.read_len > 0) {
            let n = (f.read_len as usize).min(buf.len());
            if f.chain.writer().write_all(&buf[..n]).is_err() {
                f.status = status::IOERR;
            }
        }
        if let Some(buf) = c.buf {
            self.pool.give(buf);
        }
        f.pending = f.pending.saturating_sub(1);
        if f.pending == 0 {
            if let Some(f) = slots.remove(i) {
                self.complete(&f.chain, f.status);
            }
        }
    }

    /// Writes the status byte (the last writable byte) and completes the chain.
    fn complete(&mut self, chain: &DescriptorChain<'_>, st: u8) {
        let mut w = chain.writer();
        w.skip(chain.writable_len().saturating_sub(1) as usize);
        let _ = w.write_all(&[st]);
        self.queue.add_used(chain.id(), chain.writable_len());
    }
}
