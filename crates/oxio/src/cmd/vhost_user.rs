//! `oxio vhost-user blk`: a virtio-blk device served to a VMM (QEMU's vhost-user-blk-pci,
//! Cloud Hypervisor's --disk vhost_user) over a vhost-user socket.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use std::time::Duration;

use oxio_block::file::{Engine, FileOptions};
use oxio_block::omnixtend::OmnixtendBackend;
use oxio_block::{parse_size, BlockBackend, BlockingQueue, SharedBackend};
use oxio_omnixtend::requester::{Requester, RequesterConfig};
use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::{LaneOrder, MacAddr};
use oxio_vhost_user::{Daemon, Shutdown};
use oxio_virtio::blk::{Block, BlockConfig};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use super::CmdError;

/// vhost-user backends.
#[derive(Debug, Subcommand)]
pub enum VhostUserCommand {
    /// Serve a virtio-blk disk.
    Blk(BlkArgs),
}

/// Serve a virtio-blk disk over vhost-user.
#[derive(Debug, Args)]
#[command(
    long_about = "Serves a virtio-blk disk to a VMM over a vhost-user Unix socket. The \
daemon listens before the VMM starts, serves one VMM connection at a time, and when the VMM \
disconnects (guest shut down, VMM restarted) it stops the device and waits for the next one, \
so QEMU's `reconnect-ms` chardev option works. Requests in flight are logged in the shared \
inflight region QEMU keeps for the device (vhost-user INFLIGHT_SHMFD), so a daemon restarted \
after a crash (even SIGKILL) serves the requests the old one never completed, in their \
original order, before anything new.\n\n\
QEMU needs shared guest RAM:\n  qemu-system-x86_64 -m 512M \\\n    \
-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \\\n    \
-chardev socket,id=vu,path=SOCKET[,reconnect-ms=1000] \\\n    \
-device vhost-user-blk-pci,chardev=vu,num-queues=N ...\n\n\
Backends (--backend):\n  memory:SIZE   sparse RAM disk, e.g. memory:1G\n  \
file:PATH     regular file or block device (io_uring; --direct for O_DIRECT, --engine)\n  \
omnixtend:MAC@IFACE | omnixtend:MAC@udp:HOST:PORT\n                \
OmniXtend remote memory of the node MAC, over raw Ethernet on IFACE (root) or TLoE in UDP; \
needs --size (and --base if the disk does not start at bus address 0)\n\n\
Features offered: flush, discard and write-zeroes (when the backend supports them), read-only, \
multi-queue (one I/O thread per queue), indirect descriptors, event index, packed rings.\n\n\
SIGINT/SIGTERM: finish the requests in flight, flush the backend, remove the socket and exit \
(a second signal exits at once). Logging: RUST_LOG=debug shows every protocol step."
)]
pub struct BlkArgs {
    /// Unix socket to listen on (a stale socket file is replaced).
    #[arg(short, long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Backend: memory:SIZE, file:PATH, or omnixtend:MAC@IFACE / omnixtend:MAC@udp:HOST:PORT.
    #[arg(short, long, value_name = "SPEC")]
    pub backend: String,
    /// omnixtend: bytes of remote memory to use as the disk (suffixes K, M, G, T).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// omnixtend: bus address of the disk's first byte.
    #[arg(long, default_value_t = 0, value_parser = parse_u64)]
    pub base: u64,
    /// omnixtend: byte order within each 8-byte flit (raw: the C driver's; spec).
    #[arg(long, default_value = "raw")]
    pub lane_order: LaneOrder,
    /// omnixtend: MTU of the path to the node (default: the interface's; 1500 over UDP).
    #[arg(long)]
    pub mtu: Option<usize>,
    /// Request queues offered (VIRTIO_BLK_F_MQ when more than 1); each has its own I/O thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_queues: u16,
    /// Entries per queue (a power of two).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u16,
    /// Refuse writes and advertise the disk read-only (VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Open file backends with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    pub direct: bool,
    /// I/O engine of a file backend: auto (io_uring when available, but the threads for a
    /// buffered file on tmpfs/ramfs, where io_uring would hand every request to its own
    /// workers), io_uring only, or a few blocking threads per queue (which complete requests
    /// out of order).
    #[arg(long, value_enum, default_value_t = FileEngine::Auto)]
    pub engine: FileEngine,
    /// Serial number the guest reads (GET_ID; at most 20 bytes are sent).
    #[arg(long, default_value = "oxio")]
    pub serial: String,
    /// Longest time (µs) a queue's thread polls for new requests and completions before it
    /// sleeps; it adapts below this to how soon work really comes, and drops to no polling
    /// on an idle device. Polling spares the guest most of its notifications (VM exits), at
    /// the cost of host CPU while requests keep coming; it yields the CPU to any other
    /// thread that wants it. 0 (default): never poll.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub poll_max_us: u64,
    /// Longest time (µs) a completion waits for others still in flight on the backend so the
    /// guest gets them with one interrupt. A lone request is never delayed. 0: never wait.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub coalesce_us: u64,
}

/// `--engine`: how a file backend does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileEngine {
    /// io_uring when the kernel allows it, else threads; threads for a buffered file in RAM.
    Auto,
    /// io_uring only.
    IoUring,
    /// Blocking system calls on a few threads per queue.
    Threads,
}

impl From<FileEngine> for Engine {
    fn from(e: FileEngine) -> Self {
        match e {
            FileEngine::Auto => Engine::Auto,
            FileEngine::IoUring => Engine::IoUring,
            FileEngine::Threads => Engine::ThreadPool,
        }
    }
}

