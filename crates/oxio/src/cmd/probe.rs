//! `oxio omnixtend probe`: opens a connection to a memory node and measures latency
//! percentiles and throughput of reads and writes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use oxio_omnixtend::requester::{IoError, Requester, RequesterConfig, RequesterStats};
use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::{LaneOrder, MacAddr};

use super::memory_node::{parse_addr, parse_size, stop_flag};
use super::CmdError;

/// OmniXtend tools.
#[derive(Debug, Subcommand)]
pub enum OmnixtendCommand {
    /// Connect to a memory node and report latency percentiles and throughput.
    Probe(ProbeArgs),
}

/// Measure a memory node.
#[derive(Debug, Args)]
#[command(
    long_about = "Opens an OmniXtend connection to the memory node at --mac and runs \
timed phases: writes, then reads, of --block bytes each at random --block-aligned offsets in \
the first --size bytes (one block after another with --pattern sequential), keeping --depth \
requests in flight. Reports throughput and latency \
percentiles per phase (and a JSON line with --json). --depth 1 measures the one-request-at-a-\
time design of the original oxmem-nbd.\n\n\
Writes overwrite the node's memory in the probed range.\n\n\
Examples:\n  oxio omnixtend probe --netdev veth0 --mac 04:00:00:00:00:00 --size 64M\n  \
oxio omnixtend probe --udp 127.0.0.1:7700 --mac 04:00:00:00:00:00 --size 64M --depth 1"
)]
pub struct ProbeArgs {
    /// Network interface to use (raw Ethernet; root or CAP_NET_RAW).
    #[arg(
        long,
        value_name = "IF",
        required_unless_present = "udp",
        conflicts_with = "udp"
    )]
    pub netdev: Option<String>,
    /// Reach the node over UDP at this address instead.
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<SocketAddr>,
    /// Local UDP address to bind with --udp.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub udp_bind: SocketAddr,
    /// The memory node's MAC address.
    #[arg(long, value_name = "MAC")]
    pub mac: MacAddr,
    /// Our MAC address (default: the interface's; 02:00:00:00:00:01 with --udp).
    #[arg(long, value_name = "MAC")]
    pub local_mac: Option<MacAddr>,
    /// Bytes of the node's memory to use.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub size: u64,
    /// Bus address of the node's first byte.
    #[arg(long, default_value = "0", value_parser = parse_addr)]
    pub base: u64,
    /// Bytes per request.
    #[arg(long, value_parser = parse_size, default_value = "4K")]
    pub block: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub depth: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Phases to run.
    #[arg(long, value_parser = ["write", "read", "both"], default_value = "both")]
    pub mode: String,
    /// Offsets of the requests: random --block-aligned offsets within --size, or one block
    /// after another (wrapping at --size), which lets the memory node's reads stream.
    #[arg(long, value_parser = ["random", "sequential"], default_value = "random")]
    pub pattern: String,
    /// MTU of the path (default: the interface's, 1500 with --udp).
    #[arg(long)]
    pub mtu: Option<usize>,
    /// Data byte order: raw (C-compatible) or spec.
    #[arg(long, default_value = "raw")]
    pub lane_order: LaneOrder,
    /// Behave like the C driver on the wire (for its memory nodes).
    #[arg(long)]
    pub c_compat: bool,
    /// Microseconds to keep polling the raw socket before sleeping (fewer wake-ups under
    /// load, more CPU; 0 = always sleep).
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Who issues the next request when one completes: `callback` (the completion callback,
    /// on the requester's I/O thread: no thread hand-off, like an io_uring client reaping and
    /// submitting in one loop) or `thread` (a separate submitting thread woken per batch of
    /// completions, like a block queue served by its own thread).
    #[arg(long, value_parser = ["callback", "thread"], default_value = "callback")]
    pub resubmit: String,
    /// Print one JSON object per phase on stdout.
    #[arg(long)]
    pub json: bool,
    /// Instead of timing, write a seeded pattern over the first --size bytes (in --block
    /// pieces at odd offsets, --depth in flight), read it back and compare; fails on any
    /// mismatch.
    #[arg(long)]
    pub verify: bool,
}

/// Runs a subcommand of `oxio omnixtend`.
pub fn run(cmd: OmnixtendCommand) -> Result<(), CmdError> {
    match cmd {
        OmnixtendCommand::Probe(args) => probe(args),
    }
}

