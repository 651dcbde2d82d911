//! Listeners (TCP, Unix, systemd socket activation) and the [`Server`] that accepts
//! connections, negotiates, serves them and drains them on shutdown.

use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};

use super::export::ExportSet;
use super::handshake::{negotiate, HANDSHAKE_TIMEOUT};
use super::transmission::serve_transmission;
use super::transport::Transport;
use super::{Result, ServerError, Shutdown};

/// A socket the server accepts NBD connections on.
#[derive(Debug)]
pub enum Listener {
    /// TCP (the IANA port is 10809).
    Tcp(TcpListener),
    /// A Unix stream socket; the path is removed again when the listener is dropped if this
    /// listener created it.
    Unix(UnixListener, Option<SocketFile>),
}

/// Removes a Unix socket file on drop.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds a TCP listener on `addr` (`HOST:PORT`).
    pub async fn tcp(addr: &str) -> Result<Self> {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Listen(format!("tcp {addr}"), e))?;
        Ok(Listener::Tcp(l))
    }

    /// Binds a Unix listener at `path`, replacing a stale socket file left by a previous run
    /// (but never a regular file, nor the socket of a server that still answers).
    pub fn unix(path: &Path) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        let err = |e| ServerError::Listen(format!("unix {}", path.display()), e);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                // A live server answers: never steal its path.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    let busy = std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another server is listening there",
                    );
                    return Err(err(busy));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
        }
        let l = UnixListener::bind(path).map_err(err)?;
        Ok(Listener::Unix(l, Some(SocketFile(path.to_owned()))))
    }

    /// A human-readable address such as `tcp 127.0.0.1:10809` or `unix /run/nbd.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp {a}"),
                Err(_) => "tcp (unknown address)".into(),
            },
            Listener::Unix(l, _) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned))
            {
                Some(p) => format!("unix {}", p.display()),
                None => "unix (unnamed)".into(),
            },
        }
    }

    /// The TCP address, for building `nbd://` URIs.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// The Unix socket path, for building `nbd+unix://` URIs.
    pub fn unix_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Unix(l, _) => l.local_addr().ok()?.as_pathname().map(Path::to_owned),
            Listener::Tcp(_) => None,
        }
    }
}

/// Listeners passed by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`; fds from 3),
/// as `nbdinfo -- [ CMD ]` and `.socket` units do. Empty when not socket-activated.
pub fn listeners_from_systemd() -> Result<Vec<Listener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    if !pid_ok || count <= 0 {
        return Ok(Vec::new());
    }
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    (3..3 + count).map(activated).collect()
}

