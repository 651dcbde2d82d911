//! Fault-injection soak: random writes and read-backs between the requester and the memory
//! node over a simulated wire with loss, duplication, reordering and FCS drops, in virtual
//! time (deterministic for a seed). Zero mismatched bytes, no stall, bounded memory.
//!
//! `OXIO_SOAK_BYTES` sets how many bytes are written (and read back); the default keeps the
//! normal test run short. `scripts/test.d/30-omnixtend-veth.sh` runs 1 GiB in release mode.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use oxio_omnixtend::endpoint::{EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::requester::{Completion, OpKind, RequesterConfig, RequesterCore};
use oxio_omnixtend::transport::fault::{FaultInjector, FaultStats, Faults};
use oxio_omnixtend::wire::{LaneOrder, MacAddr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const MEM: u64 = 32 << 20;
const REGION: u64 = 64 << 10;

struct Net {
    q: VecDeque<(Instant, Vec<u8>)>,
    inj: FaultInjector,
}

impl Net {
    fn send(&mut self, at: Instant, f: &[u8]) {
        let q = &mut self.q;
        self.inj.inject(at, f, &mut |t, v| q.push_back((t, v)));
    }

    fn next_at(&self) -> Option<Instant> {
        self.q.front().map(|x| x.0)
    }
}

struct Sim {
    now: Instant,
    req: RequesterCore,
    node: EndpointCore,
    to_node: Net,
    to_req: Net,
    latency: Duration,
    done: Vec<Completion>,
    max_queue: usize,
}

impl Sim {
    fn new(seed: u64, faults: Faults, lane: LaneOrder, mtu: usize) -> Sim {
        let now = Instant::now();
        let (rm, nm) = (MacAddr::local(1), MacAddr::local(2));
        let mut rc = RequesterConfig::new(rm, nm, MEM).with_mtu(mtu);
        rc.lane_order = lane;
        let mut nc = EndpointConfig::new(nm);
        nc.lane_order = lane;
        nc.mtu = mtu;
        let mut req = RequesterCore::new(rc, now);
        req.open(now);
        let node = EndpointCore::new(nc, Memory::anonymous(MEM, 0).unwrap());
        Sim {
            now,
            req,
            node,
            to_node: Net {
                q: VecDeque::new(),
                inj: FaultInjector::new(faults, seed),
            },
            to_req: Net {
                q: VecDeque::new(),
                inj: FaultInjector::new(faults, seed.wrapping_mul(31).wrapping_add(7)),
            },
            latency: Duration::from_micros(20),
            done: Vec::new(),
            max_queue: 0,
        }
    }

    fn step(&mut self) -> bool {
        let (now, at) = (self.now, self.now + self.latency);
        let mut progress = false;
        let net = &mut self.to_node;
        self.req.poll_transmit(now, 64, &mut |f| {
            net.send(at, f);
            progress = true;
        });
        let net = &mut self.to_req;
        self.node.poll_transmit(now, 64, &mut |f| {
            net.send(at, f);
            progress = true;
        });
        self.max_queue = self
            .max_queue
            .max(self.to_node.q.len() + self.to_req.q.len());
        while matches!(self.to_node.next_at(), Some(t) if t <= now) {
            let (_, f) = self.to_node.q.pop_front().unwrap();
            self.node.receive(now, &f);
            progress = true;
        }
        while matches!(self.to_req.next_at(), Some(t) if t <= now) {
            let (_, f) = self.to_req.q.pop_front().unwrap();
            self.req.receive(now, &f);
            progress = true;
        }
        self.done.extend(self.req.drain_completions());
        progress
    }

    /// Runs until `n` completions are collected; panics on a stall.
    fn run(&mut self, n: usize) -> Vec<Completion> {
        let start = self.now;
        while self.done.len() < n {
            assert!(
                self.now - start < Duration::from_secs(120),
                "stalled: {:?}",
                self.req.stats()
            );
            if self.step() {
                continue;
            }
            let next = [
                self.to_node.next_at(),
                self.to_req.next_at(),
                self.req.poll_at(),
                self.node.poll_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t > self.now => self.now = t,
                Some(_) => self.now += Duration::from_micros(1),
                None => {
                    let (q1, q2) = (&mut self.to_node.q, &mut self.to_req.q);
                    self.to_node
                        .inj
                        .flush(self.now, &mut |t, v| q1.push_back((t, v)));
                    self.to_req
                        .inj
                        .flush(self.now, &mut |t, v| q2.push_back((t, v)));
                    self.now += Duration::from_millis(1);
                }
            }
        }
        std::mem::take(&mut self.done)
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Report {
    written: u64,
    read: u64,
    virtual_time: Duration,
    to_node: FaultStats,
    to_req: FaultStats,
}

fn soak(seed: u64, bytes: u64, lane: LaneOrder, mtu: usize) -> Report {
    let mut sim = Sim::new(seed, Faults::soak(), lane, mtu);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shadow = vec![0u8; usize::try_from(MEM).unwrap()];
    let (mut written, mut read) = (0u64, 0u64);
    let start = sim.now;
    let mut rss_mark = None;
    let mut token = 0u64;
    while written < bytes {
        // Sixteen writes to distinct regions, in flight together.
        let mut regions: Vec<u64> = Vec::new();
        while regions.len() < 16 {
            let r = rng.random_range(0..MEM / REGION);
            if !regions.contains(&r) {
                regions.push(r);
            }
        }
        let mut ranges = Vec::new();
        for r in &regions {
            let off = if rng.random_bool(0.5) {
                rng.random_range(0..REGION)
            } else {
                rng.random_range(0..16) * 4096
            };
            let len = rng.random_range(1..=REGION - off);
            let offset = r * REGION + off;
            let mut data = vec![0u8; usize::try_from(len).unwrap()];
            rng.fill(&mut data[..]);
            let at = usize::try_from(offset).unwrap();
            shadow[at..at + data.len()].copy_from_slice(&data);
            sim.req.submit(token, OpKind::Write, offset, data);
            token += 1;
            written += len;
            ranges.push((offset, len));
        }
        for c in sim.run(ranges.len()) {
            c.result.unwrap();
        }
        // Read every written range back, plus one whole region, all in flight together.
        let whole = rng.random_range(0..MEM / REGION) * REGION;
        ranges.push((whole, REGION));
        let mut expect = std::collections::HashMap::new();
        for &(offset, len) in &ranges {
            sim.req.submit(
                token,
                OpKind::Read,
                offset,
                vec![0; usize::try_from(len).unwrap()],
            );
            expect.insert(token, (offset, len));
            token += 1;
            read += len;
        }
        for c in sim.run(ranges.len()) {
            let (offset, len) = expect[&c.token];
            let got = c.result.unwrap();
            let at = usize::try_from(offset).unwrap();
            let want = &shadow[at..at + usize::try_from(len).unwrap()];
            if got != want {
                let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
                panic!("{bad} mismatched bytes reading {len} at {offset:#x}");
            }
        }
        if rss_mark.is_none() && written >= bytes / 4 {
            rss_mark = Some(rss_kib());
        }
    }
    if let Some(mark) = rss_mark {
        let grown = rss_kib().saturating_sub(mark);
        assert!(
            grown < 64 * 1024,
            "memory grew by {grown} KiB after warm-up"
        );
    }
    assert!(
        sim.max_queue < 100_000,
        "wire queues grew to {}",
        sim.max_queue
    );
    let s = sim.req.stats();
    assert_eq!(s.errors, 0);
    eprintln!(
        "soak seed {seed}: wrote {written} B, read {read} B, {:?} virtual; requester {s:?}; node {:?}; faults to node {:?}, to requester {:?}",
        sim.now - start,
        sim.node.stats(),
        sim.to_node.inj.stats(),
        sim.to_req.inj.stats()
    );
    Report {
        written,
        read,
        virtual_time: sim.now - start,
        to_node: sim.to_node.inj.stats(),
        to_req: sim.to_req.inj.stats(),
    }
}

fn soak_bytes(default: u64) -> u64 {
    std::env::var("OXIO_SOAK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn soak_raw_lanes_at_mtu_1500() {
    let r = soak(1, soak_bytes(8 << 20), LaneOrder::Raw, 1500);
    assert!(r.written >= soak_bytes(8 << 20) && r.read >= r.written);
    let f = r.to_node;
    assert!(
        f.lost > 0 && f.duplicated > 0 && f.reordered > 0,
        "faults were injected: {f:?}"
    );
    assert!(r.to_req.corrupted + f.corrupted > 0 || r.written < (64 << 20));
    assert!(r.virtual_time > Duration::ZERO);
}

#[test]
fn soak_spec_lanes_at_mtu_9000() {
    let r = soak(2, soak_bytes(8 << 20) / 2, LaneOrder::Spec, 9000);
    assert!(r.to_node.lost > 0);
}

/// Raw lanes with jumbo frames: the node sends read data straight from its memory (one copy
/// fewer) and must still replay exactly what it first served, while later writes overwrite
/// regions whose read responses may not be acknowledged yet.
#[test]
fn soak_raw_lanes_at_mtu_9000() {
    let r = soak(3, soak_bytes(8 << 20), LaneOrder::Raw, 9000);
    assert!(r.written >= soak_bytes(8 << 20) && r.read >= r.written);
    assert!(r.to_node.lost > 0 && r.to_req.lost > 0);
}
