//! The thread-safe requester handle: an I/O thread runs [`RequesterCore`] over a transport.

use super::core::{OpKind, RequesterCore, RequesterStats};
use super::{IoError, RequesterConfig};
use crate::transport::{Transport, Waker};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Frames sent per turn of the I/O loop.
const BATCH: usize = 256;

/// Called once with the request's buffer (filled for reads) or its error. Runs on the I/O
/// thread: it must be quick and must not block on another request.
pub type Callback = Box<dyn FnOnce(Result<Vec<u8>, IoError>) + Send>;

enum Cmd {
    Submit {
        kind: OpKind,
        offset: u64,
        buf: Vec<u8>,
        done: Callback,
    },
    Close,
}

struct Shared {
    cmds: Mutex<Vec<Cmd>>,
    sleeping: AtomicBool,
    alive: AtomicBool,
    stats: Mutex<RequesterStats>,
    waker: Waker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connected requester. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Requester {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    size: u64,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// Opens a connection over `transport` and waits up to `connect_timeout` for the node
    /// to answer.
    pub fn connect(
        cfg: RequesterConfig,
        transport: Box<dyn Transport>,
        connect_timeout: Duration,
    ) -> Result<Requester, IoError> {
        let size = cfg.size;
        let shared = Arc::new(Shared {
            cmds: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            stats: Mutex::new(RequesterStats::default()),
            waker: transport.waker(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("oxio-omnixtend".into())
            .spawn(move || io_thread(cfg, transport, &sh, ready_tx))
            .map_err(|e| IoError::Transport(e.to_string()))?;
        let requester = Requester {
            shared,
            thread: Mutex::new(Some(thread)),
            size,
        };
        match ready_rx.recv_timeout(connect_timeout) {
            Ok(Ok(())) => Ok(requester),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(IoError::TimedOut(connect_timeout)),
        }
    }

    /// Bytes addressable.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Counters (refreshed by the I/O thread every few milliseconds).
    pub fn stats(&self) -> RequesterStats {
        *lock(&self.shared.stats)
    }

    fn push(&self, cmd: Cmd) {
        if !self.shared.alive.load(Ordering::SeqCst) {
            if let Cmd::Submit { done, .. } = cmd {
                done(Err(IoError::Shutdown));
            }
            return;
        }
        lock(&self.shared.cmds).push(cmd);
        // Only the first submission after the I/O thread went to sleep wakes it: the rest of
        // a burst rides on that wake-up (one eventfd write, not one per request).
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.waker.wake();
        }
    }

    /// Reads `len` bytes at `offset`; `done` gets the filled buffer.
    pub fn submit_read(
        &self,
        offset: u64,
        buf: Vec<u8>,
        done: impl FnOnce(Result<Vec<u8>, IoError>) + Send + 'static,
    ) {
        self.push(Cmd::Submit {
            kind: OpKind::Read,
            offset,
            buf,
            done: Box::new(done),
        });
    }

    /// Writes `data` at `offset`; `done` gets the buffer back.
    pub fn submit_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: impl FnOnce(Result<Vec<u8>, IoError>) + Send + 'static,
    ) {
        self.push(Cmd::Submit {
            kind: OpKind::Write,
            offset,
            buf: data,
            done: Box::new(done),
        });
    }

    /// Reads into `buf` from `offset`, blocking; the transfers are pipelined.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_read(offset, vec![0; buf.len()], move |r| {
            let _ = tx.send(r);
        });
        let data = rx.recv().map_err(|_| IoError::Shutdown)??;
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Writes `data` at `offset`, blocking; the transfers are pipelined.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_write(offset, data.to_vec(), move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| IoError::Shutdown)?.map(|_| ())
    }

    /// Finishes every request in flight, closes the connection and stops the I/O thread.
    ///
    /// Called from a completion callback (on the I/O thread itself) it only asks for the
    /// shutdown: the thread cannot wait for itself.
    pub fn shutdown(&self) {
        self.push(Cmd::Close);
        self.shared.waker.wake();
        let mut guard = lock(&self.thread);
        if guard
            .as_ref()
            .is_some_and(|t| t.thread().id() == std::thread::current().id())
        {
            return;
        }
        if let Some(t) = guard.take() {
            drop(guard);
            let _ = t.join();
        }
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Io {
    core: RequesterCore,
    transport: Box<dyn Transport>,
    /// Callbacks by token; a token is the index of its slot (a slab: no hashing and no
    /// allocation per request once warm).
    callbacks: Vec<Option<Callback>>,
    free_tokens: Vec<u64>,
    /// The submission list swapped out of `Shared::cmds` (its allocation is reused).
    cmd_buf: Vec<Cmd>,
}

impl Io {
    /// Sends what is ready; returns whether the batch was full (more may be ready).
    fn flush_out(&mut self, now: Instant) -> std::io::Result<bool> {
        let mut err = None;
        let transport = &mut self.transport;
        let sent = self.core.poll_transmit_batch(now, BATCH, &mut |frames| {
            if let Err(e) = transport.send_vectored_batch(frames) {
                err.get_or_insert(e);
            }
        });
        self.transport.flush()?;
        err.map_or(Ok(sent >= BATCH), Err)
    }

    fn complete(&mut self) {
        for c in self.core.drain_completions() {
            let slot = usize::try_from(c.token).ok();
            if let Some(cb) = slot.and_then(|i| self.callbacks.get_mut(i)?.take()) {
                self.free_tokens.push(c.token);
                cb(c.result);
            }
        }
    }

    fn take_cmds(&mut self, shared: &Shared) -> bool {
        std::mem::swap(&mut *lock(&shared.cmds), &mut self.cmd_buf);
        let mut close = false;
        let mut cmds = std::mem::take(&mut self.cmd_buf);
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Submit {
                    kind,
                    offset,
                    buf,
                    done,
                } => {
                    let token = match self.free_tokens.pop() {
                        Some(t) => t,
                        None => {
                            self.callbacks.push(None);
                            self.callbacks.len() as u64 - 1
                        }
                    };
                    if let Some(slot) = usize::try_from(token)
                        .ok()
                        .and_then(|i| self.callbacks.get_mut(i))
                    {
                        *slot = Some(done);
                    }
                    self.core.submit(token, kind, offset, buf);
                }
                Cmd::Close => close = true,
            }
        }
        self.cmd_buf = cmds;
        close
    }

    fn wait(&mut self, shared: &Shared, now: Instant, busy: bool) -> std::io::Result<()> {
        let wait = match self.core.poll_at() {
            _ if busy => Duration::ZERO,
            Some(t) => t.saturating_duration_since(now),
            None => Duration::from_millis(50),
        };
        shared.sleeping.store(true, Ordering::SeqCst);
        let wait = if lock(&shared.cmds).is_empty() {
            wait.min(Duration::from_millis(50))
        } else {
            Duration::ZERO
        };
        let core = &mut self.core;
        // Frames handed over by one `recv` arrived together: one clock read serves them all.
        let mut at = None;
        let r = self.transport.recv(Some(wait), &mut |f| {
            let now = *at.get_or_insert_with(Instant::now);
            core.receive(now, f);
        });
        shared.sleeping.store(false, Ordering::SeqCst);
        r.map(|_| ())
    }
}

