//! Link tests: two links wired back to back, frames passed by hand.

use super::*;
use crate::wire::tilelink::op_a;
use crate::wire::{Channel, FrameBuilder, MacAddr, Message, MessageHeader, MessageRepr, Seq};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Queue(VecDeque<MessageRepr>);

impl MessageSource for Queue {
    fn fill(&mut self, frame: &mut FrameBuilder<'_>, credits: &mut TxCredits) {
        while let Some(m) = self.0.front() {
            if m.flits() > frame.room() || !credits.try_take(m.header.chan, m.flits()) {
                break;
            }
            let source = m.header.source;
            frame.push(m, |p| p.fill(source.to_le_bytes()[0])).unwrap();
            self.0.pop_front();
        }
    }
    fn has_pending(&self) -> bool {
        !self.0.is_empty()
    }
}

#[derive(Default)]
struct Collect(Vec<u32>);

impl MessageSink for Collect {
    fn deliver(&mut self, msg: &Message<'_>) {
        let b = msg.header.source.to_le_bytes()[0];
        assert!(msg.payload.iter().all(|&x| x == b), "payload corrupted");
        self.0.push(msg.header.source);
    }
}

fn put(source: u32) -> MessageRepr {
    MessageRepr {
        header: MessageHeader::new(Channel::A, op_a::PUT_FULL, 6, source),
        address: 0x40,
        sink: 0,
    }
}

struct Pair {
    a: Link,
    b: Link,
    qa: Queue,
    qb: Queue,
    ra: Collect,
    rb: Collect,
    now: Instant,
}

impl Pair {
    fn new(window_b: u64) -> Pair {
        let now = Instant::now();
        let (ma, mb) = (MacAddr::local(1), MacAddr::local(2));
        let mut ca = LinkConfig::new(ma, mb);
        ca.rx_window = [0, 0, 0, 1 << 16, 0];
        let mut cb = LinkConfig::new(mb, ma);
        cb.rx_window = [window_b, 0, 0, 0, 0];
        let mut a = Link::new(ca, now);
        let mut b = Link::new(cb, now);
        a.open(now);
        b.accept(now);
        Pair {
            a,
            b,
            qa: Queue::default(),
            qb: Queue::default(),
            ra: Collect::default(),
            rb: Collect::default(),
            now,
        }
    }

    fn tx_a(&mut self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        self.a
            .poll_transmit(self.now, &mut self.qa, usize::MAX, &mut |f| {
                v.push(f.to_vec())
            });
        v
    }

    fn tx_b(&mut self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        self.b
            .poll_transmit(self.now, &mut self.qb, usize::MAX, &mut |f| {
                v.push(f.to_vec())
            });
        v
    }

    fn rx_b(&mut self, frames: &[Vec<u8>]) -> Vec<Received> {
        frames
            .iter()
            .map(|f| self.b.receive(self.now, f, &mut self.rb).unwrap())
            .collect()
    }

    fn rx_a(&mut self, frames: &[Vec<u8>]) -> Vec<Received> {
        frames
            .iter()
            .map(|f| self.a.receive(self.now, f, &mut self.ra).unwrap())
            .collect()
    }

    /// Exchanges frames (advancing time past every timer) until both sides fall silent.
    fn settle(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            self.now += Duration::from_millis(1);
            let fa = self.tx_a();
            self.rx_b(&fa);
            let fb = self.tx_b();
            self.rx_a(&fb);
            if fa.is_empty() && fb.is_empty() {
                return total;
            }
            total += fa.len() + fb.len();
        }
        panic!("links never fell silent");
    }
}

#[test]
fn messages_flow_and_get_acknowledged() {
    let mut p = Pair::new(1 << 16);
    p.qa.0.extend((1..=3).map(put));
    let frames = p.tx_a();
    assert_eq!(frames.len(), 2, "open, then one frame of three puts");
    assert_eq!(
        p.rx_b(&frames),
        vec![
            Received::Accepted { messages: 0 },
            Received::Accepted { messages: 3 }
        ]
    );
    assert_eq!(p.rb.0, vec![1, 2, 3]);
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
    assert_eq!(p.b.in_flight(), 0);
    assert_eq!(p.a.stats().frames_replayed, 0);
}

#[test]
fn a_lost_frame_is_naked_and_replayed_in_order() {
    let mut p = Pair::new(1 << 16);
    let mut frames = Vec::new();
    frames.extend(p.tx_a()); // open
    for i in 1..=5 {
        p.qa.0.truncate(0);
        p.qa.0.push_back(put(i));
        frames.extend(p.tx_a());
    }
    // Open, a frame granting the rest of A's receive window, then one frame per put.
    assert_eq!(frames.len(), 7);
    frames.remove(3); // put 2 is lost
    let got = p.rx_b(&frames);
    assert_eq!(
        &got[3..],
        &[
            Received::OutOfOrder,
            Received::OutOfOrder,
            Received::OutOfOrder
        ]
    );
    let nak = p.tx_b();
    assert!(!nak.is_empty());
    assert_eq!(p.b.stats().naks_sent, 1);
    p.rx_a(&nak);
    let replay = p.tx_a();
    assert_eq!(replay.len(), 4, "Go-Back-N from seq 2");
    p.rx_b(&replay);
    assert_eq!(p.rb.0, vec![1, 2, 3, 4, 5]);
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
}

