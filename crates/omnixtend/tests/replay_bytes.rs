//! A read response resent by Go-Back-N carries the bytes first served, even when the node
//! sends read data straight from its memory (no copy into the frame) and a write changed that
//! memory before the replay.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use oxio_omnixtend::endpoint::{EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::requester::{Completion, OpKind, RequesterConfig, RequesterCore};
use oxio_omnixtend::wire::MacAddr;
use std::time::{Duration, Instant};

const MEM: u64 = 1 << 20;
const NODE: MacAddr = MacAddr([4, 0, 0, 0, 0, 9]);

struct Bench {
    now: Instant,
    node: EndpointCore,
    reqs: Vec<RequesterCore>,
    done: Vec<Vec<Completion>>,
}

impl Bench {
    fn new(requesters: u32, mtu: usize) -> Bench {
        let now = Instant::now();
        let mut nc = EndpointConfig::new(NODE);
        nc.mtu = mtu;
        let node = EndpointCore::new(nc, Memory::anonymous(MEM, 0).unwrap());
        let reqs = (1..=requesters)
            .map(|i| {
                let cfg = RequesterConfig::new(MacAddr::local(i), NODE, MEM).with_mtu(mtu);
                let mut r = RequesterCore::new(cfg, now);
                r.open(now);
                r
            })
            .collect();
        Bench {
            now,
            node,
            reqs,
            done: (0..requesters).map(|_| Vec::new()).collect(),
        }
    }

    /// One exchange in both directions; `lose` sees each frame from the node (and its
    /// destination) and returns true to drop it. Returns whether anything moved.
    fn step(&mut self, lose: &mut dyn FnMut(usize, &[u8]) -> bool) -> bool {
        let now = self.now;
        let mut to_node = Vec::new();
        for r in &mut self.reqs {
            r.poll_transmit(now, 64, &mut |f| to_node.push(f.to_vec()));
        }
        let mut moved = !to_node.is_empty();
        for f in &to_node {
            self.node.receive(now, f);
        }
        let mut to_reqs = Vec::new();
        self.node
            .poll_transmit(now, 64, &mut |f| to_reqs.push(f.to_vec()));
        for f in to_reqs {
            moved = true;
            let Some(i) = (1..=self.reqs.len())
                .position(|i| f[..6] == MacAddr::local(u32::try_from(i).unwrap()).0)
            else {
                continue;
            };
            if !lose(i, &f) {
                self.reqs[i].receive(now, &f);
            }
        }
        for (r, d) in self.reqs.iter_mut().zip(&mut self.done) {
            d.extend(r.drain_completions());
        }
        moved
    }

    /// Runs (advancing virtual time when idle) until requester `i` has `n` completions.
    fn run(&mut self, i: usize, n: usize, lose: &mut dyn FnMut(usize, &[u8]) -> bool) {
        let start = self.now;
        while self.done[i].len() < n {
            assert!(self.now - start < Duration::from_secs(5), "stalled");
            if !self.step(lose) {
                self.now += Duration::from_millis(1);
            }
        }
    }
}

fn keep(_: usize, _: &[u8]) -> bool {
    false
}