struct Phase {
    name: &'static str,
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        let last = self.lat.len() - 1;
        // Rounding a percentile rank to an index; the value is within 0..=last.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((last as f64) * p).round() as usize;
        self.lat[i.min(last)].as_secs_f64() * 1e6
    }

    #[allow(clippy::cast_precision_loss)] // reporting only
    fn report(&self, args: &ProbeArgs) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mbps = self.bytes as f64 / secs / 1e6;
        let iops = self.ops as f64 / secs;
        let (p50, p90, p99, p999) = (
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.pct(0.999),
        );
        let max = self.pct(1.0);
        if args.json {
            println!(
                "{{\"phase\":\"{}\",\"block\":{},\"depth\":{},\"ops\":{},\"bytes\":{},\"seconds\":{:.3},\"mb_per_s\":{:.1},\"iops\":{:.0},\"lat_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}}}",
                self.name, args.block, args.depth, self.ops, self.bytes, secs, mbps, iops, p50, p90, p99, p999, max
            );
        } else {
            println!(
                "{:<5} {:>9.1} MB/s {:>9.0} IOPS  latency µs p50 {p50:.1} p90 {p90:.1} p99 {p99:.1} p99.9 {p999:.1} max {max:.1}  ({} ops of {} B, depth {})",
                self.name, mbps, iops, self.ops, args.block, args.depth
            );
        }
    }
}

fn connect(args: &ProbeArgs) -> Result<Requester, CmdError> {
    let (transport, local, mtu): (Box<dyn Transport>, MacAddr, usize) =
        match (&args.netdev, args.udp) {
            (Some(dev), _) => {
                let mut sock = PacketSocket::open(dev)?;
                sock.set_busy_poll(std::time::Duration::from_micros(args.busy_poll_us));
                let local = args.local_mac.unwrap_or(sock.mac());
                let mtu = args.mtu.unwrap_or(sock.mtu());
                (Box::new(sock), local, mtu)
            }
            (None, Some(addr)) => {
                let local = args.local_mac.unwrap_or(MacAddr([2, 0, 0, 0, 0, 1]));
                (
                    Box::new(UdpTransport::bind(args.udp_bind, Some(addr))?),
                    local,
                    args.mtu.unwrap_or(1500),
                )
            }
            (None, None) => return Err("give --netdev IF or --udp ADDR".into()),
        };
    let mut cfg = RequesterConfig::new(local, args.mac, args.size).with_mtu(mtu);
    cfg.base = args.base;
    cfg.lane_order = args.lane_order;
    cfg.max_inflight = 1024;
    if args.c_compat {
        cfg = cfg.c_compatible();
    }
    tracing::info!(node = %args.mac, %local, mtu, transfer = 1u64 << cfg.max_size(), "connecting");
    Requester::connect(cfg, transport, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach the memory node {}: {e}", args.mac).into())
}

/// Where the next request goes, in --block slots: random (a tiny deterministic xorshift, no
/// need for a crate here) or one slot after another, wrapping at the end of --size.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    sequential: bool,
    state: u64,
}

impl Offsets {
    fn new(args: &ProbeArgs) -> Self {
        let sequential = args.pattern == "sequential";
        let state = if sequential { 0 } else { 0x9e37_79b9_7f4a_7c15 };
        Self { sequential, state }
    }

    fn next(&mut self, slots: u64) -> u64 {
        let slots = slots.max(1);
        if self.sequential {
            let slot = self.state % slots;
            self.state = slot + 1;
            return slot;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % slots
    }
}

/// (submitted, completed, result).
type Done = (Instant, Instant, Result<Vec<u8>, IoError>);

/// Completions handed from the requester's I/O thread to the probe thread in batches: the
/// I/O thread only wakes the probe thread when it is actually waiting.
#[derive(Default)]
struct Mailbox {
    done: Mutex<Vec<Done>>,
    ready: Condvar,
    waiting: AtomicBool,
}

impl Mailbox {
    fn post(&self, d: Done) {
        let mut q = self.done.lock().unwrap_or_else(|e| e.into_inner());
        q.push(d);
        // One wake-up per wait, not one futex call per completion of a batch. The flag is
        // cleared under the lock the waiter sets it under, so no wake-up is lost.
        let wake = self.waiting.swap(false, Ordering::SeqCst);
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Waits up to `timeout` for completions and takes them all.
    fn take(&self, out: &mut Vec<Done>, timeout: Duration) {
        let mut q = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            self.waiting.store(true, Ordering::SeqCst);
            q = self
                .ready
                .wait_timeout_while(q, timeout, |q| q.is_empty())
                .unwrap_or_else(|e| e.into_inner())
                .0;
            self.waiting.store(false, Ordering::SeqCst);
        }
        out.append(&mut q);
    }
}

/// Keeps `depth` requests in flight by issuing the next one from each completion callback.
struct Driver {
    req: Arc<Requester>,
    write: bool,
    block: u64,
    slots: u64,
    end: Instant,
    stop: Arc<AtomicBool>,
    state: Mutex<DriverState>,
    finished: Condvar,
}

struct DriverState {
    offsets: Offsets,
    outstanding: usize,
    lat: Vec<Duration>,
    error: Option<IoError>,
}

impl Driver {
    fn lock(&self) -> std::sync::MutexGuard<'_, DriverState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn issue(self: &Arc<Self>, buf: Vec<u8>, off: u64) {
        let me = self.clone();
        let start = Instant::now();
        let done = move |r| me.complete(start, r);
        if self.write {
            self.req.submit_write(off, buf, done);
        } else {
            self.req.submit_read(off, buf, done);
        }
    }

