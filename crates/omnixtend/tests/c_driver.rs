//! The C driver's frames (omnixtend.md §6.1), reproduced byte for byte by the requester in
//! C-compatible mode, and served by the memory node in its C-tolerant mode.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use oxio_omnixtend::endpoint::{EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::link::Compat;
use oxio_omnixtend::requester::{OpKind, RequesterConfig, RequesterCore};
use oxio_omnixtend::wire::tilelink::op_d;
use oxio_omnixtend::wire::{Channel, Frame, MacAddr, MessageType};
use std::time::{Duration, Instant};

const DRIVER: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const NODE: MacAddr = MacAddr([4, 0, 0, 0, 0, 0]);
const TO_NODE: &str = "040000000000020000000001aaaa";
const TO_DRIVER: &str = "020000000001040000000000aaaa";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A frame: Ethernet header, TLoE header, flits, padding to 5 words, mask.
fn frame(eth: &str, header: &str, flits: &[&str], mask: u64) -> Vec<u8> {
    let mut f = hex(eth);
    f.extend(hex(header));
    let mut n = 0;
    for w in flits {
        f.extend(hex(w));
        n += 1;
    }
    while n < 5 {
        f.extend([0u8; 8]);
        n += 1;
    }
    f.extend(mask.to_be_bytes());
    f
}

fn data_words() -> Vec<String> {
    (0u8..8)
        .map(|w| (0..8).map(|i| format!("{:02x}", w * 8 + i)).collect())
        .collect()
}

fn c(header: &str) -> Vec<u8> {
    frame(TO_NODE, header, &[], 0)
}

fn m(header: &str) -> Vec<u8> {
    frame(TO_DRIVER, header, &[], 0)
}

fn c4() -> Vec<u8> {
    let words = data_words();
    let mut flits = vec!["1006000000000001", "0000000000001000"];
    flits.extend(words.iter().map(String::as_str));
    frame(TO_NODE, "0000000300000600", &flits, 1)
}

fn m3() -> Vec<u8> {
    frame(TO_DRIVER, "0000000200000e23", &["4006000000000001"], 1)
}

fn c6() -> Vec<u8> {
    frame(
        TO_NODE,
        "0000000500000a00",
        &["1806000000000002", "0000000000001000"],
        1,
    )
}

fn m4() -> Vec<u8> {
    let words = data_words();
    let mut flits = vec!["4206000000000002"];
    flits.extend(words.iter().map(String::as_str));
    frame(TO_DRIVER, "0000000300001620", &flits, 1)
}

struct Driver {
    core: RequesterCore,
    now: Instant,
}

impl Driver {
    fn new() -> Driver {
        let now = Instant::now();
        let cfg = RequesterConfig::new(DRIVER, NODE, 1 << 20).c_compatible();
        let mut core = RequesterCore::new(cfg, now);
        core.open(now);
        Driver { core, now }
    }

    /// The one frame the driver sends next.
    fn next(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.core
            .poll_transmit(self.now, 1, &mut |f| out.push(f.to_vec()));
        assert_eq!(out.len(), 1, "expected exactly one frame");
        out.remove(0)
    }

    fn quiet(&mut self) {
        let mut n = 0;
        self.core.poll_transmit(self.now, 8, &mut |_| n += 1);
        assert_eq!(n, 0, "expected no frame");
    }

    fn feed(&mut self, f: &[u8]) {
        self.core.receive(self.now, f);
    }

    /// C1 .. C7: open, 64-byte write at 0x1000, read it back.
    fn up_to_c7(&mut self) {
        assert_eq!(self.next(), c("04000000fffffc34"), "C1 Open");
        self.feed(&m("000000000000022a"));
        assert_eq!(self.next(), c("0000000100000294"), "C2 Open-D");
        self.feed(&m("000000010000062a"));
        assert_eq!(self.next(), c("0000000200000600"), "C3 ack");
        self.quiet();
        self.core
            .submit(1, OpKind::Write, 0x1000, (0..64).collect());
        assert_eq!(self.next(), c4(), "C4 PutFullData");
        self.feed(&m3());
        assert_eq!(
            self.next(),
            c("0000000400000a80"),
            "C5 ack returning 1 D flit"
        );
        let done: Vec<_> = self.core.drain_completions().collect();
        assert_eq!(done.len(), 1);
        assert!(done[0].result.is_ok());
        self.core.submit(2, OpKind::Read, 0x1000, vec![0; 64]);
        assert_eq!(self.next(), c6(), "C6 Get");
        self.feed(&m4());
        assert_eq!(
            self.next(),
            c("0000000600000e83"),
            "C7 ack returning 8 D flits"
        );
        let done: Vec<_> = self.core.drain_completions().collect();
        assert_eq!(
            done[0].result.as_ref().unwrap(),
            &(0..64).collect::<Vec<u8>>()
        );
        self.quiet();
    }
}