/// Runs the command.
pub fn run(cmd: VhostUserCommand) -> Result<(), CmdError> {
    match cmd {
        VhostUserCommand::Blk(args) => blk(args),
    }
}

fn blk(args: BlkArgs) -> Result<(), CmdError> {
    if !args.queue_size.is_power_of_two() {
        return Err(format!("--queue-size {} is not a power of two", args.queue_size).into());
    }
    let options = FileOptions {
        read_only: args.read_only,
        direct: args.direct,
        engine: args.engine.into(),
    };
    let (backend, requester) = if args.backend.starts_with("omnixtend:") {
        let (backend, requester) = open_omnixtend(&args)?;
        (backend, Some(requester))
    } else {
        let backend = oxio_block::open_spec(&args.backend, &options)
            .map_err(|e| format!("--backend {}: {e}", args.backend))?;
        (backend, None)
    };
    let size = backend.capabilities().size;
    let cfg = BlockConfig {
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        read_only: args.read_only,
        serial: args.serial.clone(),
        poll_max_ns: args.poll_max_us.saturating_mul(1000),
        coalesce_ns: args.coalesce_us.saturating_mul(1000),
        ..BlockConfig::default()
    };
    let device = Block::new(backend.clone(), cfg);
    // Signals are caught from before the socket exists: a SIGTERM as soon as it appears
    // must stop the daemon gracefully, not kill it with the default action.
    let signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    let daemon = Arc::new(Daemon::bind(&args.socket, device)?);
    tracing::info!(
        socket = %args.socket.display(),
        backend = %args.backend,
        size,
        queues = args.num_queues,
        read_only = args.read_only,
        "vhost-user-blk ready"
    );
    let shutdown = Shutdown::new()?;
    watch_signals(signals, shutdown.clone(), daemon.clone())?;
    daemon.serve(&shutdown)?;
    tracing::info!(stats = %daemon.summary(), "stopped");
    drop(daemon);
    flush(backend.as_ref());
    if let Some(requester) = requester {
        requester.shutdown();
        tracing::info!(stats = ?requester.stats(), "OmniXtend connection closed");
    }
    Ok(())
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e}"))
}

/// `omnixtend:MAC@IFACE` or `omnixtend:MAC@udp:HOST:PORT`: connects to the memory node.
fn open_omnixtend(args: &BlkArgs) -> Result<(SharedBackend, Arc<Requester>), CmdError> {
    let spec = &args.backend;
    let bad =
        || format!("--backend {spec}: use omnixtend:MAC@IFACE or omnixtend:MAC@udp:HOST:PORT");
    let (mac, place) = spec
        .strip_prefix("omnixtend:")
        .and_then(|rest| rest.split_once('@'))
        .ok_or_else(bad)?;
    let node: MacAddr = mac.parse().map_err(|e| format!("--backend {spec}: {e}"))?;
    let size = args
        .size
        .as_deref()
        .ok_or("--backend omnixtend needs --size (bytes of remote memory to use)")?;
    let size = parse_size(size).map_err(|e| format!("--size: {e}"))?;
    let (transport, local, mtu): (Box<dyn Transport>, MacAddr, usize) =
        match place.strip_prefix("udp:") {
            Some(addr) => {
                let node_addr = addr.parse().map_err(|e| format!("--backend {spec}: {e}"))?;
                let any = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                let udp = UdpTransport::bind(any, Some(node_addr))?;
                // Over UDP the MAC only names us to the node.
                (
                    Box::new(udp),
                    MacAddr([2, 0, 0, 0, 0, 1]),
                    args.mtu.unwrap_or(1500),
                )
            }
            None => {
                let sock = PacketSocket::open(place).map_err(|e| {
                    format!("cannot open a raw socket on {place}: {e} (needs root or CAP_NET_RAW)")
                })?;
                let (local, mtu) = (sock.mac(), args.mtu.unwrap_or(sock.mtu()));
                (Box::new(sock), local, mtu)
            }
        };
    let mut cfg = RequesterConfig::new(local, node, size).with_mtu(mtu);
    cfg.base = args.base;
    cfg.lane_order = args.lane_order;
    tracing::info!(%node, %local, mtu, base = args.base, size, "connecting to the memory node");
    let requester = Requester::connect(cfg, transport, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the memory node {node}: {e}"))?;
    let requester = Arc::new(requester);
    let backend: SharedBackend =
        Arc::new(OmnixtendBackend::new(Arc::clone(&requester), spec.clone()));
    Ok((backend, requester))
}

/// First SIGINT/SIGTERM: graceful shutdown; second: exit at once. SIGUSR1: log statistics.
fn watch_signals(
    mut signals: Signals,
    shutdown: Shutdown,
    daemon: Arc<Daemon<Block>>,
) -> Result<(), CmdError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    tracing::info!(stats = %daemon.summary(), "statistics");
                    continue;
                }
                seen += 1;
                if seen > 1 {
                    tracing::warn!(sig, "second signal: exiting without draining");
                    std::process::exit(130);
                }
                tracing::info!(sig, "stopping: finishing in-flight requests");
                shutdown.trigger();
            }
        })?;
    Ok(())
}

fn flush(backend: &dyn BlockBackend) {
    if backend.capabilities().read_only {
        return;
    }
    match backend.open_queue(1) {
        Ok(queue) => {
            if let Err(e) = BlockingQueue::new(queue).flush() {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot open a queue for the final flush"),
    }
}
