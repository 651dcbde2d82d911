//! The transmission phase: one task per connection, many requests in flight.
//!
//! One task owns the socket and the connection's [`BlockQueue`] and waits on three things at
//! once: the socket becoming readable (more requests), writable (pending replies) and the
//! queue's eventfd (asynchronous completions). Each wake-up parses every complete request in
//! the read buffer, submits them as one batch, reaps every completion and queues the replies,
//! which go out in one `writev`. Replies leave in completion order, not request order, as the
//! protocol allows. Nothing blocks: a client that stops reading its replies only stops the
//! server from reading more requests once [`MAX_IN_FLIGHT`] or [`MAX_OUTSTANDING_BYTES`] is
//! reached.
//!
//! On a backend with [`DirectAccess`] (RAM), READ and WRITE skip the queue: a WRITE payload is
//! received straight into the storage and the reply sent once the last byte landed; a READ is
//! answered at once, its data copied into the reply buffer (small reads) or sent from the
//! storage by `writev` (large ones). The kernel's socket copy is then the only copy.

use std::future::{poll_fn, Future};
use std::io::{self, IoSliceMut};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use oxio_block::{BlockError, BlockQueue, Completion, IoBuf, Op, Request};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;

use super::busy_poll::BusyPoll;
use super::export::{Export, TransmissionMode};
use super::outbox::{Outbox, ReplyTo, INLINE_DATA_MAX};
use super::stats::ConnStats;
use super::transport::Transport;
use super::validate::{errno, payload_len, validate};
use super::{block_status, Result, ServerError, Shutdown};
use crate::wire::{cflags, Command, RequestHeader, EXTENDED_REQUEST_LEN, SIMPLE_REQUEST_LEN};

/// Requests one connection keeps in flight before it stops reading (the kernel uses 128,
/// nbdcopy 64, fio its iodepth).
pub const MAX_IN_FLIGHT: usize = 512;
/// Read data in flight plus unwritten replies, beyond which the server stops reading.
const MAX_OUTSTANDING_BYTES: usize = 256 << 20;
/// Size of the read buffer (many small requests arrive per `read`).
const READ_BUF: usize = 256 << 10;
/// After shutdown, how long a client may take to read the replies to its in-flight requests
/// before the connection is cut (a client that stops reading must not hold the server up).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// In extended mode, a payload longer than this is a denial of service: disconnect.
const MAX_DISCARD: u64 = 1 << 32;
/// After a direct WRITE payload at least this long, the next read asks for one request header
/// only, so the next payload lands in the storage rather than in the read buffer.
const LARGE_PAYLOAD: u64 = 64 << 10;

/// Serves the transmission phase of one connection until `NBD_CMD_DISC`, EOF or `shutdown`,
/// answering every request already received before returning. Needs a tokio runtime with
/// I/O enabled (the queue's eventfd is registered with it).
pub async fn serve_transmission<S: Transport>(
    mut stream: S,
    export: Arc<Export>,
    mode: TransmissionMode,
    shutdown: Shutdown,
) -> Result<ConnStats> {
    let mut conn = Conn::new(export, mode, shutdown)?;
    conn.export.stats().connection_opened();
    let result = conn.run(&mut stream).await;
    conn.export.stats().connection_closed();
    let _ = stream.shutdown().await;
    result.map(|()| conn.stats)
}

/// [`serve_transmission`] on a Unix socket (the kernel's socketpair end) from a plain thread:
/// builds a current-thread tokio runtime and blocks until the connection ends.
pub fn serve_transmission_blocking(
    stream: std::os::unix::net::UnixStream,
    export: Arc<Export>,
    mode: TransmissionMode,
    shutdown: Shutdown,
) -> Result<ConnStats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io("starting a runtime", e))?;
    rt.block_on(async move {
        stream
            .set_nonblocking(true)
            .map_err(|e| ServerError::Io("configuring the socket", e))?;
        let stream = tokio::net::UnixStream::from_std(stream)
            .map_err(|e| ServerError::Io("registering the socket", e))?;
        serve_transmission(stream, export, mode, shutdown).await
    })
}