    /// Runs on the requester's I/O thread: records the latency and issues the next request.
    fn complete(self: &Arc<Self>, start: Instant, r: Result<Vec<u8>, IoError>) {
        let now = Instant::now();
        let mut st = self.lock();
        let next = match r {
            Ok(buf) => {
                st.lat.push(now - start);
                let more = now < self.end && !self.stop.load(Ordering::Relaxed);
                more.then(|| (buf, st.offsets.next(self.slots) * self.block))
            }
            Err(e) => {
                st.error.get_or_insert(e);
                None
            }
        };
        if next.is_none() {
            st.outstanding -= 1;
            if st.outstanding == 0 {
                self.finished.notify_all();
            }
        }
        drop(st);
        if let Some((buf, off)) = next {
            self.issue(buf, off);
        }
    }
}

fn run_phase_callback(
    req: &Arc<Requester>,
    args: &ProbeArgs,
    write: bool,
    stop: &Arc<AtomicBool>,
) -> Result<Phase, CmdError> {
    let block = usize::try_from(args.block)?;
    let slots = args.size / args.block.max(1);
    if slots == 0 {
        return Err("--block is larger than --size".into());
    }
    let depth = args.depth.max(1);
    let start = Instant::now();
    let driver = Arc::new(Driver {
        req: req.clone(),
        write,
        block: args.block,
        slots,
        end: start + Duration::from_secs_f64(args.seconds),
        stop: stop.clone(),
        state: Mutex::new(DriverState {
            offsets: Offsets::new(args),
            outstanding: depth,
            lat: Vec::with_capacity(1 << 20),
            error: None,
        }),
        finished: Condvar::new(),
    });
    for i in 0..depth {
        let mut buf = vec![0u8; block];
        buf.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = u8::try_from((i + j) % 256).unwrap_or(0));
        let off = driver.lock().offsets.next(slots) * args.block;
        driver.issue(buf, off);
    }
    let deadline = driver.end + Duration::from_secs(15);
    let mut st = driver.lock();
    while st.outstanding > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the memory node stopped answering".into());
        }
        st = driver
            .finished
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    if let Some(e) = st.error.take() {
        return Err(e.into());
    }
    let mut lat = std::mem::take(&mut st.lat);
    lat.sort_unstable();
    Ok(Phase {
        name: if write { "write" } else { "read" },
        ops: lat.len() as u64,
        bytes: lat.len() as u64 * args.block,
        elapsed: start.elapsed(),
        lat,
    })
}

fn run_phase(
    req: &Requester,
    args: &ProbeArgs,
    write: bool,
    stop: &AtomicBool,
) -> Result<Phase, CmdError> {
    let block = usize::try_from(args.block)?;
    let slots = args.size / args.block.max(1);
    if slots == 0 {
        return Err("--block is larger than --size".into());
    }
    let mailbox = Arc::new(Mailbox::default());
    let mut offsets = Offsets::new(args);
    let submit = |buf: Vec<u8>, offsets: &mut Offsets| {
        let off = offsets.next(slots) * args.block;
        let mb = mailbox.clone();
        let start = Instant::now();
        let done = move |r| mb.post((start, Instant::now(), r));
        if write {
            req.submit_write(off, buf, done);
        } else {
            req.submit_read(off, buf, done);
        }
    };
    for i in 0..args.depth.max(1) {
        let mut buf = vec![0u8; block];
        buf.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = u8::try_from((i + j) % 256).unwrap_or(0));
        submit(buf, &mut offsets);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut phase = Phase {
        name: if write { "write" } else { "read" },
        ops: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        lat: Vec::new(),
    };
    let mut outstanding = args.depth.max(1);
    let mut batch = Vec::new();
    while outstanding > 0 {
        mailbox.take(&mut batch, Duration::from_secs(15));
        if batch.is_empty() {
            return Err("the memory node stopped answering".into());
        }
        let now = Instant::now();
        for (t0, t1, r) in batch.drain(..) {
            outstanding -= 1;
            let buf = r?;
            phase.lat.push(t1 - t0);
            phase.ops += 1;
            phase.bytes += args.block;
            if now < end && !stop.load(Ordering::Relaxed) {
                submit(buf, &mut offsets);
                outstanding += 1;
            }
        }
    }
    phase.elapsed = start.elapsed();
    phase.lat.sort_unstable();
    Ok(phase)
}

