//! One queue's I/O thread: pops requests, keeps many in flight on the backend, and writes
//! completions back in batches.
//!
//! The loop waits on three eventfds: the driver's kick, the backend's completions and a stop
//! signal. Each turn reaps completions and pops new requests while there is room, with driver
//! notifications off, then publishes the used ring once and interrupts at most once.
//! Notifications are re-enabled, with a re-check of the avail ring so no kick is lost, only
//! right before the thread sleeps. Optionally (`BlockConfig::poll_max_ns`) it first polls the
//! avail ring and the backend for an adaptive window, so the driver need not kick, and
//! (`BlockConfig::coalesce_ns`) holds a batch of completions while others are still in flight
//! on the backend, so they cost the driver one interrupt. A stop drains the requests in
//! flight before returning, so no request the driver made available is lost or completed
//! twice. A watchdog serves (and reports) requests that arrive without a notification, and
//! interrupts again a driver that has not taken completions it was interrupted for.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The smallest polling window; below it the window drops to 0 (no polling).
const POLL_MIN: Duration = Duration::from_micros(4);

/// Polling and coalescing limits (from [`super::BlockConfig`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    pub(crate) poll_max: Duration,
    pub(crate) coalesce: Duration,
}

/// What the worker did, for the log when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WorkerStats {
    /// Driver notifications (kicks) received.
    pub(crate) kicks: u64,
    /// Polls that found work before the worker slept.
    pub(crate) poll_hits: u64,
    /// Times the watchdog found requests that came without a notification.
    pub(crate) lost_kicks: u64,
    /// Times the watchdog interrupted again for completions the driver had not taken.
    pub(crate) reinterrupts: u64,
}

