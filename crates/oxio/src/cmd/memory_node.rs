//! `oxio memory-node`: a software OmniXtend memory node on a network interface or UDP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use oxio_omnixtend::endpoint::{serve_with, EndpointConfig, EndpointCore, EndpointStats, Memory};
use oxio_omnixtend::link::Compat;
use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::{LaneOrder, MacAddr};

use super::CmdError;

/// Serve memory to OmniXtend requesters (a software memory node).
#[derive(Debug, Args)]
#[command(
    long_about = "Serves SIZE bytes of memory at bus addresses BASE..BASE+SIZE to \
OmniXtend (TileLink over Ethernet) requesters: oxio's own requester and block backend, the \
original oxmem-nbd C driver (use --compat c), or any TLoE 1.1 host.\n\n\
Frames travel as raw Ethernet (EtherType 0xAAAA) on --netdev, which needs root or \
CAP_NET_RAW, or inside UDP datagrams with --udp, which needs no privileges. Each peer (by \
MAC) gets its own reliable connection (Go-Back-N replay, credits). Misaligned or \
out-of-range requests are answered as denied.\n\n\
Stop with Ctrl-C (SIGINT) or SIGTERM; counters are logged every --stats-interval seconds \
(RUST_LOG=debug for more).\n\n\
Examples:\n  oxio memory-node --netdev veth1 --size 8G\n  \
oxio memory-node --netdev eth0 --mac 04:00:00:00:00:00 --size 1G --base 0x200000000\n  \
oxio memory-node --udp 0.0.0.0:7700 --mac 04:00:00:00:00:00 --size 256M --file /tmp/mem.img"
)]
pub struct MemoryNodeArgs {
    /// Network interface to serve on (raw Ethernet).
    #[arg(
        long,
        value_name = "IF",
        required_unless_present = "udp",
        conflicts_with = "udp"
    )]
    pub netdev: Option<String>,
    /// Serve TLoE frames carried in UDP datagrams on this address instead.
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<SocketAddr>,
    /// MAC address the node answers as (default: the interface's own; required with --udp).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddr>,
    /// Bytes of memory to serve (suffixes K, M, G, T).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Bus address of the first byte (hex with 0x, or decimal).
    #[arg(long, default_value = "0", value_parser = parse_addr)]
    pub base: u64,
    /// Back the memory with this file (mmap, shared) instead of anonymous memory.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Allocate and fault in all of the anonymous memory at start (MAP_POPULATE), as a
    /// hardware node's DRAM is always there: no first-touch stalls while serving, and a machine
    /// short of memory fails now rather than mid-service. Takes about 0.5 s per GiB.
    #[arg(long, conflicts_with = "file")]
    pub prefault: bool,
    /// Data byte order within each 8-byte flit: raw (the C driver's memory node) or spec.
    #[arg(long, default_value = "raw")]
    pub lane_order: LaneOrder,
    /// Tolerate the C driver oxmem-nbd: accept its out-of-order and re-issued frames and
    /// ignore credits (it never replays lost frames).
    #[arg(long, value_parser = ["c", "none"], default_value = "none")]
    pub compat: String,
    /// MTU of the path (default: the interface's MTU, 1500 with --udp).
    #[arg(long)]
    pub mtu: Option<usize>,
    /// Microseconds to keep polling the raw socket before sleeping (fewer wake-ups under
    /// load, more CPU; 0 = always sleep).
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Seconds between counter log lines (0 = never).
    #[arg(long, default_value_t = 10)]
    pub stats_interval: u64,
}

/// Parses a size such as 8G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    oxio_block::parse_size(s).map_err(|e| e.to_string())
}

/// Parses a bus address: 0x-prefixed hex or decimal.
pub fn parse_addr(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|_| format!("invalid address {s:?}: use hex such as 0x200000000 or decimal"))
}

/// Registers SIGINT and SIGTERM to set the returned flag.
pub fn stop_flag() -> Result<Arc<AtomicBool>, CmdError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn log_stats(s: &EndpointStats) {
    tracing::info!(
        peers = s.peers,
        requests = s.handler.requests,
        denied = s.handler.denied,
        read_bytes = s.handler.bytes_read,
        written_bytes = s.handler.bytes_written,
        frames_in = s.link.frames_accepted,
        frames_out = s.link.frames_sent,
        replayed = s.link.frames_replayed,
        ack_only_out = s.link.ack_only_sent,
        naks_in = s.link.naks_received,
        naks_out = s.link.naks_sent,
        duplicates_in = s.link.duplicates,
        out_of_order_in = s.link.out_of_order,
        deferred = s.link.deferred,
        timeouts = s.link.timeouts,
        dropped = s.dropped,
        "memory node"
    );
}

/// Runs the node until SIGINT/SIGTERM.
pub fn run(args: MemoryNodeArgs) -> Result<(), CmdError> {
    let (mut transport, mac, mtu): (Box<dyn Transport>, MacAddr, usize) = match (
        &args.netdev,
        args.udp,
    ) {
        (Some(dev), _) => {
            let mut sock = PacketSocket::open(dev)?;
            sock.set_busy_poll(std::time::Duration::from_micros(args.busy_poll_us));
            let mac = args.mac.unwrap_or(sock.mac());
            if mac != sock.mac() {
                // Frames to a MAC that is not the interface's own must pass the NIC's filter.
                sock.set_promiscuous()?;
                tracing::info!(%mac, interface_mac = %sock.mac(), "answering as a MAC other than the interface's: promiscuous mode");
            }
            let mtu = args.mtu.unwrap_or(sock.mtu());
            (Box::new(sock), mac, mtu)
        }
        (None, Some(addr)) => {
            let mac = args
                .mac
                .ok_or("--udp needs --mac: the MAC address requesters send to")?;
            (
                Box::new(UdpTransport::bind(addr, None)?),
                mac,
                args.mtu.unwrap_or(1500),
            )
        }
        (None, None) => return Err("give --netdev IF or --udp ADDR".into()),
    };
    let mem = match &args.file {
        Some(path) => Memory::file(path, args.size, args.base)?,
        None if args.prefault => Memory::anonymous_populated(args.size, args.base)?,
        None => Memory::anonymous(args.size, args.base)?,
    };
    let mut cfg = EndpointConfig::new(mac);
    cfg.lane_order = args.lane_order;
    cfg.mtu = mtu;
    if args.compat == "c" {
        cfg.compat = Compat::C_PEER;
    }
    let mut core = EndpointCore::new(cfg, mem);
    let stop = stop_flag()?;
    tracing::info!(
        %mac,
        mtu,
        size = args.size,
        base = format_args!("{:#x}", args.base),
        via = args.netdev.as_deref().unwrap_or("udp"),
        "memory node serving"
    );
    let interval = Duration::from_secs(args.stats_interval);
    let mut next = Instant::now() + interval;
    serve_with(&mut core, transport.as_mut(), &stop, &mut |core| {
        if args.stats_interval > 0 && Instant::now() >= next {
            log_stats(&core.stats());
            next = Instant::now() + interval;
        }
    })?;
    core.memory().flush()?;
    log_stats(&core.stats());
    tracing::info!("memory node stopped");
    Ok(())
}