fn activated(fd: RawFd) -> Result<Listener> {
    let err = |e| ServerError::Listen(format!("systemd fd {fd}"), e);
    // SAFETY: an all-zero sockaddr_storage is a valid value; `len` holds its size.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or(0);
    // SAFETY: getsockname writes at most `len` bytes into `addr`, which is that large.
    let rc = unsafe { libc::getsockname(fd, std::ptr::addr_of_mut!(addr).cast(), &mut len) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fcntl on a descriptor systemd handed us; keeps it from leaking into children.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if i32::from(addr.ss_family) == libc::AF_UNIX {
        // SAFETY: socket activation transfers ownership of fds 3.. to this process, and each
        // is wrapped exactly once.
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        l.set_nonblocking(true).map_err(err)?;
        return Ok(Listener::Unix(
            UnixListener::from_std(l).map_err(err)?,
            None,
        ));
    }
    // SAFETY: as above, for an AF_INET/AF_INET6 listening socket.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    l.set_nonblocking(true).map_err(err)?;
    Ok(Listener::Tcp(TcpListener::from_std(l).map_err(err)?))
}

/// Serves a set of exports on any number of listeners.
#[derive(Debug, Clone)]
pub struct Server {
    exports: Arc<ExportSet>,
    slots: Arc<Semaphore>,
    shards: Option<Shards>,
}

/// Runtimes that connections are spread over, one after another: each connection lives on
/// one of them for its whole life.
#[derive(Debug, Clone)]
struct Shards {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl Shards {
    fn pick(&self) -> Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }
}

/// Connections served at once unless [`Server::max_connections`] says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

impl Server {
    /// A server for `exports`.
    pub fn new(exports: ExportSet) -> Self {
        Server {
            exports: Arc::new(exports),
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
            shards: None,
        }
    }

    /// Serves each connection on one of `runtimes` (in turn) instead of the runtime that
    /// accepted it. With one single-threaded runtime per CPU, a connection's requests are
    /// always handled by the same thread, and threads without connections stay asleep: a
    /// work-stealing pool would wake its idle workers to look for work on every request,
    /// taking CPU time from a client on the same machine. An empty list changes nothing.
    #[must_use]
    pub fn shards(mut self, runtimes: Vec<Handle>) -> Self {
        self.shards = (!runtimes.is_empty()).then(|| Shards {
            handles: runtimes.into(),
            next: Arc::new(AtomicUsize::new(0)),
        });
        self
    }

    /// Serves at most `n` connections at once; further clients are closed on accept (so a
    /// flood of connections cannot exhaust file descriptors or memory).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Accepts and serves connections until `shutdown` fires, then stops accepting, lets every
    /// connection answer its in-flight requests, and flushes every export's backend.
    pub async fn run(&self, listeners: Vec<Listener>, shutdown: Shutdown) -> Result<()> {
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for l in listeners {
            let (exports, shutdown, done) =
                (Arc::clone(&self.exports), shutdown.clone(), done_tx.clone());
            let (slots, shards) = (Arc::clone(&self.slots), self.shards.clone());
            accept_tasks.push(tokio::spawn(accept_loop(
                l, exports, slots, shards, shutdown, done,
            )));
        }
        drop(done_tx);
        for t in accept_tasks {
            let _ = t.await;
        }
        // Every connection holds a sender; recv() returns None once they have all ended.
        let _ = done_rx.recv().await;
        self.flush_all().await;
        Ok(())
    }

    async fn flush_all(&self) {
        let exports = Arc::clone(&self.exports);
        let flushed = tokio::task::spawn_blocking(move || {
            for e in exports.iter() {
                let r = e
                    .backend()
                    .open_queue(1)
                    .and_then(|q| oxio_block::BlockingQueue::new(q).flush());
                if let Err(err) = r {
                    tracing::error!(export = e.name(), %err, "final flush failed");
                }
            }
        });
        let _ = flushed.await;
    }
}

async fn accept_loop(
    l: Listener,
    exports: Arc<ExportSet>,
    slots: Arc<Semaphore>,
    shards: Option<Shards>,
    mut shutdown: Shutdown,
    done: mpsc::Sender<()>,
) {
    let name = l.describe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.fired() => break,
            a = accept(&l) => a,
        };
        match accepted {
            Ok(conn) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(listener = %name, "connection limit reached; closing a new client");
                    continue;
                };
                let (exports, shutdown, done) =
                    (Arc::clone(&exports), shutdown.clone(), done.clone());
                let Some(shards) = &shards else {
                    tokio::spawn(async move {
                        let _slot = slot;
                        match conn {
                            Conn::Tcp(s, peer) => connection(s, peer, exports, shutdown).await,
                            Conn::Unix(s) => connection(s, "unix".into(), exports, shutdown).await,
                        }
                        drop(done);
                    });
                    continue;
                };
                // The socket moves to the shard's reactor, so its readiness wakes that
                // shard's thread alone.
                let conn = match conn.into_std() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "cannot hand a connection over");
                        continue;
                    }
                };
                shards.pick().spawn(async move {
                    let _slot = slot;
                    match conn.into_tokio() {
                        Ok(Conn::Tcp(s, peer)) => connection(s, peer, exports, shutdown).await,
                        Ok(Conn::Unix(s)) => connection(s, "unix".into(), exports, shutdown).await,
                        Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
                    }
                    drop(done);
                });
            }
            Err(e) => {
                // EMFILE and friends: log, back off briefly, keep serving.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

enum Conn {
    Tcp(tokio::net::TcpStream, String),
    Unix(tokio::net::UnixStream),
}

/// A connection between runtimes: deregistered from the one that accepted it.
enum StdConn {
    Tcp(std::net::TcpStream, String),
    Unix(std::os::unix::net::UnixStream),
}

impl Conn {
    fn into_std(self) -> std::io::Result<StdConn> {
        Ok(match self {
            Conn::Tcp(s, peer) => StdConn::Tcp(s.into_std()?, peer),
            Conn::Unix(s) => StdConn::Unix(s.into_std()?),
        })
    }
}

impl StdConn {
    /// Registers the socket with the current runtime (it is still non-blocking).
    fn into_tokio(self) -> std::io::Result<Conn> {
        Ok(match self {
            StdConn::Tcp(s, peer) => Conn::Tcp(tokio::net::TcpStream::from_std(s)?, peer),
            StdConn::Unix(s) => Conn::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Replies are small and latency-bound; never wait for Nagle.
            s.set_nodelay(true)?;
            Ok(Conn::Tcp(s, peer.to_string()))
        }
        Listener::Unix(l, _) => {
            let s = l.accept().await?.0;
            enlarge_send_buffer(&s);
            Ok(Conn::Unix(s))
        }
    }
}

/// Bytes of reply data a Unix connection can queue in the kernel (the kernel doubles it for
/// bookkeeping). The default, `net.core.wmem_default` (208 KiB), splits every 1 MiB READ
/// reply into several `writev`s, each after a wake-up: with room for a few large replies the
/// server sends each in one call and the client reads it without waiting.
const UNIX_SEND_BUFFER: libc::c_int = 4 << 20;

/// Raises a Unix socket's send buffer to [`UNIX_SEND_BUFFER`]: beyond `net.core.wmem_max`
/// when privileged (`SO_SNDBUFFORCE`), else up to it. Best effort: the default still works.
/// TCP is left alone, where the kernel sizes buffers itself.
#[allow(clippy::cast_possible_truncation)] // size_of::<c_int>() is 4: fits any socklen_t.
fn enlarge_send_buffer(s: &impl std::os::fd::AsRawFd) {
    let set = |opt| {
        // SAFETY: plain setsockopt on a valid socket fd with a c_int option value of the
        // size passed.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&UNIX_SEND_BUFFER).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_SNDBUFFORCE) != 0 {
        set(libc::SO_SNDBUF);
    }
}

async fn connection<S: Transport>(
    mut stream: S,
    peer: String,
    exports: Arc<ExportSet>,
    shutdown: Shutdown,
) {
    // A client still negotiating has nothing in flight: on shutdown it is simply dropped
    // rather than allowed to hold the server up for the handshake timeout.
    let mut stop = shutdown.clone();
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        negotiate(&mut stream, &exports, &shutdown),
    );
    let negotiated = tokio::select! {
        r = handshake => r.unwrap_or(Err(ServerError::HandshakeTimeout(HANDSHAKE_TIMEOUT))),
        () = stop.fired() => return tracing::debug!(%peer, "shutdown during negotiation"),
    };
    let n = match negotiated {
        Ok(Some(n)) => n,
        Ok(None) => return tracing::debug!(%peer, "client ended negotiation"),
        Err(e) => return tracing::info!(%peer, error = %e, "negotiation failed"),
    };
    let export = n.export.name().to_owned();
    tracing::debug!(%peer, export, mode = ?n.mode, "client connected");
    match serve_transmission(stream, n.export, n.mode, shutdown).await {
        Ok(s) => {
            tracing::debug!(%peer, export, requests = s.requests, errors = s.errors, poll_hits = s.poll_hits, poll_sleeps = s.poll_sleeps, "client disconnected")
        }
        Err(e) => tracing::info!(%peer, export, error = %e, "connection ended with an error"),
    }
}