/// How long the worker sleeps before its watchdog looks at the rings (one tick).
const WATCHDOG_MS: i32 = 250;
/// Ticks (2 s) before requests left without a kick are served and reported.
const LOST_KICK_TICKS: u32 = 8;
/// The first tick, when the worker goes idle with nothing in flight while the driver is still
/// behind the used index we published. A driver takes its completions within microseconds to
/// a few milliseconds of its interrupt (even an emulated TCG guest); one still behind after
/// this long is not slow but waiting for an interrupt that was lost on the way (QEMU's TCG
/// vhost-user path has been seen to lose one under load), and every request it has in flight
/// stalls until it is interrupted again. A spurious interrupt is harmless.
const REINTERRUPT_MS: i32 = 20;

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
    pub(crate) tuning: Tuning,
    /// The current polling window (adapts up to `tuning.poll_max`).
    pub(crate) poll: Duration,
    pub(crate) stats: WorkerStats,
    /// Watchdog ticks slept in a row with no event.
    pub(crate) idle_ticks: u32,
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
        let q = self.queue.stats();
        tracing::info!(
            queue = self.index,
            requests = q.popped,
            kicks = self.stats.kicks,
            publishes = q.published,
            interrupts = q.interrupts,
            poll_hits = self.stats.poll_hits,
            lost_kicks = self.stats.lost_kicks,
            reinterrupts = self.stats.reinterrupts,
            "virtio-blk queue stopped"
        );
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
        // When the oldest completion not yet published was made (coalescing).
        let mut unpublished_since: Option<Instant> = None;
        loop {
            let used_before = self.queue.stats().used;
            self.pump(mem, &mut slots, &mut completions, stopping, &mut broken);
            if self.queue.stats().used != used_before && unpublished_since.is_none() {
                unpublished_since = Some(Instant::now());
            }
            // Hold the batch while more completions are due soon, within the window.
            let hold_until = unpublished_since
                .filter(|_| slots.used > 0 && !stopping)
                .map(|t| t + self.tuning.coalesce)
                .filter(|&end| Instant::now() < end);
            if hold_until.is_none() {
                self.publish();
                unpublished_since = None;
            }
            if stopping && slots.used == 0 {
                return Ok(());
            }
            let idle_since = Instant::now();
            // Poll the avail ring and the backend with notifications still off: work found
            // here costs the driver no kick and us no wake-up.
            let spin_until = match hold_until {
                Some(end) => Some(end.max(idle_since + self.poll)),
                None if !self.poll.is_zero() => Some(idle_since + self.poll),
                None => None,
            };
            let mut timeout = -1;
            if let Some(end) = spin_until {
                if self.spin(mem, &mut slots, &mut completions, end) {
                    self.stats.poll_hits += 1;
                    timeout = 0; // still look at the stop eventfd, without sleeping
                } else if hold_until.is_some() {
                    timeout = 0; // the hold expired: publish on the next turn
                }
            }
            if timeout < 0 && !stopping && !broken && slots.used < self.depth {
                // About to sleep: ask for kicks again; buffers that arrived meanwhile mean
                // there is work (the re-check makes sure no kick is lost).
                match self.queue.enable_notification(mem) {
                    Ok(true) => timeout = 0,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(queue = self.index, error = %e, "queue is broken until reset");
                        broken = true;
                    }
                }
            }
            // Sleeping, wake up now and then to check that no notification went missing
            // (without serving the ring unless the watchdog says so).
            let n = loop {
                let wait = match timeout {
                    0 => 0,
                    // The first tick of an idle spell is short if the driver is behind.
                    _ if self.idle_ticks == 0
                        && slots.used == 0
                        && self.queue.driver_behind().is_some() =>
                    {
                        REINTERRUPT_MS
                    }
                    _ => WATCHDOG_MS,
                };
                match epoll.wait(wait, &mut events) {
                    Ok(0) if timeout < 0 => {
                        self.idle_ticks += 1;
                        if self.watchdog(mem, slots.used, broken) {
                            break 0;
                        }
                    }
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n == 0 && timeout < 0 {
                continue; // the watchdog found requests left without a kick
            }
            self.idle_ticks = 0;
            if timeout < 0 {
                self.adapt_poll(idle_since.elapsed());
            }
            for ev in &events[..n] {
                match ev.data() {
                    KICK => {
                        if let Ok(k) = self.kick.read() {
                            self.stats.kicks += k;
                        }
                    }
                    STOP => {
                        drop(self.stop.read());
                        stopping = true;
                    }
                    _ => {}
                }
            }
        }
    }

    /// On each idle tick: after 2 s, buffers in the avail ring mean a driver notification
    /// was lost (say so and serve them); after the first tick (`REINTERRUPT_MS`, then every
    /// 2 s) with everything done, a driver still behind the published used index missed its
    /// interrupt (say so and interrupt again). Returns whether there are requests to serve.
    fn watchdog(&mut self, mem: &GuestMemory, in_flight: usize, broken: bool) -> bool {
        if broken || in_flight >= self.depth {
            return false;
        }
        let ticks = self.idle_ticks;
        let every_2s = ticks % LOST_KICK_TICKS == 0;
        if every_2s && self.queue.has_available(mem).unwrap_or(false) {
            let q = self.queue.stats();
            tracing::warn!(
                queue = self.index,
                in_flight,
                popped = q.popped,
                used = q.used,
                kicks = self.stats.kicks,
                "requests were waiting without a notification; serving them"
            );
            self.stats.lost_kicks += 1;
            return true;
        } else if in_flight > 0 {
            if !every_2s {
                return false;
            }
            tracing::warn!(
                queue = self.index,
                in_flight,
                "backend requests outstanding for long"
            );
        } else if ticks % LOST_KICK_TICKS == 1 {
            // Everything is done on our side and the driver has not taken what we published:
            // if it is waiting for it, its interrupt was lost on the way. Say so and
            // interrupt again.
            if let Some((event, used)) = self.queue.driver_behind() {
                tracing::warn!(
                    queue = self.index,
                    driver_event = event,
                    used,
                    interrupts = self.queue.stats().interrupts,
                    idle_ticks = ticks,
                    "the driver has not taken the completions published; interrupting again"
                );
                self.stats.reinterrupts += 1;
                if let Err(e) = self.interrupt.signal_used(self.index) {
                    tracing::warn!(queue = self.index, error = %e, "cannot signal the driver");
                }
            }
        }
        false
    }

    /// Polls until `end` for buffers in the avail ring or completions from the backend.
    /// Returns whether it found work; completions it finds are already applied.
    fn spin<'m>(
        &mut self,
        mem: &'m GuestMemory,
        slots: &mut Slots<'m>,
        completions: &mut Vec<Completion>,
        end: Instant,
    ) -> bool {
        loop {
            if self.reap(slots, completions) > 0 {
                return true;
            }
            if slots.used < self.depth && self.queue.has_available(mem).unwrap_or(true) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            // Let any other thread that wants this CPU (a vCPU, QEMU's main loop) run
            // first: polling must not take the CPU from the guest it serves.
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }

    /// Adapts the polling window to how long the queue really stays idle (like QEMU's
    /// `poll-max-ns`): grow it while work arrives within the longest window, so the next
    /// wait is caught by polling; shrink it when waits are longer, so an idle device
    /// soon costs no CPU.
    fn adapt_poll(&mut self, idle: Duration) {
        let max = self.tuning.poll_max;
        if idle <= self.poll {
            return;
        }
        if idle > max {
            self.poll /= 2;
            if self.poll < POLL_MIN {
                self.poll = Duration::ZERO;
            }
        } else if self.poll < max {
            self.poll = if self.poll.is_zero() {
                POLL_MIN.min(max)
            } else {
                (self.poll * 2).min(max)
            };
        }
    }

    /// Publishes the used ring and interrupts the driver if it asked for it.
    fn publish(&mut self) {
        if self.queue.publish_used() {
            if let Err(e) = self.interrupt.signal_used(self.index) {
                tracing::warn!(queue = self.index, error = %e, "cannot signal the driver");
            }
        }
    }

    /// One turn of the loop without waiting: reaps and starts requests until nothing moves
    /// (completions free room, room lets more requests start, and backends that complete
    /// inline, like memory, do so at commit without signalling). Publishing is the caller's.
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
        self.publish();
        while slots.used > 0 {
            let mut fds = [libc::pollfd {
                fd: self.backend.notifier().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            self.pump(mem, &mut slots, &mut completions, true, &mut broken);
            self.publish();
        }
        !broken
    }

    /// Pops and starts requests while there is room, notifications off; returns how many it
    /// started, once the ring is empty or the backend full. The event loop turns
    /// notifications back on (with a re-check) before it sleeps.
    fn serve<'m>(
        &mut self,
        mem: &'m GuestMemory,
        slots: &mut Slots<'m>,
    ) -> Result<usize, crate::queue::QueueError> {
        let mut started = 0;
        self.queue.disable_notification();
        while slots.used < self.depth {
            let Some(chain) = self.queue.pop(mem)? else {
                break;
            };
            self.start(chain, slots);
            started += 1;
        }
        if started > 0 {
            if let Err(e) = self.backend.commit() {
                tracing::warn!(queue = self.index, error = %e, "backend commit failed");
            }
        }
        Ok(started)
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
