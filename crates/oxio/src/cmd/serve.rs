//! `oxio serve`: export block backends over NBD on Unix sockets, TCP and systemd-activated
//! sockets, until SIGINT/SIGTERM, then drain in-flight requests, flush and exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use std::sync::atomic::AtomicBool;

use oxio_block::file::{Engine, FileOptions};
use oxio_block::omnixtend::OmnixtendBackend;
use oxio_block::SharedBackend;
use oxio_nbd::server::{
    listeners_from_systemd, Export, ExportSet, Listener, Server, ShardRuntimes, Shutdown,
};
use oxio_omnixtend::endpoint::{serve as serve_node, EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::requester::{Requester, RequesterConfig};
use oxio_omnixtend::transport::fault::Faults;
use oxio_omnixtend::transport::mem::pair;
use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::MacAddr;
use tokio::signal::unix::{signal, SignalKind};

use super::CmdError;

/// The well-known NBD port.
const NBD_PORT: u16 = 10809;

/// Serve block devices over NBD.
#[derive(Debug, Args)]
#[command(
    long_about = "Serves block devices over the NBD protocol to qemu, the libnbd tools \
(nbdinfo, nbdcopy, nbdfuse, nbdsh), fio and nbd-client.\n\n\
With no flags it starts a software OmniXtend memory node in-process (1 GiB, on the in-memory \
TLoE transport), puts the OmniXtend backend on it, and exports that as \"oxio\" (also the \
default export) on a Unix socket and on 127.0.0.1:10809, printing the URIs and client commands \
to paste.\n\n\
Backends (--backend, --export NAME=SPEC):\n  \
omnixtend:SIZE                                in-process memory node (the default, omnixtend:1G)\n  \
omnixtend:netdev=IF,mac=MAC,size=SIZE[,base=ADDR]  a memory node over raw Ethernet (root/CAP_NET_RAW)\n  \
omnixtend:udp=HOST:PORT,mac=MAC,size=SIZE[,base=ADDR]  a memory node over UDP\n  \
memory:SIZE                                   sparse RAM disk, e.g. memory:1G\n  \
file:PATH                                     regular file or block device (io_uring; --direct)\n\n\
When started by systemd socket activation (LISTEN_FDS), or under `nbdinfo -- [ oxio serve ]`, \
it serves the passed sockets instead of opening its own.\n\n\
SIGINT/SIGTERM stop accepting, finish every in-flight request, flush and exit (a second \
signal exits at once). SIGUSR1 prints statistics. Logging: RUST_LOG=debug for per-connection \
detail."
)]
pub struct ServeArgs {
    /// Backend of the main export: omnixtend:SIZE, omnixtend:netdev=..|udp=.., memory:SIZE or file:PATH.
    #[arg(short, long, default_value = "omnixtend:1G", value_name = "SPEC")]
    pub backend: String,
    /// Name of the main export (clients that ask for the empty name get it too).
    #[arg(short, long, default_value = "oxio")]
    pub name: String,
    /// Description shown by nbdinfo and export listings.
    #[arg(long)]
    pub description: Option<String>,
    /// Another export, as NAME=SPEC (repeatable), e.g. --export scratch=memory:64M.
    #[arg(long = "export", value_name = "NAME=SPEC")]
    pub exports: Vec<String>,
    /// Listen on this Unix socket (repeatable). Default: $XDG_RUNTIME_DIR or /tmp, oxio-nbd.sock.
    #[arg(long = "unix", value_name = "PATH")]
    pub unix: Vec<PathBuf>,
    /// Listen on this TCP address (repeatable). Default: 127.0.0.1:10809.
    #[arg(long = "tcp", value_name = "ADDR:PORT")]
    pub tcp: Vec<String>,
    /// Refuse writes (EPERM) and advertise the exports read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Open file backends with O_DIRECT (aligned I/O bypasses the page cache).
    #[arg(long)]
    pub direct: bool,
    /// I/O engine for file backends.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// Require requests aligned to this many bytes (advertised via NBD_INFO_BLOCK_SIZE).
    #[arg(long, default_value_t = 1, value_name = "BYTES")]
    pub min_block_size: u32,
    /// Log statistics every SECONDS (0: only on SIGUSR1 and at exit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub stats_interval: u64,
    /// Most clients served at once; more are closed on accept.
    #[arg(long, default_value_t = oxio_nbd::server::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
    /// Threads serving connections (default: one per CPU). Each connection stays on one of
    /// them, taken in turn, so a single client keeps one thread busy and wakes no other.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Let a busy connection poll its socket for up to this many microseconds before it
    /// sleeps (adaptive: an idle connection does not poll; only as many connections poll as
    /// there are worker threads, and never on every CPU). Helps when client and server
    /// compete for CPUs (fewer wake-ups per request); on an idle machine it measured neutral
    /// to slower, so it is off (0) by default. Try 50.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    pub poll_us: u64,
}

/// `--engine` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    /// io_uring when available, else a thread pool; the pool for a buffered file in RAM.
    Auto,
    /// io_uring only.
    IoUring,
    /// Blocking syscalls on a thread pool.
    ThreadPool,
}

