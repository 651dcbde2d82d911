//! One attached device end to end: socketpairs, one serving thread per connection, the chosen
//! control plane, and an orderly disconnect.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::ioctl::IoctlDevice;
use super::netlink::{NbdNetlink, Reconfigure};
use super::{DeviceConfig, KernelError};

/// Serves one connection's transmission phase until NBD_CMD_DISC or EOF: `(connection
/// number, server end of the socketpair)`. The kernel speaks simple replies only.
pub type ServeFn = Arc<dyn Fn(usize, UnixStream) -> Result<Ended, String> + Send + Sync>;

/// How a connection's transmission phase ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The kernel sent NBD_CMD_DISC: the device is being disconnected.
    Disconnected,
    /// The socket closed without NBD_CMD_DISC: the kernel gave up on the connection (a
    /// request timed out) or the server was told to stop.
    Lost,
}

type ServeResult = Result<Ended, String>;

/// Which control plane attaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMethod {
    /// `NBD_SET_SOCK` + `NBD_DO_IT` on an existing `/dev/nbdN`.
    Ioctl,
    /// Generic netlink `NBD_CMD_CONNECT`.
    Netlink,
}

/// How to attach.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Control plane.
    pub method: AttachMethod,
    /// Device index N of `/dev/nbdN`; netlink may leave it `None` to take a free one.
    pub index: Option<u32>,
    /// Number of connections (sockets), each served by its own thread.
    pub connections: usize,
    /// Netlink only: instead of CONNECT, hand fresh sockets to the existing device `index`
    /// with RECONFIGURE — how a restarted server takes over a device whose previous server
    /// died, within the device's dead-connection timeout. The kernel only replaces dead
    /// sockets, and `config.backend_identifier` must match the one given at CONNECT.
    pub reconnect: bool,
    /// What the kernel is told.
    pub config: DeviceConfig,
}

#[derive(Debug)]
enum Control {
    Ioctl {
        device: Arc<IoctlDevice>,
        do_it: Option<JoinHandle<Result<(), KernelError>>>,
    },
    Netlink,
}

/// An attached device. [`Attachment::disconnect`] asks the kernel to end it;
/// [`Attachment::wait`] returns once every connection has ended;
/// [`Attachment::revive`] replaces connections the kernel declared dead.
#[derive(Debug)]
pub struct Attachment {
    index: u32,
    path: PathBuf,
    control: Control,
    config: DeviceConfig,
    serve: Serve,
    conns: Vec<Conn>,
}

/// One connection's serving thread, and how it ended once it has been joined.
#[derive(Debug)]
struct Conn {
    handle: Option<JoinHandle<ServeResult>>,
    ended: Option<ServeResult>,
}

impl Conn {
    fn new(handle: JoinHandle<ServeResult>) -> Self {
        Conn {
            handle: Some(handle),
            ended: None,
        }
    }
}

struct Serve(ServeFn);

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeFn")
    }
}

impl Attachment {
    /// Creates the connections, starts serving them, and attaches the device.
    pub fn start(options: &AttachOptions, serve: ServeFn) -> Result<Self, KernelError> {
        options.config.validate(options.connections)?;
        if options.method == AttachMethod::Ioctl && options.index.is_none() {
            return Err(KernelError::Config {
                reason: "ioctl attach needs a device index".into(),
            });
        }
        if options.reconnect && (options.method != AttachMethod::Netlink || options.index.is_none())
        {
            return Err(KernelError::Config {
                reason: "reconnecting needs netlink attach and a device index".into(),
            });
        }
        // Open the control plane first: a missing driver fails before any thread starts.
        let mut plane = match options.method {
            AttachMethod::Ioctl => {
                Plane::Ioctl(IoctlDevice::open(&device_path(options.index.unwrap_or(0)))?)
            }
            AttachMethod::Netlink => Plane::Netlink(NbdNetlink::open()?),
        };
        let (kernel_ends, servers) = spawn_servers(0..options.connections, &serve)?;
        let attached = match &mut plane {
            Plane::Ioctl(device) => attach_ioctl(Arc::clone(device), &options.config, &kernel_ends),
            Plane::Netlink(nl) => match (options.reconnect, options.index) {
                (true, Some(index)) => nl
                    .reconfigure(index, &reconfigure_for(&options.config, &kernel_ends)?)
                    .map(|()| (index, Control::Netlink)),
                _ => nl
                    .connect(&options.config, options.index, &kernel_ends)
                    .map(|index| (index, Control::Netlink)),
            },
        };
        // The kernel holds its own references now (or failed): our copies only keep the
        // servers from seeing EOF.
        drop(kernel_ends);
        let attached = match attached {
            Ok(ok) if options.reconnect => check_taken(&servers).map(|()| ok),
            other => other,
        };
        match attached {
            Ok((index, control)) => Ok(Attachment {
                index,
                path: device_path(index),
                control,
                config: options.config.clone(),
                serve: Serve(serve),
                conns: servers.into_iter().map(Conn::new).collect(),
            }),
            // The servers see EOF now, except (reconnect) any whose socket the kernel kept:
            // those are left to end with the process rather than waited for.
            Err(err) if options.reconnect => Err(err),
            Err(err) => {
                for server in servers {
                    let _ = server.join();
                }
                Err(err)
            }
        }
    }