/// Writes ones, reads them while losing the read's response, overwrites them with twos (from
/// requester `writer`), and checks that the replayed read response still holds ones.
fn replayed_read_keeps_its_bytes(requesters: u32, writer: usize, mtu: usize, len: usize) {
    let mut b = Bench::new(requesters, mtu);
    b.reqs[0].submit(1, OpKind::Write, 0, vec![0x11; len]);
    b.run(0, 1, &mut keep);
    b.reqs[0].submit(2, OpKind::Read, 0, vec![0; len]);
    // The node's frames carrying the read data to requester 0 are lost, once.
    let lost = std::cell::Cell::new(false);
    let mut lose_read = |i: usize, f: &[u8]| {
        let drop = i == 0 && !lost.get() && f.len() > len;
        lost.set(lost.get() || drop);
        drop
    };
    while !lost.get() {
        assert!(b.step(&mut lose_read), "the read response never left");
    }
    b.reqs[writer].submit(3, OpKind::Write, 0, vec![0x22; len]);
    b.run(writer, usize::from(writer == 0) + 1, &mut keep);
    b.run(0, 2 + usize::from(writer == 0), &mut keep);
    for c in &b.done[0] {
        match c.token {
            2 => assert!(
                c.result.as_ref().unwrap().iter().all(|&x| x == 0x11),
                "the replayed read response carries bytes written after it was served"
            ),
            _ => assert!(c.result.is_ok()),
        }
    }
    let mut now_mem = vec![0; len];
    b.reqs[writer].submit(4, OpKind::Read, 0, now_mem.clone());
    let want = b.done[writer].len() + 1;
    b.run(writer, want, &mut keep);
    now_mem.clone_from(b.done[writer].last().unwrap().result.as_ref().unwrap());
    assert!(now_mem.iter().all(|&x| x == 0x22), "the write took effect");
    assert!(b.node.stats().link.frames_replayed > 0);
}

#[test]
fn replayed_read_data_sent_from_memory_is_the_data_first_served() {
    replayed_read_keeps_its_bytes(1, 0, 9000, 8192);
}

#[test]
fn a_write_from_another_peer_does_not_change_a_replayed_read() {
    replayed_read_keeps_its_bytes(2, 1, 9000, 8192);
}

#[test]
fn small_reads_copied_into_the_frame_keep_their_bytes_too() {
    replayed_read_keeps_its_bytes(1, 0, 1500, 1024);
}

/// Large writes go out straight from the request's buffer; a request that fails (here: times
/// out) while its frame still awaits acknowledgement must leave the link able to replay the
/// data it first sent, not whatever its recycled buffer holds next.
#[test]
fn a_write_that_fails_before_its_frame_is_acknowledged_still_replays_its_data() {
    let start = Instant::now();
    let mut cfg = RequesterConfig::new(MacAddr::local(1), NODE, MEM).with_mtu(9000);
    cfg.request_timeout = Duration::from_millis(30);
    cfg.reconnect_after = Duration::from_secs(60);
    let mut b = Bench::new(0, 9000);
    b.reqs.push(RequesterCore::new(cfg, start));
    b.done.push(Vec::new());
    b.reqs[0].open(start);
    // A first read opens the link and brings the node's credit grants.
    b.reqs[0].submit(1, OpKind::Read, 0, vec![0; 64]);
    b.run(0, 1, &mut keep);
    // From now on every frame towards the node is lost.
    b.reqs[0].submit(2, OpKind::Write, 0, vec![0x5a; 8192]);
    let mut frames = Vec::new();
    let t0 = b.now;
    let r = &mut b.reqs[0];
    let failed = loop {
        assert!(
            b.now - t0 < Duration::from_secs(1),
            "the write never failed"
        );
        r.poll_transmit(b.now, 64, &mut |f| frames.push(f.to_vec()));
        if let Some(c) = r.drain_completions().next() {
            break c;
        }
        b.now += Duration::from_millis(1);
    };
    assert_eq!(failed.token, 2);
    assert!(failed.result.is_err());
    assert!(
        frames.iter().any(|f| f.len() > 8192),
        "the write went out before failing"
    );
    // The link still replays the frame (nothing acknowledged it): with the data first sent.
    frames.clear();
    for _ in 0..1500 {
        b.now += Duration::from_millis(1);
        r.poll_transmit(b.now, 64, &mut |f| frames.push(f.to_vec()));
    }
    let replays: Vec<_> = frames.iter().filter(|f| f.len() > 8192).collect();
    assert!(!replays.is_empty(), "no replay of the write's frame");
    for f in replays {
        assert!(f.iter().filter(|&&x| x == 0x5a).count() >= 8192);
    }
}