/// What the reader is in the middle of.
enum ReadState {
    /// Waiting for a request header.
    Header,
    /// Receiving a valid WRITE's payload straight into its buffer.
    Payload {
        h: RequestHeader,
        buf: IoBuf,
        filled: usize,
    },
    /// Receiving a valid WRITE's payload straight into the backend's [`DirectAccess`] storage.
    Direct { h: RequestHeader, filled: u64 },
    /// Skipping the payload of a rejected request, then answering with `errno`.
    Discard {
        h: RequestHeader,
        left: u64,
        errno: u32,
        msg: &'static str,
    },
}

/// A request handed to the backend.
struct Pending {
    h: RequestHeader,
    /// Flush after the operation succeeds (FUA on trim and zero).
    then_flush: bool,
}

enum Event {
    Read(usize),
    Wrote(usize),
    Completions,
    Shutdown,
}

struct Conn {
    export: Arc<Export>,
    mode: TransmissionMode,
    hdr_len: usize,
    queue: Box<dyn BlockQueue>,
    notify: AsyncFd<OwnedFd>,
    shutdown: Shutdown,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    state: ReadState,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    read_bytes_in_flight: usize,
    out: Outbox,
    completions: Vec<Completion>,
    stats: ConnStats,
    disc: bool,
    eof: bool,
    stopping: bool,
    /// Once stopping: the time by which in-flight replies must have been delivered.
    drain_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    submitted: bool,
    /// The next read into the read buffer asks for one request header only.
    header_only: bool,
    busy: BusyPoll,
}

