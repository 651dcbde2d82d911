//! `oxmem-nbd`: the seed's program, in Rust. Attaches OmniXtend remote memory (or, until the
//! OmniXtend block backend lands, local memory with `--backend memory`) to `/dev/nbdN` through
//! the kernel's NBD driver, optionally split into several devices, and serves it until SIGINT
//! or SIGTERM, which disconnect cleanly after in-flight requests are answered.

mod window;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use oxio_block::file::{FileBackend, FileOptions};
use oxio_block::memory::MemoryBackend;
use oxio_block::omnixtend::OmnixtendBackend;
use oxio_block::{parse_size, SharedBackend};
use oxio_nbd::kernel::netlink::NbdNetlink;
use oxio_nbd::kernel::{
    prepare_process, AttachMethod, AttachOptions, Attachment, DeviceConfig, Ended, KernelError,
    ServeFn,
};
use oxio_nbd::server::{
    serve_transmission_blocking, Export, Shutdown, ShutdownTrigger, TransmissionMode,
};
use oxio_omnixtend::requester::{Requester, RequesterConfig};
use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::{LaneOrder, MacAddr};
use window::Window;

/// Expose OmniXtend remote memory as Linux block devices (/dev/nbdN).
///
/// Example (the seed's invocation):
///   oxmem-nbd --netdev=enp179s0f0np0 --mac=04:3f:72:dd:0b:05 --size=8G --base=0x0
///
/// Then `mkfs.ext4 /dev/nbd0 && mount /dev/nbd0 /mnt`. Stop with Ctrl+C or SIGTERM: the
/// device is disconnected once in-flight requests are answered; SIGUSR1 prints statistics.
/// Needs root (CAP_SYS_ADMIN) and the nbd module (`modprobe nbd`). Logging: RUST_LOG=debug.
#[derive(Debug, Parser)]
#[command(name = "oxmem-nbd", version, verbatim_doc_comment)]
struct Args {
    /// Network interface that reaches the OmniXtend memory device (raw Ethernet).
    #[arg(long)]
    netdev: Option<String>,
    /// MAC address of the OmniXtend memory device, e.g. 04:3f:72:dd:0b:05.
    #[arg(long)]
    mac: Option<String>,
    /// Bytes of memory to expose, in total over all devices: 4096, 512M, 8G.
    #[arg(long, value_parser = parse_size_arg, required_unless_present = "status")]
    size: Option<u64>,
    /// Address of the first byte on the memory device (0x-prefixed hex or decimal).
    #[arg(long, default_value = "0x0", value_parser = parse_addr)]
    base: u64,
    /// First NBD device; with --num N the devices are consecutive from it.
    #[arg(long, default_value = "/dev/nbd0")]
    device: PathBuf,
    /// Split the memory into N equal devices.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    num: u32,
    /// Where the blocks live: `omnixtend` is the seed's remote memory (needs --mac and
    /// --netdev or --udp); `memory` is local RAM; `file:PATH` is a file or block device at
    /// least --size bytes long.
    #[arg(long, default_value = "omnixtend", value_parser = parse_backend)]
    backend: Backend,
    /// How to attach: `ioctl` (the seed's NBD_DO_IT path) or `netlink` (nbd-client's default;
    /// supports --dead-conn-timeout).
    #[arg(long, value_enum, default_value_t = Method::Ioctl)]
    attach: Method,
    /// Connections (sockets, each served by a thread) per device.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    connections: u32,
    /// Logical block size in bytes (512, 1024, 2048 or 4096).
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Kernel per-request timeout in seconds (0: none).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Netlink only: seconds I/O waits for a reconnection once every connection is dead.
    /// When set, oxmem-nbd also watches its connections: one the kernel shuts down (after a
    /// request exceeded --timeout) is replaced by a fresh one within about 100 ms.
    #[arg(long, default_value_t = 0)]
    dead_conn_timeout: u64,
    /// Reach the memory node over UDP at this address instead of raw Ethernet on --netdev.
    #[arg(long, value_name = "ADDR")]
    udp: Option<std::net::SocketAddr>,
    /// Data byte order within each 8-byte flit: raw (the C driver's) or spec.
    #[arg(long, default_value = "raw")]
    lane_order: LaneOrder,
    /// Behave like the C driver on the wire (for memory nodes that expect it).
    #[arg(long)]
    c_compat: bool,
    /// MTU of the path to the memory node (default: the interface's; 1500 with --udp).
    #[arg(long)]
    mtu: Option<usize>,
    /// Seconds to wait for the memory node to answer at start.
    #[arg(long, default_value_t = 5)]
    connect_timeout: u64,
    /// Netlink only: take over devices still attached from a previous oxmem-nbd that died
    /// (RECONFIGURE with fresh connections), instead of attaching new ones. Works while the
    /// devices' --dead-conn-timeout has not expired, and needs the same --backend and --base.
    #[arg(long, requires = "dead_conn_timeout")]
    reconnect: bool,
    /// Print every NBD device the kernel has, and whether it is connected, then exit
    /// (generic netlink STATUS).
    #[arg(long)]
    status: bool,
}

