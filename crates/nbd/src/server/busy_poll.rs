//! [`BusyPoll`]: adaptive busy-polling of a connection's socket before it sleeps.
//!
//! Why: at 4 KiB and a deep queue the client (fio's nbd engine, libnbd, the kernel) is the
//! bottleneck, and a good part of its cost per request is waking the server: each request it
//! sends to a server asleep in `epoll_wait` pays for a wake-up (an inter-processor interrupt
//! and a context switch on the other side), and each time the server fell asleep the client
//! soon sleeps too, waiting for replies. Measured with fio randwrite 4 KiB QD32 on a machine
//! whose CPUs other work also wanted: with a sleeping server one request in four paid for
//! that round trip through the scheduler; with polling, one in twenty to thirty, and the
//! client needed 10-20 % less CPU per request. On an idle machine the client rarely finds
//! the server asleep anyway and polling measured neutral to slower, hence off by default.
//!
//! The window adapts the way QEMU's event loop polling does (`poll-max-ns`): it starts at
//! zero, doubles (from [`GROW_FROM`]) each time the connection had to sleep but data came
//! within the maximum, and halves each time the wait was longer than the maximum, so a busy
//! connection polls and an idle one costs no CPU. A connection polls only when it has
//! nothing else to do (no replies waiting to be written, no backend requests in flight), and
//! only while there are no more polling connections than runtime workers and CPUs to spare
//! one for the client ([`PollSlot`]).

use std::io::{self, IoSliceMut};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The first non-zero window.
const GROW_FROM: Duration = Duration::from_micros(4);

/// The adaptive polling state of one connection.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    max: Duration,
    window: Duration,
    /// When the current wait for data began (the first read that found nothing).
    waiting_since: Option<Instant>,
    /// Whether this wait polled (only a wait that could poll adapts the window).
    polled: bool,
    slot: Option<PollSlot>,
    /// Waits that ended while polling, and waits that slept.
    pub(crate) hits: u64,
    pub(crate) sleeps: u64,
}

impl BusyPoll {
    /// Polling of at most `max` per wait; `Duration::ZERO` disables it.
    pub(crate) fn new(max: Duration) -> Self {
        let slot = (!max.is_zero()).then(PollSlot::acquire);
        BusyPoll {
            max,
            window: Duration::ZERO,
            waiting_since: None,
            polled: false,
            slot,
            hits: 0,
            sleeps: 0,
        }
    }