impl Conn {
    fn new(export: Arc<Export>, mode: TransmissionMode, shutdown: Shutdown) -> Result<Self> {
        let queue = export.backend().open_queue(MAX_IN_FLIGHT)?;
        let fd = queue
            .notifier()
            .try_clone_to_owned()
            .map_err(|e| ServerError::Io("duplicating the eventfd", e))?;
        // SAFETY: `fd` is an owned duplicate of the eventfd; the AsyncFd owns it, so it stays
        // open and refers to the same eventfd until the AsyncFd is dropped.
        let notify = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| ServerError::Io("registering the eventfd", e.into()))?;
        let hdr_len = if mode.extended_headers() {
            EXTENDED_REQUEST_LEN
        } else {
            SIMPLE_REQUEST_LEN
        };
        Ok(Conn {
            busy: BusyPoll::new(export.busy_poll_max()),
            export,
            mode,
            hdr_len,
            queue,
            notify,
            shutdown,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            state: ReadState::Header,
            pending: Vec::new(),
            free: Vec::new(),
            read_bytes_in_flight: 0,
            out: Outbox::default(),
            completions: Vec::new(),
            stats: ConnStats::default(),
            disc: false,
            eof: false,
            stopping: false,
            drain_deadline: None,
            submitted: false,
            header_only: false,
        })
    }

    async fn run<S: Transport>(&mut self, stream: &mut S) -> Result<()> {
        loop {
            self.process_input()?;
            if self.submitted {
                self.submitted = false;
                self.queue.commit()?;
            }
            self.reap();
            let finished = self.disc || self.eof || self.stopping;
            if finished && self.in_flight() == 0 && self.out.is_empty() {
                return self.finish();
            }
            match poll_fn(|cx| self.poll_event(cx, stream)).await? {
                Event::Read(0) => self.eof = true,
                Event::Read(n) => self.received(n),
                Event::Wrote(n) => self.out.advance(n),
                Event::Completions => {}
                Event::Shutdown => {
                    self.stopping = true;
                    self.drain_deadline = Some(Box::pin(tokio::time::sleep(DRAIN_TIMEOUT)));
                }
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.stats.clean_disconnect = self.disc;
        self.stats.poll_hits = self.busy.hits;
        self.stats.poll_sleeps = self.busy.sleeps;
        let mid_request = !matches!(self.state, ReadState::Header) || self.rstart != self.rend;
        if self.eof && mid_request && !self.stopping {
            return Err(ServerError::Protocol(
                "the connection closed in the middle of a request".into(),
            ));
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.pending.len() - self.free.len()
    }

    fn may_read(&self) -> bool {
        if self.disc || self.eof || self.stopping {
            return false;
        }
        matches!(
            self.state,
            ReadState::Payload { .. } | ReadState::Direct { .. }
        ) || !self.over_limit()
    }

    fn over_limit(&self) -> bool {
        self.in_flight() >= MAX_IN_FLIGHT
            || self.read_bytes_in_flight + self.out.pending_bytes() > MAX_OUTSTANDING_BYTES
    }

    fn poll_event<S: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<Result<Event>> {
        if !self.out.is_empty() {
            match self.poll_write(cx, stream) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ServerError::Io(
                        "writing replies",
                        io::ErrorKind::WriteZero.into(),
                    )))
                }
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Event::Wrote(n))),
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(ServerError::Io("writing replies", e)))
                }
                Poll::Pending => {}
            }
        }
        if self.may_read() {
            if let Poll::Ready(r) = self.poll_read(cx, stream) {
                return Poll::Ready(
                    r.map(Event::Read)
                        .map_err(|e| ServerError::Io("reading requests", e)),
                );
            }
        }
        if self.queue.in_flight() > 0 {
            if let Poll::Ready(r) = self.notify.poll_read_ready(cx) {
                match r {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        return Poll::Ready(Err(ServerError::Io("waiting for completions", e)))
                    }
                }
                return Poll::Ready(Ok(Event::Completions));
            }
        }
        if let Some(deadline) = &mut self.drain_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let msg = format!(
                    "replies still undelivered {DRAIN_TIMEOUT:?} after shutdown; disconnecting"
                );
                return Poll::Ready(Err(ServerError::Protocol(msg)));
            }
        }
        if !self.stopping && self.shutdown.poll_fired(cx).is_ready() {
            return Poll::Ready(Ok(Event::Shutdown));
        }
        Poll::Pending
    }

    /// Writes queued replies (one `writev`).
    fn poll_write<S: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<io::Result<usize>> {
        let mut blocked = false;
        let r = self.out.gather(self.export.backend().direct(), |iov| {
            match Pin::new(&mut *stream).poll_write_vectored(cx, iov) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    blocked = true;
                    Ok(0)
                }
            }
        });
        if blocked {
            Poll::Pending
        } else {
            Poll::Ready(r)
        }
    }

    /// Reads into the payload buffer or storage being filled, or into the read buffer.
    fn poll_read<S: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<io::Result<usize>> {
        let idle = self.out.is_empty() && self.queue.in_flight() == 0 && !self.stopping;
        let busy = &mut self.busy;
        if let ReadState::Payload { buf, filled, .. } = &mut self.state {
            let mut iov = [IoSliceMut::new(&mut buf[*filled..])];
            return read_polling(busy, idle, stream, cx, &mut iov);
        }
        if let ReadState::Direct { h, filled } = self.state {
            if let Some(direct) = self.export.backend().direct() {
                let mut blocked = false;
                let stored = direct.write_with(h.offset + filled, h.length - filled, &mut |iov| {
                    match read_polling(busy, idle, stream, cx, iov) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            blocked = true;
                            Ok(0)
                        }
                    }
                });
                match stored {
                    Ok(_) if blocked => return Poll::Pending,
                    Ok(r) => return Poll::Ready(r),
                    // No storage for the rest: skip it, then answer with the error.
                    Err(e) => self.direct_failed(h, h.length - filled, &e),
                }
            } else {
                self.direct_failed(h, h.length - filled, &BlockError::Shutdown);
            }
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rend == self.rbuf.len() {
            // Full of unparsed bytes (only possible while parsing is paused): a zero-length
            // read would look like EOF, so wait for the backlog to drain instead.
            return Poll::Pending;
        }
        let end = if self.header_only {
            self.rbuf.len().min(self.rend + self.hdr_len)
        } else {
            self.rbuf.len()
        };
        let mut iov = [IoSliceMut::new(&mut self.rbuf[self.rend..end])];
        read_polling(&mut self.busy, idle, stream, cx, &mut iov)
    }

    fn received(&mut self, n: usize) {
        match &mut self.state {
            ReadState::Payload { filled, .. } => *filled += n,
            ReadState::Direct { filled, .. } => *filled += n as u64,
            _ => {
                self.rend += n;
                self.header_only = false;
            }
        }
    }

    /// The storage refused a direct WRITE: skip the rest of its payload, then answer.
    fn direct_failed(&mut self, h: RequestHeader, left: u64, e: &BlockError) {
        tracing::debug!(cookie = h.cookie, error = %e, "direct write failed");
        self.state = ReadState::Discard {
            h,
            left,
            errno: errno::from_backend(e.errno()),
            msg: "the backend could not store the data",
        };
    }

    /// Parses and dispatches everything complete in the read buffer.
    fn process_input(&mut self) -> Result<()> {
        loop {
            let avail = self.rend - self.rstart;
            match &mut self.state {
                ReadState::Header => {
                    if avail < self.hdr_len || self.disc || self.over_limit() {
                        return Ok(());
                    }
                    let raw = &self.rbuf[self.rstart..self.rstart + self.hdr_len];
                    let h = RequestHeader::parse(raw, self.mode.extended_headers())?;
                    self.rstart += self.hdr_len;
                    self.header(h)?;
                }
                ReadState::Payload { buf, filled, .. } => {
                    let n = avail.min(buf.len() - *filled);
                    buf[*filled..*filled + n]
                        .copy_from_slice(&self.rbuf[self.rstart..self.rstart + n]);
                    *filled += n;
                    self.rstart += n;
                    if *filled < buf.len() {
                        return Ok(());
                    }
                    if let ReadState::Payload { h, buf, .. } =
                        std::mem::replace(&mut self.state, ReadState::Header)
                    {
                        let fua = h.flags & cflags::FUA != 0;
                        self.submit(
                            h,
                            Op::Write {
                                offset: h.offset,
                                buf,
                                fua,
                            },
                            false,
                        );
                    }
                }
                ReadState::Direct { h, filled } => {
                    let (h, done) = (*h, *filled);
                    let n = usize::try_from(h.length - done)
                        .unwrap_or(usize::MAX)
                        .min(avail);
                    if n > 0 {
                        let src = &self.rbuf[self.rstart..self.rstart + n];
                        self.rstart += n;
                        let stored = match self.export.backend().direct() {
                            Some(direct) => direct.write_from(h.offset + done, src),
                            None => Err(BlockError::Shutdown),
                        };
                        if let Err(e) = stored {
                            self.direct_failed(h, h.length - done - n as u64, &e);
                            continue;
                        }
                        if let ReadState::Direct { filled, .. } = &mut self.state {
                            *filled += n as u64;
                        }
                    }
                    if done + (n as u64) < h.length {
                        return Ok(());
                    }
                    self.state = ReadState::Header;
                    self.header_only = h.length >= LARGE_PAYLOAD;
                    self.count(&h, true);
                    self.out.ok(&self.mode, Self::to(&h));
                }
                ReadState::Discard { left, .. } => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(avail);
                    *left -= n as u64;
                    self.rstart += n;
                    if *left > 0 {
                        return Ok(());
                    }
                    if let ReadState::Discard { h, errno, msg, .. } =
                        std::mem::replace(&mut self.state, ReadState::Header)
                    {
                        self.reject(&h, errno, msg);
                    }
                }
            }
        }
    }

    /// Handles one parsed request header.
    fn header(&mut self, h: RequestHeader) -> Result<()> {
        let payload = payload_len(&h, &self.mode);
        let verdict = if self.stopping {
            Err((errno::ESHUTDOWN, "the server is shutting down"))
        } else {
            validate(&h, &self.export, &self.mode)
        };
        if let Err((errno, msg)) = verdict {
            tracing::debug!(
                cookie = h.cookie,
                cmd = h.command.name(),
                errno,
                msg,
                "rejected request"
            );
            if payload == 0 {
                self.reject(&h, errno, msg);
            } else if payload > MAX_DISCARD {
                return Err(ServerError::Protocol(format!(
                    "payload of {payload} bytes is too large"
                )));
            } else {
                self.state = ReadState::Discard {
                    h,
                    left: payload,
                    errno,
                    msg,
                };
            }
            return Ok(());
        }
        let (offset, len) = (h.offset, h.length);
        let fua = h.flags & cflags::FUA != 0;
        match h.command {
            Command::Write if self.export.backend().direct().is_some() => {
                self.state = ReadState::Direct { h, filled: 0 };
            }
            Command::Write => {
                // Validated: 0 < length ≤ 32 MiB.
                let buf = self.out.take_buf(usize::try_from(len).unwrap_or(0));
                self.state = ReadState::Payload { h, buf, filled: 0 };
            }
            Command::Read if self.export.backend().direct().is_some() => self.direct_read(&h),
            Command::Read => {
                let buf = self.out.take_buf(usize::try_from(len).unwrap_or(0));
                self.read_bytes_in_flight += buf.len();
                self.submit(h, Op::Read { offset, buf }, false);
            }
            Command::Flush => self.submit(h, Op::Flush, false),
            Command::Trim => self.submit(h, Op::Discard { offset, len }, fua),
            Command::WriteZeroes => {
                let may_unmap = h.flags & cflags::NO_HOLE == 0;
                let fast = h.flags & cflags::FAST_ZERO != 0;
                self.submit(
                    h,
                    Op::WriteZeroes {
                        offset,
                        len,
                        may_unmap,
                        fast,
                    },
                    fua,
                );
            }
            Command::Cache => self.submit(h, Op::Cache { offset, len }, false),
            Command::BlockStatus => self.block_status(&h),
            Command::Disc => self.disc = true,
            Command::Unknown(_) => self.reject(&h, errno::EINVAL, "unknown command"),
        }
        Ok(())
    }

    /// Answers a READ from [`DirectAccess`] storage at once.
    fn direct_read(&mut self, h: &RequestHeader) {
        // Validated: 0 < length ≤ 32 MiB and in range.
        let len = usize::try_from(h.length).unwrap_or(0);
        self.count(h, true);
        let Some(direct) = self.export.backend().direct() else {
            return;
        };
        if len <= INLINE_DATA_MAX {
            self.out.read_inline(&self.mode, Self::to(h), len, |dst| {
                direct.read_into(h.offset, dst);
            });
        } else {
            self.out.read_direct(&self.mode, Self::to(h), h.offset, len);
        }
    }

    fn to(h: &RequestHeader) -> ReplyTo {
        ReplyTo {
            cookie: h.cookie,
            offset: h.offset,
        }
    }

    fn reject(&mut self, h: &RequestHeader, errno: u32, msg: &str) {
        self.count(h, false);
        self.out.error(&self.mode, Self::to(h), errno, msg);
    }

    fn count(&mut self, h: &RequestHeader, ok: bool) {
        let bytes = if matches!(h.command, Command::Read | Command::Write) {
            h.length
        } else {
            0
        };
        self.export.stats().request(h.command, bytes, ok);
        self.stats.requests += 1;
        if ok {
            match h.command {
                Command::Read => self.stats.bytes_read += bytes,
                Command::Write => self.stats.bytes_written += bytes,
                _ => {}
            }
        } else {
            self.stats.errors += 1;
        }
    }

    fn submit(&mut self, h: RequestHeader, op: Op, then_flush: bool) {
        let tag = match self.free.pop() {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        self.pending[tag] = Some(Pending { h, then_flush });
        match self.queue.submit(Request {
            tag: tag as u64,
            op,
        }) {
            Ok(()) => self.submitted = true,
            Err(full) => {
                // Cannot happen (the queue is as deep as MAX_IN_FLIGHT); answer rather than hang.
                self.completions.push(Completion::new(
                    full.0,
                    Err(oxio_block::BlockError::NoSpace),
                ));
            }
        }
    }

    /// Turns every available completion into a reply.
    fn reap(&mut self) {
        self.queue.reap(&mut self.completions);
        let mut done = std::mem::take(&mut self.completions);
        for c in done.drain(..) {
            self.complete(c);
        }
        self.completions = done;
        if self.submitted {
            self.submitted = false;
            if let Err(e) = self.queue.commit() {
                tracing::warn!(%e, "submitting follow-up flushes failed");
            }
            self.queue.reap(&mut self.completions);
            if !self.completions.is_empty() {
                self.reap();
            }
        }
    }

    fn complete(&mut self, c: Completion) {
        let Some(p) = usize::try_from(c.tag)
            .ok()
            .and_then(|t| self.pending.get_mut(t))
            .and_then(Option::take)
        else {
            tracing::error!(tag = c.tag, "completion for an unknown request");
            return;
        };
        let tag = usize::try_from(c.tag).unwrap_or(0);
        self.free.push(tag);
        let h = p.h;
        if h.command == Command::Read {
            self.read_bytes_in_flight -= usize::try_from(h.length).unwrap_or(0);
        }
        match (c.result, c.buf) {
            (Ok(()), _) if p.then_flush => self.submit(h, Op::Flush, false),
            (Ok(()), Some(buf)) if h.command == Command::Read => {
                self.count(&h, true);
                self.out.read_data(&self.mode, Self::to(&h), buf);
            }
            (Ok(()), buf) => {
                self.count(&h, true);
                if let Some(buf) = buf {
                    self.out.recycle(buf);
                }
                self.out.ok(&self.mode, Self::to(&h));
            }
            (Err(e), buf) => {
                tracing::debug!(cookie = h.cookie, cmd = h.command.name(), error = %e, "request failed");
                if let Some(buf) = buf {
                    self.out.recycle(buf);
                }
                let msg = e.to_string();
                self.reject(&h, errno::from_backend(e.errno()), &msg);
            }
        }
    }

    fn block_status(&mut self, h: &RequestHeader) {
        match block_status::reply(&self.export, &self.mode, h) {
            Ok(payload) => {
                self.count(h, true);
                let kind = block_status::chunk_kind(&self.mode);
                self.out.chunk(
                    &self.mode,
                    Self::to(h),
                    crate::wire::chunk::FLAG_DONE,
                    kind,
                    &payload,
                );
            }
            Err(e) => {
                let msg = e.to_string();
                self.reject(h, errno::from_backend(e.errno()), &msg);
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Reads into `bufs`, first polling the socket for a while when the connection is `idle`
/// (see [`BusyPoll`]), then through readiness.
fn read_polling<S: Transport>(
    busy: &mut BusyPoll,
    idle: bool,
    stream: &mut S,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
) -> Poll<io::Result<usize>> {
    if busy.enabled() {
        if let Some(fd) = stream.raw_fd() {
            match busy.try_read(fd, bufs, idle) {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    let r = stream.poll_read_vectored(cx, bufs);
    if let Poll::Ready(Ok(_)) = r {
        busy.read_done();
    }
    r
}