/// Runs the command.
pub fn run(args: ServeArgs) -> Result<(), CmdError> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    // Connections run on their own single-threaded runtimes (one per thread, see
    // `Server::shards`); this one accepts them and handles signals and stats.
    let shards = ShardRuntimes::start(threads, "oxio-conn")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(args, shards.handles()));
    drop(rt);
    shards.stop();
    result
}

fn file_options(args: &ServeArgs) -> FileOptions {
    let engine = match args.engine {
        EngineArg::Auto => Engine::Auto,
        EngineArg::IoUring => Engine::IoUring,
        EngineArg::ThreadPool => Engine::ThreadPool,
    };
    FileOptions {
        read_only: args.read_only,
        direct: args.direct,
        engine,
    }
}

fn exports(args: &ServeArgs) -> Result<ExportSet, CmdError> {
    let opts = file_options(args);
    let mut specs = vec![(args.name.clone(), args.backend.clone())];
    for e in &args.exports {
        let (name, spec) = e
            .split_once('=')
            .ok_or_else(|| format!("--export {e:?}: use NAME=SPEC"))?;
        specs.push((name.to_owned(), spec.to_owned()));
    }
    let mut list = Vec::new();
    for (name, spec) in specs {
        if list.iter().any(|e: &Arc<Export>| e.name() == name) {
            return Err(format!("two exports are named {name:?}").into());
        }
        let backend = open_backend(&spec, &opts)?;
        let description = backend.describe();
        let mut export = Export::new(name, backend)
            .read_only(args.read_only)
            .min_block_size(args.min_block_size)
            .busy_poll(std::time::Duration::from_micros(args.poll_us.min(10_000)));
        export = export.description(args.description.clone().unwrap_or(description));
        list.push(Arc::new(export));
    }
    Ok(ExportSet::new(list))
}

/// Opens a backend specification; `omnixtend:` forms are handled here, the rest by
/// `oxio_block::open_spec`.
fn open_backend(spec: &str, opts: &FileOptions) -> Result<SharedBackend, CmdError> {
    match spec.strip_prefix("omnixtend:") {
        Some(rest) => omnixtend_backend(rest).map_err(|e| format!("backend {spec:?}: {e}").into()),
        None => Ok(oxio_block::open_spec(spec, opts)?),
    }
}

fn omnixtend_backend(rest: &str) -> Result<SharedBackend, CmdError> {
    if !rest.contains('=') {
        return local_node(oxio_block::parse_size(rest)?);
    }
    let mut kv = std::collections::HashMap::new();
    for item in rest.split(',') {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not KEY=VALUE"))?;
        kv.insert(k, v);
    }
    let need = |k: &str| kv.get(k).copied().ok_or_else(|| format!("missing {k}="));
    let node: MacAddr = need("mac")?.parse().map_err(|e| format!("mac: {e}"))?;
    let size = oxio_block::parse_size(need("size")?)?;
    let base = match kv.get("base") {
        Some(b) => parse_u64(b)?,
        None => 0,
    };
    let (transport, local, mtu): (Box<dyn Transport>, MacAddr, usize) =
        match (kv.get("netdev"), kv.get("udp")) {
            (Some(dev), _) => {
                let sock = PacketSocket::open(dev).map_err(|e| {
                    format!("cannot open a raw socket on {dev}: {e} (needs root or CAP_NET_RAW)")
                })?;
                let (local, mtu) = (sock.mac(), sock.mtu());
                (Box::new(sock), local, mtu)
            }
            (None, Some(addr)) => {
                let peer: std::net::SocketAddr =
                    addr.parse().map_err(|e| format!("udp={addr}: {e}"))?;
                let udp =
                    UdpTransport::bind(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), Some(peer))?;
                (Box::new(udp), MacAddr([2, 0, 0, 0, 0, 1]), 1500)
            }
            (None, None) => {
                return Err(
                    "needs netdev=IF or udp=HOST:PORT (or just a size for an in-process node)"
                        .into(),
                )
            }
        };
    let mut cfg = RequesterConfig::new(local, node, size).with_mtu(mtu);
    cfg.base = base;
    let req = Requester::connect(cfg, transport, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the memory node {node}: {e}"))?;
    Ok(Arc::new(OmnixtendBackend::new(
        Arc::new(req),
        node.to_string(),
    )))
}

fn parse_u64(text: &str) -> Result<u64, CmdError> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e}").into())
}