fn log_stats(s: &RequesterStats) {
    tracing::info!(
        transfers = s.transfers,
        reissued = s.reissued,
        reconnects = s.reconnects,
        frames_out = s.link.frames_sent,
        frames_in = s.link.frames_accepted,
        replayed = s.link.frames_replayed,
        ack_only_out = s.link.ack_only_sent,
        naks_in = s.link.naks_received,
        naks_out = s.link.naks_sent,
        duplicates_in = s.link.duplicates,
        out_of_order_in = s.link.out_of_order,
        timeouts = s.link.timeouts,
        "requester"
    );
}

/// The verification pattern: a byte per offset, from a seed.
fn pattern(offset: u64, seed: u64) -> u8 {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    x ^= x >> 29;
    x.to_le_bytes()[0]
}

/// Pieces of the verified range: `block`-sized, but shifted by an odd amount so that
/// unaligned edges (PutPartialData, partial Gets) are exercised.
fn pieces(size: u64, block: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut off = 0;
    let mut i = 0u64;
    while off < size {
        let len = (block + (i % 7) * 13).min(size - off);
        v.push((off, len));
        off += len;
        i += 1;
    }
    v
}

fn verify(req: &Requester, args: &ProbeArgs, stop: &AtomicBool) -> Result<(), CmdError> {
    let seed = 0x5eed_0000_0000 ^ args.size;
    let all = pieces(args.size, args.block);
    let depth = args.depth.max(1);
    let (tx, rx) = mpsc::channel::<(u64, Result<Vec<u8>, IoError>)>();
    let start = Instant::now();
    let mut progress = Instant::now() + Duration::from_secs(1);
    for write in [true, false] {
        let mut next = 0;
        let mut outstanding = 0;
        let mut bad = 0u64;
        while next < all.len() || outstanding > 0 {
            if stop.load(Ordering::Relaxed) && next < all.len() {
                tracing::warn!("interrupted: finishing the requests in flight");
                next = all.len();
            }
            if Instant::now() >= progress {
                let phase = if write { "written" } else { "read back" };
                let done = all.get(next).map_or(args.size, |p| p.0);
                tracing::info!("{phase} {done} of {} bytes", args.size);
                progress = Instant::now() + Duration::from_secs(1);
            }
            while next < all.len() && outstanding < depth {
                let (off, len) = all[next];
                let tx = tx.clone();
                let done = move |r| {
                    let _ = tx.send((off, r));
                };
                let n = usize::try_from(len)?;
                if write {
                    let data: Vec<u8> = (0..len).map(|i| pattern(off + i, seed)).collect();
                    req.submit_write(off, data, done);
                } else {
                    req.submit_read(off, vec![0; n], done);
                }
                next += 1;
                outstanding += 1;
            }
            let (off, r) = rx
                .recv_timeout(Duration::from_secs(15))
                .map_err(|_| "the memory node stopped answering")?;
            outstanding -= 1;
            let buf = r?;
            if !write {
                bad += (0..buf.len() as u64)
                    .filter(|&i| buf[usize::try_from(i).unwrap_or(0)] != pattern(off + i, seed))
                    .count() as u64;
            }
        }
        if bad > 0 {
            return Err(format!("verification failed: {bad} bytes differ").into());
        }
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted before the verification finished".into());
        }
    }
    println!(
        "verified {} bytes in {} pieces ({:.2} s)",
        args.size,
        all.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn probe(args: ProbeArgs) -> Result<(), CmdError> {
    let stop = stop_flag()?;
    let req = Arc::new(connect(&args)?);
    if args.verify {
        let r = verify(&req, &args, &stop);
        req.shutdown();
        log_stats(&req.stats());
        return r;
    }
    let phases: &[bool] = match args.mode.as_str() {
        "write" => &[true],
        "read" => &[false],
        _ => &[true, false],
    };
    for &write in phases {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let phase = if args.resubmit == "thread" {
            run_phase(&req, &args, write, &stop)?
        } else {
            run_phase_callback(&req, &args, write, &stop)?
        };
        phase.report(&args);
    }
    req.shutdown();
    log_stats(&req.stats());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Offsets;

    #[test]
    fn sequential_offsets_follow_each_other_and_wrap_at_the_end() {
        let mut o = Offsets {
            sequential: true,
            state: 0,
        };
        let got: Vec<u64> = (0..7).map(|_| o.next(3)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_offsets_stay_in_range_and_are_not_sequential() {
        let mut o = Offsets {
            sequential: false,
            state: 0x9e37_79b9_7f4a_7c15,
        };
        let got: Vec<u64> = (0..1000).map(|_| o.next(1 << 18)).collect();
        assert!(got.iter().all(|&s| s < 1 << 18));
        assert!(got.windows(2).filter(|w| w[1] == w[0] + 1).count() < 5);
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 990);
    }
}
