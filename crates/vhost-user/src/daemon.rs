//! The listening socket: one frontend at a time, reconnection, graceful shutdown.
//!
//! A VMM connects, sets the device up and runs it; when it disconnects (guest shut down, VMM
//! crashed or restarting) the device is stopped, after letting it finish the requests it
//! already took, and the daemon waits for the next frontend. QEMU's `reconnect-ms` chardev
//! option relies on exactly that. [`Shutdown`] ends the daemon from another thread (a signal
//! handler thread): the device drains, the socket file is removed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxio_virtio::VirtioDevice;
use vhost::vhost_user::BackendReqHandler;
use vmm_sys_util::eventfd::EventFd;

use crate::backend::Backend;

/// Errors that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket path is taken by something that is not a stale socket.
    #[error("Cannot listen on {path}: remove it or choose another --socket")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for or accepting connections failed.
    #[error("Listening socket failed")]
    Accept(#[source] io::Error),
    /// Creating the backend failed.
    #[error("Cannot set up the backend")]
    Setup(#[source] io::Error),
}

/// Tells a running [`Daemon`] to stop. Cheap to clone; [`trigger`](Self::trigger) from any
/// thread.
#[derive(Debug, Clone)]
pub struct Shutdown {
    fd: Arc<EventFd>,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            fd: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Asks the daemon to stop.
    pub fn trigger(&self) {
        if let Err(e) = self.fd.write(1) {
            tracing::error!(error = %e, "cannot signal shutdown");
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Counters, readable while the daemon runs.
#[derive(Debug, Default)]
pub struct DaemonStats {
    /// Frontends accepted so far.
    pub connections: AtomicU64,
    /// Requests our handler refused (NACKed; the session went on).
    pub refused: AtomicU64,
    /// Sessions ended by a protocol error or timeout (not by a clean disconnect).
    pub protocol_errors: AtomicU64,
}

/// A vhost-user backend daemon for one device. See the [module documentation](self).
#[derive(Debug)]
pub struct Daemon<D: VirtioDevice> {
    path: PathBuf,
    listener: UnixListener,
    backend: Arc<Mutex<Backend<D>>>,
    stats: DaemonStats,
    message_timeout: Duration,
}

/// How long a frontend may take to finish a message it started, or to take our reply: a
/// frontend that stalls mid-message loses its session instead of wedging the daemon.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

impl<D: VirtioDevice> Daemon<D> {
    /// Listens on `path` (a stale socket file left by a previous run is replaced).
    pub fn bind(path: impl AsRef<Path>, device: D) -> Result<Self, DaemonError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path);
        let listener = UnixListener::bind(&path).map_err(|source| DaemonError::Bind {
            path: path.clone(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(DaemonError::Setup)?;
        let backend = Backend::new(device).map_err(DaemonError::Setup)?;
        Ok(Self {
            path,
            listener,
            backend: Arc::new(Mutex::new(backend)),
            stats: DaemonStats::default(),
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
        })
    }

    /// Sets the per-message timeout (default [`DEFAULT_MESSAGE_TIMEOUT`]).
    pub fn with_message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters.
    pub fn stats(&self) -> &DaemonStats {
        &self.stats
    }

    /// A one-line summary for logs: connections, device starts, running queues, errors.
    pub fn summary(&self) -> String {
        let (starts, running) = {
            let b = self.lock();
            (b.device_starts(), b.running_queues().to_vec())
        };
        format!(
            "{} frontend connections, device started {starts} times, running queues {running:?}, \
             {} refused requests, {} sessions ended by protocol errors",
            self.stats.connections.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.stats.protocol_errors.load(Ordering::Relaxed),
        )
    }

    /// The backend, for inspection (tests, stats).
    pub fn backend(&self) -> &Arc<Mutex<Backend<D>>> {
        &self.backend
    }

    /// Serves frontends one after another until `shutdown` is triggered.
    pub fn serve(&self, shutdown: &Shutdown) -> Result<(), DaemonError> {
        tracing::info!(socket = %self.path.display(), "waiting for a vhost-user frontend");
        loop {
            if wait_readable(self.listener.as_raw_fd(), shutdown.raw())
                .map_err(DaemonError::Accept)?
                == Woken::Shutdown
            {
                break;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(DaemonError::Accept(e)),
            };
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            tracing::info!("frontend connected");
            let stopped = self.serve_connection(stream, shutdown);
            self.lock().disconnect();
            if stopped {
                break;
            }
            tracing::info!("frontend disconnected; device stopped, waiting for the next one");
        }
        self.lock().disconnect();
        // No more frontends: take the path away now (the daemon may outlive `serve`).
        let _ = std::fs::remove_file(&self.path);
        tracing::info!("shut down: device stopped");
        Ok(())
    }

    /// Serves one frontend; returns true if shutdown was requested.
    fn serve_connection(&self, stream: UnixStream, shutdown: &Shutdown) -> bool {
        // Blocking, but bounded: we only read once poll says a message has begun.
        let timeout = Some(self.message_timeout);
        let set_up = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(timeout))
            .and_then(|()| stream.set_write_timeout(timeout));
        if let Err(e) = set_up {
            tracing::warn!(error = %e, "cannot configure the frontend connection");
            return false;
        }
        let conn_fd = stream.as_raw_fd();
        let mut handler = BackendReqHandler::from_stream(stream, self.backend.clone());
        loop {
            match wait_readable(conn_fd, shutdown.raw()) {
                Ok(Woken::Ready) => {}
                Ok(Woken::Shutdown) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait on the frontend connection");
                    return false;
                }
            }
            match handler.handle_request() {
                Ok(()) => {}
                Err(vhost::vhost_user::Error::Disconnected) => return false,
                // Our handler refused a request; the frontend got a NACK if it asked for
                // one, and the session goes on (requests that must reply with data never
                // fail this way, see `backend::handler`).
                Err(vhost::vhost_user::Error::ReqHandlerError(e)) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "refused a frontend request");
                }
                Err(e) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "dropping the frontend after a protocol error");
                    return false;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backend<D>> {
        self.backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<D: VirtioDevice> Drop for Daemon<D> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes `path` if it is a socket nobody listens on.
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Ready,
    Shutdown,
}

/// Blocks until `fd` is readable (or hung up) or `shutdown_fd` fires.
fn wait_readable(fd: RawFd, shutdown_fd: RawFd) -> io::Result<Woken> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shutdown_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Woken::Shutdown);
        }
        if fds[0].revents != 0 {
            return Ok(Woken::Ready);
        }
    }
}