#[test]
fn duplicates_are_dropped_and_acknowledged() {
    let mut p = Pair::new(1 << 16);
    p.qa.0.push_back(put(7));
    let frames = p.tx_a();
    p.rx_b(&frames);
    // A repeated Open is reported (the endpoint decides whether the peer restarted).
    assert_eq!(p.rx_b(&frames), vec![Received::Reopen, Received::Duplicate]);
    assert_eq!(p.rb.0, vec![7]);
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
}

#[test]
fn the_retransmission_timer_replays_when_everything_is_lost() {
    let mut p = Pair::new(1 << 16);
    p.qa.0.push_back(put(9));
    assert_eq!(p.tx_a().len(), 2); // lost
    p.now += Duration::from_millis(5);
    assert!(p.tx_a().is_empty(), "not before the timeout");
    p.now += Duration::from_millis(6);
    // The timeout sends the oldest frame only (the Open)...
    let probe = p.tx_a();
    assert_eq!(probe.len(), 1);
    assert_eq!(p.a.stats().timeouts, 1);
    p.rx_b(&probe);
    assert!(p.rb.0.is_empty());
    // ...and its acknowledgement, which leaves the Put unacknowledged, replays the rest.
    p.now += Duration::from_millis(1);
    let ack = p.tx_b();
    p.rx_a(&ack);
    let rest = p.tx_a();
    assert_eq!(rest.len(), 1);
    p.rx_b(&rest);
    assert_eq!(p.rb.0, vec![9]);
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
    assert_eq!(p.a.stats().timeouts, 1);
}

#[test]
fn a_timeout_with_only_the_acks_late_replays_one_frame() {
    let mut p = Pair::new(1 << 16);
    for i in 0..8 {
        p.qa.0.push_back(put(i));
    }
    let frames = p.tx_a();
    assert!(frames.len() >= 2);
    p.rx_b(&frames); // arrived, but B is kept off the CPU and does not answer in time
    p.now += Duration::from_millis(11);
    let probe = p.tx_a();
    assert_eq!(probe.len(), 1, "only the oldest frame is resent");
    p.rx_b(&probe); // a duplicate: B acknowledges everything at once
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
    assert_eq!(p.a.stats().frames_replayed, 1);
    assert_eq!(p.rb.0, (0..8).collect::<Vec<_>>());
}

#[test]
fn ack_only_frames_are_never_answered() {
    let mut p = Pair::new(1 << 16);
    p.qa.0.push_back(put(1));
    p.settle();
    let (a, b) = (p.a.stats(), p.b.stats());
    assert!(a.ack_only_sent + b.ack_only_sent >= 1);
    // Nothing more flows however long we wait.
    p.now += Duration::from_secs(1);
    assert!(p.tx_a().is_empty() && p.tx_b().is_empty());
    assert_eq!(p.a.stats(), a);
    assert_eq!(p.b.stats(), b);
}

#[test]
fn sequence_numbers_wrap_modulo_2_22() {
    let mut p = Pair::new(1 << 16);
    let f = p.tx_a(); // open at seq 0
    p.rx_b(&f);
    p.settle();
    let start = Seq::MAX.add(Seq::MODULUS - 3);
    p.a.set_next_tx(start);
    p.b.set_next_rx(start);
    for i in 0..10 {
        p.qa.0.push_back(put(i));
        let f = p.tx_a();
        assert_eq!(p.rx_b(&f), vec![Received::Accepted { messages: 1 }]);
    }
    assert_eq!(p.a.next_tx_seq(), start.add(10));
    p.settle();
    assert_eq!(p.a.in_flight(), 0);
    assert_eq!(p.rb.0, (0..10).collect::<Vec<_>>());
}

#[test]
fn credits_bound_the_sender_until_granted() {
    let mut p = Pair::new(256);
    p.qa.0.extend((0..20).map(put)); // 10 flits each
    let f = p.tx_a();
    p.rx_b(&f);
    assert_eq!(p.rb.0.len(), 12, "128 implicit credits allow 12 puts");
    assert_eq!(p.a.tx_credits().available(Channel::A), 8);
    p.settle();
    assert_eq!(
        p.rb.0.len(),
        20,
        "grants from the endpoint let the rest through"
    );
}

#[test]
fn malformed_and_foreign_frames_are_rejected() {
    let mut p = Pair::new(1 << 16);
    let mut f = p.tx_a().remove(0);
    let mut sink = Collect::default();
    assert!(matches!(
        p.b.receive(p.now, &f[..20], &mut sink),
        Err(LinkError::Malformed(_))
    ));
    f[6] ^= 1;
    assert!(matches!(
        p.b.receive(p.now, &f, &mut sink),
        Err(LinkError::WrongPeer(_))
    ));
    assert_eq!(p.b.stats().malformed, 1);
}

#[test]
fn the_retransmission_timeout_follows_the_measured_round_trip() {
    let mut p = Pair::new(1 << 16);
    p.settle();
    // Round trips of 30 ms: the timeout grows past the 10 ms floor.
    for i in 0..20 {
        p.qa.0.push_back(put(i));
        let f = p.tx_a();
        p.rx_b(&f);
        p.now += Duration::from_millis(30);
        let acks = p.tx_b();
        p.rx_a(&acks);
    }
    let srtt = p.a.srtt().unwrap();
    assert!(srtt >= Duration::from_millis(25), "{srtt:?}");
    // A frame now waits longer than 10 ms without being replayed.
    p.qa.0.push_back(put(99));
    p.tx_a();
    p.now += Duration::from_millis(20);
    assert!(
        p.tx_a().is_empty(),
        "no spurious replay at 20 ms with a 30 ms round trip"
    );
    assert_eq!(p.a.stats().timeouts, 0);
}