fn io_thread(
    cfg: RequesterConfig,
    transport: Box<dyn Transport>,
    shared: &Shared,
    ready: mpsc::Sender<Result<(), IoError>>,
) {
    let now = Instant::now();
    let mut core = RequesterCore::new(cfg, now);
    core.open(now);
    let mut io = Io {
        core,
        transport,
        callbacks: Vec::new(),
        free_tokens: Vec::new(),
        cmd_buf: Vec::new(),
    };
    let mut ready = Some(ready);
    let mut closing: Option<Instant> = None;
    let mut close_sent: Option<Instant> = None;
    let mut last_stats = now;
    let result = loop {
        if io.take_cmds(shared) && closing.is_none() {
            closing = Some(Instant::now() + Duration::from_secs(30));
        }
        let now = Instant::now();
        let busy = match io.flush_out(now) {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        io.complete();
        if ready.is_some() && io.core.stats().link.frames_accepted > 0 {
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(()));
            }
        }
        if let Some(deadline) = closing {
            if io.core.pending_ops() == 0 && close_sent.is_none() {
                // Everything drained: send Close and wait briefly for the node's (as the
                // Hofmann host does, 500 ms).
                io.core.close();
                close_sent = Some(now + Duration::from_millis(500));
            }
            let close_timed_out = close_sent.is_some_and(|t| now >= t);
            if io.core.closed()
                || now >= deadline
                || close_timed_out
                || (io.core.pending_ops() == 0 && ready.is_some())
            {
                break Ok(());
            }
        }
        if now.saturating_duration_since(last_stats) >= Duration::from_millis(20) {
            *lock(&shared.stats) = io.core.stats();
            last_stats = now;
        }
        if let Err(e) = io.wait(shared, now, busy) {
            break Err(e);
        }
        io.complete();
    };
    shared.alive.store(false, Ordering::SeqCst);
    *lock(&shared.stats) = io.core.stats();
    let err = match result {
        Ok(()) => IoError::Shutdown,
        Err(e) => {
            tracing::error!(error = %e, "OmniXtend transport failed");
            IoError::Transport(e.to_string())
        }
    };
    if let Some(r) = ready.take() {
        let _ = r.send(Err(err.clone()));
    }
    for cb in io.callbacks.drain(..).flatten() {
        cb(Err(err.clone()));
    }
    // Requests that raced with shutdown.
    for cmd in std::mem::take(&mut *lock(&shared.cmds)) {
        if let Cmd::Submit { done, .. } = cmd {
            done(Err(IoError::Shutdown));
        }
    }
}