    /// N of `/dev/nbdN`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `/dev/nbdN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every connection has ended.
    pub fn is_finished(&self) -> bool {
        self.conns
            .iter()
            .all(|c| c.handle.as_ref().is_none_or(JoinHandle::is_finished))
    }

    /// Replaces every connection that ended without NBD_CMD_DISC (the kernel shut it down
    /// after a request timed out, or its serving thread failed) with a fresh socketpair
    /// handed over by RECONFIGURE, and returns how many it replaced. Netlink devices with a
    /// dead-connection timeout only: the kernel holds new I/O for that long waiting for this;
    /// anything else returns 0. Nothing is replaced once any connection saw NBD_CMD_DISC
    /// (the device is being disconnected). Call it periodically; if the kernel has not yet
    /// seen the old socket die it keeps none of the new ones, this returns an error, and the
    /// next call tries again.
    pub fn revive(&mut self) -> Result<usize, KernelError> {
        if !matches!(self.control, Control::Netlink) || self.config.dead_conn_timeout.is_zero() {
            return Ok(0);
        }
        for c in &mut self.conns {
            if c.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                c.ended = c.handle.take().map(join);
            }
        }
        if self
            .conns
            .iter()
            .any(|c| matches!(c.ended, Some(Ok(Ended::Disconnected))))
        {
            return Ok(0);
        }
        let lost: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].ended.is_some())
            .collect();
        if lost.is_empty() {
            return Ok(0);
        }
        for &connection in &lost {
            if let Some(Err(error)) = &self.conns[connection].ended {
                tracing::warn!(device = self.index, connection, %error, "connection failed");
            }
        }
        let (kernel_ends, servers) = spawn_servers(lost.iter().copied(), &self.serve.0)?;
        let reconfigured = reconfigure_for(&self.config, &kernel_ends)
            .and_then(|r| NbdNetlink::open()?.reconfigure(self.index, &r));
        drop(kernel_ends);
        let result = reconfigured.and_then(|()| check_taken(&servers));
        // Installed either way: servers whose socket the kernel did not keep end at once, and
        // the next call retries.
        for (&connection, server) in lost.iter().zip(servers) {
            self.conns[connection] = Conn::new(server);
        }
        result.map(|()| lost.len())
    }

    /// Asks the kernel to send NBD_CMD_DISC on every connection; the servers answer what is
    /// in flight and return, after which [`Attachment::wait`] completes.
    pub fn disconnect(&self) -> Result<(), KernelError> {
        match &self.control {
            Control::Ioctl { device, .. } => device.disconnect(),
            Control::Netlink => NbdNetlink::open()?.disconnect(self.index),
        }
    }

    /// Waits for every connection to end (and, for ioctl, for `NBD_DO_IT` to return and the
    /// sockets to be cleared). The first serving error, if any, is returned.
    pub fn wait(mut self) -> Result<(), KernelError> {
        let mut first_error = None;
        for (connection, conn) in self.conns.drain(..).enumerate() {
            let result = match conn.handle {
                Some(handle) => join(handle),
                None => conn.ended.unwrap_or(Ok(Ended::Lost)),
            };
            if let Err(message) = result {
                first_error.get_or_insert(KernelError::Serve {
                    connection,
                    message,
                });
            }
        }
        if let Control::Ioctl { do_it, .. } = &mut self.control {
            if let Some(handle) = do_it.take() {
                let result = handle.join().unwrap_or_else(|_| {
                    Err(KernelError::Protocol(
                        "the NBD_DO_IT thread panicked".into(),
                    ))
                });
                if let Err(err) = result {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn join(handle: JoinHandle<ServeResult>) -> ServeResult {
    handle
        .join()
        .unwrap_or_else(|_| Err("serving thread panicked".into()))
}

/// `/dev/nbd<index>`.
pub fn device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

/// A RECONFIGURE that keeps the configured timeouts and hands over duplicates of `sockets`.
fn reconfigure_for(config: &DeviceConfig, sockets: &[OwnedFd]) -> Result<Reconfigure, KernelError> {
    let sockets = sockets
        .iter()
        .map(OwnedFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| KernelError::Io {
            what: "duplicate a socket",
            source,
        })?;
    Ok(Reconfigure {
        timeout: Some(config.timeout.as_secs()),
        dead_conn_timeout: Some(config.dead_conn_timeout.as_secs()),
        client_flags: None,
        backend_identifier: config.backend_identifier.clone(),
        sockets,
    })
}

/// RECONFIGURE succeeds even when the kernel keeps none of the new sockets (it only replaces
/// dead ones). A socket the kernel did not keep has no other holder once ours is dropped, so
/// its server sees EOF at once: watch briefly for that.
fn check_taken(servers: &[JoinHandle<ServeResult>]) -> Result<(), KernelError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    while std::time::Instant::now() < deadline {
        if servers.iter().any(JoinHandle::is_finished) {
            return Err(KernelError::Config {
                reason: "the kernel did not take the new connections: the device has no dead \
                         connection to replace (is its server still running?)"
                    .into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

enum Plane {
    Ioctl(Arc<IoctlDevice>),
    Netlink(NbdNetlink),
}

type Servers = (Vec<OwnedFd>, Vec<JoinHandle<ServeResult>>);

/// One socketpair per connection; a thread serves each server end.
fn spawn_servers(
    connections: impl Iterator<Item = usize>,
    serve: &ServeFn,
) -> Result<Servers, KernelError> {
    let mut kernel_ends = Vec::new();
    let mut servers = Vec::new();
    for connection in connections {
        let (kernel_end, server_end) = UnixStream::pair().map_err(|source| KernelError::Io {
            what: "create a socketpair",
            source,
        })?;
        let serve = Arc::clone(serve);
        let handle = std::thread::Builder::new()
            .name(format!("nbd-conn-{connection}"))
            .spawn(move || {
                block_signals();
                serve(connection, server_end)
            })
            .map_err(|source| KernelError::Io {
                what: "start a serving thread",
                source,
            })?;
        kernel_ends.push(OwnedFd::from(kernel_end));
        servers.push(handle);
    }
    Ok((kernel_ends, servers))
}

fn attach_ioctl(
    device: Arc<IoctlDevice>,
    config: &DeviceConfig,
    sockets: &[OwnedFd],
) -> Result<(u32, Control), KernelError> {
    device.configure(config, sockets)?;
    let index = index_of(device.path())?;
    let runner = Arc::clone(&device);
    let do_it = std::thread::Builder::new()
        .name(format!("nbd{index}-do-it"))
        .spawn(move || {
            // A signal landing here would interrupt NBD_DO_IT, and the kernel then shuts the
            // sockets at once, failing in-flight I/O instead of draining it.
            block_signals();
            runner.run()
        })
        .map_err(|source| KernelError::Io {
            what: "start the NBD_DO_IT thread",
            source,
        })?;
    Ok((
        index,
        Control::Ioctl {
            device,
            do_it: Some(do_it),
        },
    ))
}

/// Blocks the usual termination and control signals in the calling thread, so they reach
/// the thread that waits for them (the caller's main thread) and never interrupt a serving
/// thread's or `NBD_DO_IT`'s system calls.
fn block_signals() {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn index_of(path: &Path) -> Result<u32, KernelError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| KernelError::Config {
            reason: format!("{} is not /dev/nbdN", path.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::FLAG_HAS_FLAGS;

    fn never_called() -> ServeFn {
        Arc::new(|_, _| Err("must not serve".into()))
    }

    #[test]
    fn ioctl_attach_needs_an_index() {
        let options = AttachOptions {
            method: AttachMethod::Ioctl,
            index: None,
            connections: 1,
            reconnect: false,
            config: DeviceConfig::new(1 << 20, FLAG_HAS_FLAGS),
        };
        let err = Attachment::start(&options, never_called()).unwrap_err();
        assert!(err.to_string().contains("needs a device index"), "{err}");
    }

    #[test]
    fn a_missing_driver_fails_before_serving() {
        if Path::new("/dev/nbd15").exists() {
            return; // This kernel has the driver: nothing to check here.
        }
        let options = AttachOptions {
            method: AttachMethod::Ioctl,
            index: Some(15),
            connections: 1,
            reconnect: false,
            config: DeviceConfig::new(1 << 20, FLAG_HAS_FLAGS),
        };
        let err = Attachment::start(&options, never_called()).unwrap_err();
        assert!(matches!(err, KernelError::Open { .. }), "{err}");
    }

    #[test]
    fn reconnect_needs_netlink_and_an_index() {
        let options = AttachOptions {
            method: AttachMethod::Ioctl,
            index: Some(0),
            connections: 1,
            reconnect: true,
            config: DeviceConfig::new(1 << 20, FLAG_HAS_FLAGS),
        };
        let err = Attachment::start(&options, never_called()).unwrap_err();
        assert!(
            err.to_string().contains("reconnecting needs netlink"),
            "{err}"
        );
    }

    #[test]
    fn parses_device_indexes() {
        assert_eq!(index_of(Path::new("/dev/nbd12")).unwrap(), 12);
        assert!(index_of(Path::new("/dev/sda")).is_err());
    }
}