impl Args {
    /// --size (clap requires it unless --status).
    fn size(&self) -> u64 {
        self.size.unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Omnixtend,
    Memory,
    File(PathBuf),
}

fn parse_backend(text: &str) -> Result<Backend, String> {
    match text {
        "omnixtend" => Ok(Backend::Omnixtend),
        "memory" => Ok(Backend::Memory),
        _ => match text.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(Backend::File(PathBuf::from(path))),
            _ => Err(format!("`{text}` is not omnixtend, memory or file:PATH")),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    Ioctl,
    Netlink,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn parse_addr(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not an address (0x-prefixed hex or decimal)"))
}

/// `/dev/nbd3` -> 3.
fn first_index(device: &std::path::Path) -> Result<u32, String> {
    device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("--device {} is not /dev/nbdN", device.display()))
}

/// One device's share of the memory.
#[derive(Debug)]
struct Slice {
    /// N of /dev/nbdN.
    index: u32,
    /// Offset in the whole memory.
    offset: u64,
    /// Bus address of the first byte (--base + offset).
    base: u64,
    size: u64,
}

fn slices(args: &Args) -> Result<Vec<Slice>, String> {
    let first = first_index(&args.device)?;
    let each = args.size() / u64::from(args.num);
    let block = u64::from(args.block_size.max(1));
    if each == 0 || each % block != 0 {
        return Err(format!(
            "--size {} split into --num {} devices gives {each} bytes each, which is not a \
             positive multiple of the block size {block}",
            args.size(),
            args.num
        ));
    }
    (0..args.num)
        .map(|i| {
            let index = first.checked_add(i).ok_or("device index overflows")?;
            let offset = each * u64::from(i);
            let base = args
                .base
                .checked_add(offset)
                .ok_or("--base + --size overflows the address space")?;
            Ok(Slice {
                index,
                offset,
                base,
                size: each,
            })
        })
        .collect()
}

/// The whole memory (all --num devices), which each device sees a window of, and the
/// OmniXtend requester behind it (closed at exit, as the seed closed its connection).
fn open_whole(args: &Args) -> Result<(SharedBackend, Option<Arc<Requester>>), BoxError> {
    match &args.backend {
        Backend::Memory => Ok((Arc::new(MemoryBackend::new(args.size())?), None)),
        Backend::File(path) => {
            let backend: SharedBackend = Arc::new(FileBackend::open(path, FileOptions::default())?);
            let have = backend.capabilities().size;
            if have < args.size() {
                return Err(format!(
                    "{} holds {have} bytes, less than --size {}",
                    path.display(),
                    args.size()
                )
                .into());
            }
            Ok((backend, None))
        }
        Backend::Omnixtend => {
            let requester = Arc::new(connect_omnixtend(args)?);
            let name = format!("omnixtend:{}", args.mac.as_deref().unwrap_or_default());
            let backend = Arc::new(OmnixtendBackend::new(Arc::clone(&requester), name));
            Ok((backend, Some(requester)))
        }
    }
}

/// Opens the TLoE connection to the memory node.
fn connect_omnixtend(args: &Args) -> Result<Requester, BoxError> {
    let Some(mac) = args.mac.as_deref() else {
        return Err("--backend omnixtend needs --mac (the memory node's MAC address)".into());
    };
    let node: MacAddr = mac.parse().map_err(|e| format!("--mac {mac}: {e}"))?;
    let (transport, local, mtu): (Box<dyn Transport>, MacAddr, usize) =
        match (&args.netdev, args.udp) {
            (Some(dev), _) => {
                let sock = PacketSocket::open(dev).map_err(|e| {
                    format!("cannot open a raw socket on {dev}: {e} (needs root or CAP_NET_RAW)")
                })?;
                let (local, mtu) = (sock.mac(), args.mtu.unwrap_or(sock.mtu()));
                (Box::new(sock), local, mtu)
            }
            (None, Some(addr)) => {
                let any = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                let udp = UdpTransport::bind(any, Some(addr))?;
                (
                    Box::new(udp),
                    MacAddr([2, 0, 0, 0, 0, 1]),
                    args.mtu.unwrap_or(1500),
                )
            }
            (None, None) => {
                return Err(
                    "--backend omnixtend needs --netdev IF (raw Ethernet) or --udp ADDR".into(),
                )
            }
        };
    let mut cfg = RequesterConfig::new(local, node, args.size()).with_mtu(mtu);
    cfg.base = args.base;
    cfg.lane_order = args.lane_order;
    if args.c_compat {
        cfg = cfg.c_compatible();
    }
    tracing::info!(%node, %local, mtu, base = args.base, size = args.size(), "connecting to the memory node");
    Requester::connect(cfg, transport, Duration::from_secs(args.connect_timeout))
        .map_err(|e| format!("cannot reach the memory node {node}: {e}").into())
}

fn backend_name(backend: &Backend) -> String {
    match backend {
        Backend::Omnixtend => "omnixtend".into(),
        Backend::Memory => "memory".into(),
        Backend::File(path) => format!("file:{}", path.display()),
    }
}

/// Attaches one device and starts serving it.
fn attach(
    args: &Args,
    whole: &SharedBackend,
    slice: &Slice,
    shutdown: &ShutdownTrigger,
) -> Result<(Attachment, Arc<Export>), BoxError> {
    let backend: SharedBackend =
        Arc::new(Window::new(Arc::clone(whole), slice.offset, slice.size)?);
    let export = Arc::new(Export::new(format!("nbd{}", slice.index), backend));
    let mode = TransmissionMode::simple();
    let mut config = DeviceConfig::new(slice.size, export.transmission_flags(&mode));
    config.block_size = args.block_size;
    config.timeout = Duration::from_secs(args.timeout);
    config.dead_conn_timeout = Duration::from_secs(args.dead_conn_timeout);
    // Stable across restarts: --reconnect must present the same identifier.
    config.backend_identifier = Some(format!(
        "oxmem-nbd:{}@{:#x}",
        backend_name(&args.backend),
        slice.base
    ));
    let options = AttachOptions {
        method: match args.attach {
            Method::Ioctl => AttachMethod::Ioctl,
            Method::Netlink => AttachMethod::Netlink,
        },
        index: Some(slice.index),
        connections: usize::try_from(args.connections)?,
        reconnect: args.reconnect,
        config,
    };
    let served = Arc::clone(&export);
    let signal: Shutdown = shutdown.subscribe();
    let serve: ServeFn = Arc::new(move |connection, stream| {
        let result = serve_transmission_blocking(stream, Arc::clone(&served), mode, signal.clone());
        match result {
            Ok(stats) => {
                tracing::debug!(connection, ?stats, "connection ended");
                Ok(if stats.clean_disconnect {
                    Ended::Disconnected
                } else {
                    Ended::Lost
                })
            }
            Err(err) => Err(err.to_string()),
        }
    });
    let attachment = Attachment::start(&options, serve)?;
    Ok((attachment, export))
}

/// `--status`: one line per device, `nbdN connected|disconnected`.
fn print_status() -> Result<(), BoxError> {
    let mut devices = NbdNetlink::open()?.status(None)?;
    devices.sort_by_key(|d| d.index);
    for device in devices {
        let state = if device.connected {
            "connected"
        } else {
            "disconnected"
        };
        println!("nbd{} {state}", device.index);
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), BoxError> {
    if args.status {
        return print_status();
    }
    let prep = prepare_process();
    if let Err(err) = &prep.mlockall {
        tracing::warn!("mlockall failed ({err}): pages may be swapped out under memory pressure");
    }
    if let Err(err) = &prep.io_flusher {
        tracing::warn!("PR_SET_IO_FLUSHER failed ({err}): reclaim could deadlock on our device");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let report = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&report))?;
    let slices = slices(args)?;
    let (whole, requester) = open_whole(args)?;
    let (trigger, _) = Shutdown::new();
    let mut devices = Vec::new();
    for slice in slices {
        match attach(args, &whole, &slice, &trigger) {
            Ok((attachment, export)) => {
                println!(
                    "oxmem-nbd: {} {} ({} bytes, {} backend, base {:#x}, {:?})",
                    attachment.path().display(),
                    if args.reconnect {
                        "reconnected"
                    } else {
                        "attached"
                    },
                    slice.size,
                    backend_name(&args.backend),
                    slice.base,
                    args.attach
                );
                devices.push((attachment, export));
            }
            Err(err) => {
                shutdown_all(&devices, &trigger);
                let _ = wait_all(devices); // The attach error is the one to report.
                close(requester.as_deref());
                return Err(err);
            }
        }
    }
    let mut monitors = vec![Monitor::default(); devices.len()];
    let give_up = Duration::from_secs(args.dead_conn_timeout);
    while !stop.load(Ordering::Relaxed) {
        let mut alive = false;
        for ((attachment, _), monitor) in devices.iter_mut().zip(&mut monitors) {
            alive |= monitor.tick(attachment, give_up);
        }
        if !alive {
            break;
        }
        if report.swap(false, Ordering::Relaxed) {
            for (attachment, export) in &devices {
                println!(
                    "oxmem-nbd: {}: {}",
                    attachment.path().display(),
                    export.stats().snapshot()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if stop.load(Ordering::Relaxed) {
        println!("oxmem-nbd: signal received, disconnecting");
        shutdown_all(&devices, &trigger);
    }
    let result = wait_all(devices);
    close(requester.as_deref());
    result
}

/// Replaces a device's dead connections ([`Attachment::revive`]), retrying every second
/// while the kernel has not yet declared the old ones dead, for up to the dead-connection
/// timeout.
#[derive(Debug, Clone, Default)]
struct Monitor {
    next_try: Option<Instant>,
    failing_since: Option<Instant>,
}

impl Monitor {
    /// Returns whether the device still has, or may get back, a connection.
    fn tick(&mut self, attachment: &mut Attachment, give_up: Duration) -> bool {
        let now = Instant::now();
        if self.next_try.is_none_or(|t| now >= t) {
            self.next_try = None;
            match attachment.revive() {
                Ok(0) => {}
                Ok(n) => {
                    println!(
                        "oxmem-nbd: {} reconnected {n} dead connection(s)",
                        attachment.path().display()
                    );
                    self.failing_since = None;
                }
                Err(err) => {
                    // Most often: the kernel has not yet seen the old socket die.
                    tracing::warn!("{}: reconnecting: {err}", attachment.path().display());
                    self.failing_since.get_or_insert(now);
                    self.next_try = Some(now + Duration::from_secs(1));
                }
            }
        }
        let retrying = self
            .failing_since
            .is_some_and(|t| now.duration_since(t) < give_up);
        !attachment.is_finished() || retrying
    }
}

/// Finishes the requester's in-flight transfers and closes the TLoE connection.
fn close(requester: Option<&Requester>) {
    if let Some(requester) = requester {
        requester.shutdown();
        println!(
            "oxmem-nbd: OmniXtend connection closed; {:?}",
            requester.stats()
        );
    }
}

/// Asks the kernel to disconnect each device; if a device does not let go within 10 s, the
/// servers are told to drain and close on their own.
fn shutdown_all(devices: &[(Attachment, Arc<Export>)], trigger: &ShutdownTrigger) {
    for (attachment, _) in devices {
        if let Err(err) = attachment.disconnect() {
            tracing::warn!("disconnecting {}: {err}", attachment.path().display());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !devices.iter().all(|(a, _)| a.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    trigger.fire();
}

fn wait_all(devices: Vec<(Attachment, Arc<Export>)>) -> Result<(), BoxError> {
    let mut first: Option<KernelError> = None;
    for (attachment, export) in devices {
        let path = attachment.path().display().to_string();
        if let Err(err) = attachment.wait() {
            tracing::error!("{path}: {err}");
            first.get_or_insert(err);
        }
        println!("oxmem-nbd: {path} detached; {}", export.stats().snapshot());
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oxmem-nbd: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["oxmem-nbd", "--size=8M"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn accepts_the_seed_options() {
        let a = args(&[
            "--netdev=eth0",
            "--mac=04:3f:72:dd:0b:05",
            "--base=0x1000",
            "--device=/dev/nbd2",
        ]);
        assert_eq!(a.size(), 8 << 20);
        assert_eq!(a.base, 0x1000);
        assert_eq!(a.backend, Backend::Omnixtend);
        assert_eq!(first_index(&a.device).unwrap(), 2);
    }

    #[test]
    fn splits_memory_into_consecutive_devices() {
        let a = args(&["--num=4", "--base=0x100000", "--device=/dev/nbd1"]);
        let s = slices(&a).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].index, s[0].base, s[0].size), (1, 0x100000, 2 << 20));
        assert_eq!((s[3].index, s[3].base), (4, 0x100000 + 3 * (2 << 20)));
        let uneven = args(&["--num=3"]);
        assert!(slices(&uneven)
            .unwrap_err()
            .contains("multiple of the block size"));
    }

    #[test]
    fn omnixtend_backend_says_what_is_missing() {
        assert_eq!(
            parse_backend("file:/x").unwrap(),
            Backend::File("/x".into())
        );
        assert!(parse_backend("tape").is_err());
        let a = args(&[]);
        let err = open_whole(&a).err().unwrap().to_string();
        assert!(err.contains("needs --mac"), "{err}");
        let a = args(&["--mac=04:3f:72:dd:0b:05"]);
        let err = open_whole(&a).err().unwrap().to_string();
        assert!(err.contains("--netdev IF"), "{err}");
        let a = args(&["--mac=nonsense", "--netdev=lo"]);
        let err = open_whole(&a).err().unwrap().to_string();
        assert!(err.contains("--mac nonsense"), "{err}");
    }
}
