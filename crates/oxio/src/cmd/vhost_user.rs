//! `oxio vhost-user blk`: a virtio-blk device served to a VMM (QEMU's vhost-user-blk-pci,
//! Cloud Hypervisor's --disk vhost_user) over a vhost-user socket.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use oxio_block::file::FileOptions;
use oxio_block::{BlockBackend, BlockingQueue};
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
so QEMU's `reconnect-ms` chardev option works.\n\n\
QEMU needs shared guest RAM:\n  qemu-system-x86_64 -m 512M \\\n    \
-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \\\n    \
-chardev socket,id=vu,path=SOCKET[,reconnect-ms=1000] \\\n    \
-device vhost-user-blk-pci,chardev=vu,num-queues=N ...\n\n\
Backends (--backend):\n  memory:SIZE   sparse RAM disk, e.g. memory:1G\n  \
file:PATH     regular file or block device (io_uring; --direct for O_DIRECT)\n\n\
Features offered: flush, discard and write-zeroes (when the backend supports them), read-only, \
multi-queue (one I/O thread per queue), indirect descriptors, event index, packed rings.\n\n\
SIGINT/SIGTERM: finish the requests in flight, flush the backend, remove the socket and exit \
(a second signal exits at once). Logging: RUST_LOG=debug shows every protocol step."
)]
pub struct BlkArgs {
    /// Unix socket to listen on (a stale socket file is replaced).
    #[arg(short, long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Backend: memory:SIZE or file:PATH.
    #[arg(short, long, value_name = "SPEC")]
    pub backend: String,
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
    /// Serial number the guest reads (GET_ID; at most 20 bytes are sent).
    #[arg(long, default_value = "oxio")]
    pub serial: String,
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
        ..FileOptions::default()
    };
    let backend = oxio_block::open_spec(&args.backend, &options)
        .map_err(|e| format!("--backend {}: {e}", args.backend))?;
    let size = backend.capabilities().size;
    let cfg = BlockConfig {
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        read_only: args.read_only,
        serial: args.serial.clone(),
        ..BlockConfig::default()
    };
    let device = Block::new(backend.clone(), cfg);
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
    watch_signals(shutdown.clone(), daemon.clone())?;
    daemon.serve(&shutdown)?;
    tracing::info!(stats = %daemon.summary(), "stopped");
    drop(daemon);
    flush(backend.as_ref());
    Ok(())
}

/// First SIGINT/SIGTERM: graceful shutdown; second: exit at once. SIGUSR1: log statistics.
fn watch_signals(shutdown: Shutdown, daemon: Arc<Daemon<Block>>) -> Result<(), CmdError> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
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