#[test]
fn requester_reproduces_c1_to_c8() {
    let mut d = Driver::new();
    d.up_to_c7();
    d.core.close();
    assert_eq!(
        d.next(),
        c("0600000700000e80"),
        "C8 Close with the last D flit"
    );
    d.feed(&m("0600000400001e8a"));
    assert!(d.core.closed());
}

#[test]
fn requester_reproduces_c9_coalesced_gets() {
    let mut d = Driver::new();
    d.up_to_c7();
    d.core.submit(3, OpKind::Read, 0x2000, vec![0; 4096]);
    let flits = [
        "180a000000000003",
        "0000000000002000",
        "180a000000000004",
        "0000000000002400",
        "180a000000000005",
        "0000000000002800",
        "180a000000000006",
        "0000000000002c00",
    ];
    assert_eq!(
        d.next(),
        frame(TO_NODE, "0000000700000e80", &flits, 0x55),
        "C9"
    );
}

#[test]
fn requester_replays_when_the_c_node_stays_silent() {
    // The C driver would only re-issue; we re-issue with a new frame and the link also
    // keeps the original for Go-Back-N.
    let mut d = Driver::new();
    d.up_to_c7();
    d.core.submit(9, OpKind::Read, 0x1000, vec![0; 64]);
    let first = d.next();
    d.now += Duration::from_millis(150);
    let mut out = Vec::new();
    d.core
        .poll_transmit(d.now, 64, &mut |f| out.push(f.to_vec()));
    assert!(
        out.iter().any(|f| f == &first),
        "the original frame is replayed"
    );
    assert!(
        d.core.stats().reissued >= 1,
        "the Get is re-issued after 100 ms"
    );
}

/// Runs the C driver's frames through the node in C-tolerant mode; returns its replies.
fn node_replies(node: &mut EndpointCore, now: Instant, f: &[u8]) -> Vec<Vec<u8>> {
    node.receive(now, f);
    let mut out = Vec::new();
    node.poll_transmit(now + Duration::from_millis(1), 64, &mut |f| {
        out.push(f.to_vec())
    });
    out
}

fn messages(f: &[u8]) -> Vec<(Channel, u8, u8, u32, bool, Vec<u8>)> {
    let frame = Frame::new_checked(f).unwrap();
    frame
        .messages()
        .map(|m| {
            let m = m.unwrap();
            (
                m.header.chan,
                m.header.opcode,
                m.header.size,
                m.header.source,
                m.header.denied,
                m.payload.to_vec(),
            )
        })
        .collect()
}

#[test]
fn node_serves_the_c_driver_frames() {
    let now = Instant::now();
    let mut cfg = EndpointConfig::new(NODE);
    cfg.compat = Compat::C_PEER;
    let mut node = EndpointCore::new(cfg, Memory::anonymous(1 << 20, 0).unwrap());
    node_replies(&mut node, now, &c("04000000fffffc34"));
    node_replies(&mut node, now, &c("0000000100000294"));
    let r = node_replies(&mut node, now, &c("0000000200000600"));
    // Never an empty Normal frame in answer to the driver's empty ack (no ping-pong).
    for f in &r {
        let h = Frame::new_checked(&f[..]).unwrap().header().unwrap();
        assert!(h.msg_type == MessageType::AckOnly || h.chan != 0, "{h:?}");
    }
    let r = node_replies(&mut node, now, &c4());
    let msgs: Vec<_> = r.iter().flat_map(|f| messages(f)).collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0], (Channel::D, op_d::ACCESS_ACK, 6, 1, false, vec![]));
    assert_eq!(
        node.memory().slice(0x1000, 64).unwrap(),
        &(0..64).collect::<Vec<u8>>()[..]
    );
    let r = node_replies(&mut node, now, &c6());
    let msgs: Vec<_> = r.iter().flat_map(|f| messages(f)).collect();
    assert_eq!(msgs[0].0, Channel::D);
    assert_eq!(
        (msgs[0].1, msgs[0].2, msgs[0].3),
        (op_d::ACCESS_ACK_DATA, 6, 2)
    );
    assert_eq!(
        msgs[0].5,
        (0..64).collect::<Vec<u8>>(),
        "raw lane order, as [MN]"
    );
    // The driver lost a frame and re-issued its Get in a new frame with a new sequence
    // number (seq 9 after 5): the tolerant node answers it.
    let reissued = frame(
        TO_NODE,
        "0000000900000a00",
        &["1806000000000002", "0000000000001000"],
        1,
    );
    let r = node_replies(&mut node, now, &reissued);
    assert_eq!(r.iter().flat_map(|f| messages(f)).count(), 1);
    // Close is answered with the node's own Close.
    let r = node_replies(&mut node, now, &c("0600000a00000e80"));
    assert!(r.iter().any(|f| Frame::new_checked(&f[..])
        .unwrap()
        .header()
        .unwrap()
        .msg_type
        == MessageType::Close));
}