    /// How long to poll now: non-zero only at the start of a wait, when `idle` (the
    /// connection has nothing else to do) and while this connection may poll at all.
    fn begin_wait(&mut self, idle: bool) -> Duration {
        if self.waiting_since.is_some() {
            return Duration::ZERO;
        }
        let allowed = idle && self.slot.as_ref().is_some_and(PollSlot::may_poll);
        self.polled = allowed;
        self.waiting_since = Some(Instant::now());
        if allowed {
            // Even a zero window is a wait that can teach the window to grow.
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// Data arrived: adapt the window to how long the wait took.
    fn arrived(&mut self) {
        let Some(since) = self.waiting_since.take() else {
            return;
        };
        if !self.polled {
            return;
        }
        let waited = since.elapsed();
        if waited <= self.window {
            self.hits += 1;
            return;
        }
        self.sleeps += 1;
        if waited <= self.max {
            self.window = (self.window * 2).max(GROW_FROM).min(self.max);
        } else {
            self.window /= 2;
            if self.window < GROW_FROM {
                self.window = Duration::ZERO;
            }
        }
    }

    /// One non-blocking `readv` on `fd`; if it finds nothing and this is the start of a
    /// wait, keeps trying for the current window. `Ok(None)`: nothing yet, the caller
    /// registers for readiness and sleeps (and calls [`BusyPoll::read_done`] when it reads).
    pub(crate) fn try_read(
        &mut self,
        fd: RawFd,
        bufs: &mut [IoSliceMut<'_>],
        idle: bool,
    ) -> io::Result<Option<usize>> {
        if let Some(n) = readv_nonblocking(fd, bufs)? {
            self.arrived();
            return Ok(Some(n));
        }
        let window = self.begin_wait(idle);
        if window.is_zero() {
            return Ok(None);
        }
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            std::hint::spin_loop();
            // `poll` looks at the receive queue without taking the socket's lock, so polling
            // does not slow down the client's sends the way repeated `readv`s would.
            if readable(fd) {
                if let Some(n) = readv_nonblocking(fd, bufs)? {
                    self.arrived();
                    return Ok(Some(n));
                }
            }
        }
        Ok(None)
    }

    /// Whether polling is configured at all (when not, reads go through readiness only).
    pub(crate) fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// A read that went through the readiness path (after sleeping) returned data.
    pub(crate) fn read_done(&mut self) {
        self.arrived();
    }

    #[cfg(test)]
    fn window(&self) -> Duration {
        self.window
    }
}

/// Whether `fd` has data (or an error or end of stream) to read, without waiting.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a count of one, and a zero timeout (never blocks).
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// `readv` on a non-blocking socket: `Ok(None)` when it would block.
fn readv_nonblocking(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<Option<usize>> {
    let count = libc::c_int::try_from(bufs.len().min(1024)).unwrap_or(1024);
    loop {
        // SAFETY: `IoSliceMut` is ABI-compatible with `iovec` on Unix; the slices are valid,
        // writable and borrowed mutably for the duration of the call; `count` is at most
        // their number. The descriptor is the caller's open socket.
        let n = unsafe { libc::readv(fd, bufs.as_mut_ptr().cast::<libc::iovec>(), count) };
        match usize::try_from(n) {
            Ok(n) => return Ok(Some(n)),
            Err(_) => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(e),
                }
            }
        }
    }
}

/// Connections that may poll, process-wide.
static POLLING: AtomicUsize = AtomicUsize::new(0);

/// A polling connection's place in [`POLLING`]; released on drop.
#[derive(Debug)]
struct PollSlot {
    /// Most polling connections this one tolerates: one per runtime worker, and never all
    /// the machine's CPUs (the client needs one).
    limit: usize,
}

impl PollSlot {
    fn acquire() -> Self {
        POLLING.fetch_add(1, Ordering::Relaxed);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let workers = tokio::runtime::Handle::try_current()
            .map_or(1, |h| h.metrics().num_workers())
            .max(1);
        PollSlot {
            limit: workers.min(cpus.saturating_sub(1)),
        }
    }

    fn may_poll(&self) -> bool {
        POLLING.load(Ordering::Relaxed) <= self.limit
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waited(p: &mut BusyPoll, d: Duration) {
        p.waiting_since = Some(Instant::now() - d);
        p.polled = true;
        p.arrived();
    }

    #[test]
    fn window_grows_on_short_sleeps_and_shrinks_on_long_ones() {
        let mut p = BusyPoll::new(Duration::from_micros(50));
        assert_eq!(p.window(), Duration::ZERO);
        waited(&mut p, Duration::from_micros(10));
        assert_eq!(p.window(), GROW_FROM);
        for _ in 0..10 {
            waited(&mut p, Duration::from_micros(40));
        }
        assert_eq!(
            p.window(),
            Duration::from_micros(50),
            "capped at the maximum"
        );
        waited(&mut p, Duration::from_millis(5));
        assert_eq!(p.window(), Duration::from_micros(25));
        for _ in 0..10 {
            waited(&mut p, Duration::from_millis(5));
        }
        assert_eq!(
            p.window(),
            Duration::ZERO,
            "an idle connection stops polling"
        );
    }

    #[test]
    fn disabled_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        assert_eq!(p.begin_wait(true), Duration::ZERO);
        p.arrived();
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn reads_what_is_there_and_reports_nothing_otherwise() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut p = BusyPoll::new(Duration::from_micros(20));
        let mut buf = [0u8; 8];
        let got = p
            .try_read(b.as_raw_fd(), &mut [IoSliceMut::new(&mut buf)], true)
            .unwrap();
        assert_eq!(got, None);
        a.write_all(b"abc").unwrap();
        p.read_done();
        let got = p
            .try_read(b.as_raw_fd(), &mut [IoSliceMut::new(&mut buf)], true)
            .unwrap();
        assert_eq!(got, Some(3));
        assert_eq!(&buf[..3], b"abc");
        drop(a);
        let got = p
            .try_read(b.as_raw_fd(), &mut [IoSliceMut::new(&mut buf)], true)
            .unwrap();
        assert_eq!(got, Some(0), "end of stream");
    }
}