/// A software OmniXtend memory node on a thread of this process, reached over the in-memory
/// TLoE transport: the whole OmniXtend stack (requester, link, endpoint) without a network.
fn local_node(size: u64) -> Result<SharedBackend, CmdError> {
    let (near, mut far) = pair(Faults::NONE, Faults::NONE, 1);
    let node_mac = MacAddr::local(2);
    let memory = Memory::anonymous(size, 0)
        .map_err(|e| format!("cannot map {size} bytes for the memory node: {e}"))?;
    let mut core = EndpointCore::new(EndpointConfig::new(node_mac), memory);
    // The node lives as long as the process: it stops when the process exits.
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    std::thread::Builder::new()
        .name("oxio-memory-node".into())
        .spawn(move || {
            if let Err(e) = serve_node(&mut core, &mut far, stop) {
                tracing::error!(error = %e, "in-process memory node stopped");
            }
        })?;
    let cfg = RequesterConfig::new(MacAddr::local(1), node_mac, size);
    let req = Requester::connect(cfg, Box::new(near), Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the in-process memory node: {e}"))?;
    Ok(Arc::new(OmnixtendBackend::new(Arc::new(req), "in-process")))
}

fn default_unix_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join("oxio-nbd.sock")
}

async fn listeners(args: &ServeArgs) -> Result<Vec<Listener>, CmdError> {
    let mut out = listeners_from_systemd()?;
    if !out.is_empty() {
        return Ok(out);
    }
    let defaults = args.unix.is_empty() && args.tcp.is_empty();
    let unix = if defaults {
        vec![default_unix_path()]
    } else {
        args.unix.clone()
    };
    let tcp = if defaults {
        vec![format!("127.0.0.1:{NBD_PORT}")]
    } else {
        args.tcp.clone()
    };
    for path in unix {
        out.push(Listener::unix(&path)?);
    }
    for addr in tcp {
        match Listener::tcp(&addr).await {
            Ok(l) => out.push(l),
            Err(e) if defaults => {
                return Err(format!("{e}: another NBD server may hold the port; pick one with --tcp ADDR:PORT or use --unix only").into())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn banner(exports: &ExportSet, listeners: &[Listener]) {
    println!("oxio serve: NBD server ready");
    for e in exports.iter() {
        println!(
            "  export {:?}: {}",
            e.name(),
            e.description_text().unwrap_or("")
        );
    }
    let Some(main) = exports.iter().next() else {
        return;
    };
    let name = main.name();
    let mut uris = Vec::new();
    for l in listeners {
        if let Some(p) = l.unix_path() {
            uris.push(format!("nbd+unix:///{name}?socket={}", p.display()));
        }
        if let Some(a) = l.tcp_addr() {
            uris.push(format!("nbd://{a}/{name}"));
        }
    }
    println!("URIs:");
    for u in &uris {
        println!("  {u}");
    }
    if let Some(u) = uris.first() {
        println!("Try:");
        println!("  nbdinfo '{u}'");
        println!("  qemu-img info '{u}'");
        println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '{u}'");
        println!("  nbdcopy '{u}' local-copy.img");
    }
    if let Some(a) = listeners.iter().find_map(Listener::tcp_addr) {
        println!(
            "  nbd-client {} {} /dev/nbd0 -N {name}   # kernel client (needs nbd.ko)",
            a.ip(),
            a.port()
        );
    }
    println!("Stop with Ctrl-C (drains in-flight requests); SIGUSR1 prints statistics.");
}

/// Tells systemd (`Type=notify` units) how the service is doing, when `NOTIFY_SOCKET` is set.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| match path.as_bytes().strip_prefix(b"@") {
        Some(name) => sock.send_to_addr(state.as_bytes(), &SocketAddr::from_abstract_name(name)?),
        None => sock.send_to(state.as_bytes(), &path),
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn print_stats(exports: &ExportSet) {
    for e in exports.iter() {
        tracing::info!(export = e.name(), "{}", e.stats().snapshot());
    }
}

async fn serve(args: ServeArgs, shards: Vec<tokio::runtime::Handle>) -> Result<(), CmdError> {
    // Signal handlers first: a SIGTERM that comes as soon as the socket exists (or READY=1 is
    // sent) must drain the server, not kill it with the default action.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let exports = exports(&args)?;
    let listeners = listeners(&args).await?;
    banner(&exports, &listeners);
    sd_notify("READY=1\n");
    let (trigger, shutdown) = Shutdown::new();
    let server = Server::new(exports.clone())
        .max_connections(args.max_connections)
        .shards(shards);
    let mut task = tokio::spawn(async move { server.run(listeners, shutdown).await });
    let period = Duration::from_secs(args.stats_interval.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = int.recv() => stopping = stop(&trigger, stopping, "SIGINT"),
            _ = term.recv() => stopping = stop(&trigger, stopping, "SIGTERM"),
            _ = usr1.recv() => print_stats(&exports),
            _ = ticker.tick(), if args.stats_interval > 0 => print_stats(&exports),
        }
    };
    print_stats(&exports);
    result??;
    tracing::info!("all connections drained; backends flushed");
    Ok(())
}

/// First signal: drain. Second: give up at once.
fn stop(trigger: &oxio_nbd::server::ShutdownTrigger, already: bool, name: &str) -> bool {
    if already {
        eprintln!("oxio serve: second {name}, exiting without draining");
        std::process::exit(130);
    }
    tracing::info!("{name}: no new connections; finishing in-flight requests");
    sd_notify("STOPPING=1\n");
    trigger.fire();
    true
}
