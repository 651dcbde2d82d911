//! The requester state machine: requests, transfers, source-ID slots and the link.

use super::plan::{Planner, Txn, TxnKind};
use super::{IoError, RequesterConfig};
use crate::link::{Link, LinkStats, MessageSink, MessageSource, TxCredits};
use crate::wire::data::{from_wire, group_mask, to_wire, wire_pos};
use crate::wire::tilelink::{op_a, op_d};
use crate::wire::{Channel, FrameBuilder, LaneOrder, Message, MessageHeader, MessageRepr, FLIT};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Read into the buffer.
    Read,
    /// Write the buffer.
    Write,
}

/// A finished request: its token and its buffer (filled for reads) or error.
#[derive(Debug)]
pub struct Completion {
    /// The caller's token.
    pub token: u64,
    /// The buffer, or why the request failed.
    pub result: Result<Vec<u8>, IoError>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequesterStats {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests failed.
    pub errors: u64,
    /// Transfers sent (first issue).
    pub transfers: u64,
    /// Transfers re-issued (C-compatible recovery or reconnection).
    pub reissued: u64,
    /// Connections reopened after the link stalled.
    pub reconnects: u64,
    /// Responses matching no transfer in flight (late duplicates), ignored.
    pub unexpected: u64,
    /// Received frames the link rejected.
    pub bad_frames: u64,
    /// Link counters.
    pub link: LinkStats,
}

#[derive(Debug)]
struct Op {
    token: u64,
    kind: OpKind,
    buf: Vec<u8>,
    planner: Planner,
    outstanding: usize,
    error: Option<IoError>,
    /// Live [`Lend`]s of this op's buffer.
    lent: usize,
}

/// Write data that unacknowledged frames send straight from a request's buffer
/// ([`FrameBuilder::push_external`]) instead of from a copy in the frame. The frame may be
/// replayed until acknowledged, so the bytes must outlive the request: a request finishing
/// while some of its data is lent (an error, or a peer acknowledging out of the usual order)
/// first copies that data here.
#[derive(Debug, Default)]
struct Lend {
    op: usize,
    off: usize,
    len: usize,
    /// The bytes, once the request has finished.
    owned: Option<Box<[u8]>>,
    live: bool,
}

/// Writes of at least this many bytes are sent from the request's buffer without a copy.
const ZERO_COPY_MIN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Queued,
    Sent,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    gen: u32,
    state: SlotState,
    op: usize,
    txn: Txn,
    sent_at: Instant,
    first_sent: Instant,
}

/// Everything but the link, so the link can borrow it as source and sink.
#[derive(Debug)]
struct Inner {
    cfg: RequesterConfig,
    now: Instant,
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    op_queue: VecDeque<usize>,
    slots: Vec<Slot>,
    slot_bits: u32,
    free_slots: VecDeque<usize>,
    send_q: VecDeque<usize>,
    in_flight: usize,
    done: Vec<Completion>,
    stats: RequesterStats,
    max_size: u8,
    lends: Vec<Lend>,
    free_lends: Vec<usize>,
}

/// The requester state machine (no I/O). See the module documentation.
#[derive(Debug)]
pub struct RequesterCore {
    link: Link,
    inner: Inner,
    next_check: Instant,
}

impl RequesterCore {
    /// A requester; call [`RequesterCore::open`] before use.
    pub fn new(cfg: RequesterConfig, now: Instant) -> RequesterCore {
        let n = cfg.max_inflight.clamp(1, 1 << 16).next_power_of_two();
        let slot_bits = n.trailing_zeros();
        let blank = Txn {
            kind: TxnKind::Get,
            addr: 0,
            size: 0,
            buf_off: 0,
            skip: 0,
            len: 0,
        };
        let slots = vec![
            Slot {
                gen: 0,
                state: SlotState::Free,
                op: 0,
                txn: blank,
                sent_at: now,
                first_sent: now
            };
            n
        ];
        // Round-robin from 1, like the C driver (source 0 comes last).
        let free_slots = (1..n).chain(std::iter::once(0)).collect();
        let max_size = cfg.max_size();
        let link = Link::new(cfg.link.clone(), now);
        let inner = Inner {
            cfg,
            now,
            ops: Vec::new(),
            free_ops: Vec::new(),
            op_queue: VecDeque::new(),
            slots,
            slot_bits,
            free_slots,
            send_q: VecDeque::new(),
            in_flight: 0,
            done: Vec::new(),
            stats: RequesterStats::default(),
            max_size,
            lends: Vec::new(),
            free_lends: Vec::new(),
        };
        RequesterCore {
            link,
            inner,
            next_check: now,
        }
    }

    /// Opens (or reopens) the connection.
    pub fn open(&mut self, now: Instant) {
        self.link.open(now);
        self.inner.release_all_lends();
    }

    /// Asks the link to close once everything queued has gone out.
    pub fn close(&mut self) {
        self.link.close();
    }

    /// Whether our Close was sent and acknowledged, or the peer closed.
    pub fn closed(&self) -> bool {
        self.link.close_complete() || self.link.peer_closed()
    }

    /// Largest transfer size in use (log2 bytes).
    pub fn max_size(&self) -> u8 {
        self.inner.max_size
    }

    /// Queues a request. `buf` is the data to write, or a buffer of the length to read.
    pub fn submit(&mut self, token: u64, kind: OpKind, offset: u64, buf: Vec<u8>) {
        self.inner.submit(token, kind, offset, buf);
    }

    /// Requests not yet completed.
    pub fn pending_ops(&self) -> usize {
        self.inner.ops.len() - self.inner.free_ops.len()
    }

    /// Takes the finished requests.
    pub fn drain_completions(&mut self) -> std::vec::Drain<'_, Completion> {
        self.inner.done.drain(..)
    }

    /// Counters.
    pub fn stats(&self) -> RequesterStats {
        let mut s = self.inner.stats;
        s.link = self.link.stats();
        s
    }

    /// Handles one received frame.
    pub fn receive(&mut self, now: Instant, frame: &[u8]) {
        self.inner.now = now;
        if self.link.receive(now, frame, &mut self.inner).is_err() {
            self.inner.stats.bad_frames += 1;
        }
    }

    /// Runs timers and emits up to `budget` frames.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        budget: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> usize {
        self.poll_transmit_batch(now, budget, &mut crate::link::one_by_one(out))
    }

    /// [`RequesterCore::poll_transmit`], handing the turn's frames to `out` at once, borrowed
    /// from the link's buffers (for a transport that sends them without a copy).
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        budget: usize,
        out: &mut crate::link::FrameBatchSink<'_>,
    ) -> usize {
        self.inner.now = now;
        if now >= self.next_check {
            self.next_check = now + Duration::from_millis(5);
            self.check_health(now);
        }
        self.inner.pump();
        self.link
            .poll_transmit_batch(now, &mut self.inner, budget, out)
    }

    /// When `poll_transmit` must next run.
    pub fn poll_at(&self) -> Option<Instant> {
        let link = self.link.poll_at();
        if self.inner.in_flight == 0 {
            return link;
        }
        Some(link.map_or(self.next_check, |l| l.min(self.next_check)))
    }

    fn check_health(&mut self, now: Instant) {
        if matches!(self.link.stalled_for(now), Some(d) if d >= self.inner.cfg.reconnect_after) {
            tracing::warn!(peer = %self.inner.cfg.link.peer, "link stalled; reopening the connection");
            self.link.open(now);
            self.inner.release_all_lends();
            self.inner.stats.reconnects += 1;
            self.inner.requeue_all();
        }
        self.inner.expire(now);
    }
}

impl Inner {
    fn submit(&mut self, token: u64, kind: OpKind, offset: u64, buf: Vec<u8>) {
        let len = buf.len() as u64;
        let size = self.cfg.size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            self.stats.errors += 1;
            self.done.push(Completion {
                token,
                result: Err(IoError::OutOfRange { offset, len, size }),
            });
            return;
        }
        let addr = self.cfg.base.saturating_add(offset);
        let planner = Planner::new(addr, len, kind == OpKind::Write, self.max_size);
        let op = Op {
            token,
            kind,
            buf,
            planner,
            outstanding: 0,
            error: None,
            lent: 0,
        };
        let idx = crate::slots::put(&mut self.ops, &mut self.free_ops, Some(op));
        self.op_queue.push_back(idx);
        self.maybe_finish(idx);
    }

    /// Plans transfers of queued requests into free slots.
    fn pump(&mut self) {
        while let Some(&idx) = self.op_queue.front() {
            let Some(op) = self.ops[idx].as_mut() else {
                self.op_queue.pop_front();
                continue;
            };
            if op.error.is_some() || op.planner.done() {
                self.op_queue.pop_front();
                continue;
            }
            let Some(slot) = self.free_slots.pop_front() else {
                return;
            };
            let Some(txn) = op.planner.next() else {
                self.free_slots.push_front(slot);
                continue;
            };
            op.outstanding += 1;
            let s = &mut self.slots[slot];
            s.state = SlotState::Queued;
            s.op = idx;
            s.txn = txn;
            s.first_sent = self.now;
            self.send_q.push_back(slot);
            self.in_flight += 1;
        }
    }

    fn source(&self, slot: usize) -> u32 {
        let gen = self.slots[slot].gen;
        let idx = u32::try_from(slot).unwrap_or(0);
        ((gen << self.slot_bits) | idx) & MessageHeader::MAX_SOURCE
    }

    fn slot_of(&self, source: u32) -> Option<usize> {
        let idx = usize::try_from(source & ((1 << self.slot_bits) - 1)).ok()?;
        let gen_mask = MessageHeader::MAX_SOURCE >> self.slot_bits;
        let s = self.slots.get(idx)?;
        (s.state == SlotState::Sent && (s.gen & gen_mask) == source >> self.slot_bits)
            .then_some(idx)
    }

    fn free_slot(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        s.gen = s.gen.wrapping_add(1);
        self.free_slots.push_back(slot);
        self.in_flight -= 1;
    }

    /// Finishes transfer `slot` with `err` (None = success).
    fn finish_txn(&mut self, slot: usize, err: Option<IoError>) {
        let op_idx = self.slots[slot].op;
        self.free_slot(slot);
        if let Some(op) = self.ops[op_idx].as_mut() {
            op.outstanding -= 1;
            if let (Some(e), None) = (err, &op.error) {
                op.error = Some(e);
            }
        }
        self.maybe_finish(op_idx);
    }

    fn maybe_finish(&mut self, idx: usize) {
        let Some(op) = self.ops[idx].as_ref() else {
            return;
        };
        let finished = op.outstanding == 0 && (op.planner.done() || op.error.is_some());
        if !finished {
            return;
        }
        if op.lent > 0 {
            self.keep_lent(idx);
        }
        let Some(op) = self.ops[idx].take() else {
            return;
        };
        self.free_ops.push(idx);
        let len = op.buf.len() as u64;
        let result = match op.error {
            Some(e) => {
                self.stats.errors += 1;
                Err(e)
            }
            None => {
                match op.kind {
                    OpKind::Read => (self.stats.reads += 1, self.stats.bytes_read += len),
                    OpKind::Write => (self.stats.writes += 1, self.stats.bytes_written += len),
                };
                Ok(op.buf)
            }
        };
        self.done.push(Completion {
            token: op.token,
            result,
        });
    }

    /// Records `len` bytes at `off` of op `op`'s buffer as sent from there; returns the key.
    fn lend(&mut self, op: usize, off: usize, len: usize) -> u64 {
        let lend = Lend {
            op,
            off,
            len,
            owned: None,
            live: true,
        };
        let i = crate::slots::put(&mut self.lends, &mut self.free_lends, lend);
        if let Some(o) = self.ops[op].as_mut() {
            o.lent += 1;
        }
        i as u64
    }

    /// Op `idx` is finishing with data still lent: copies that data into its lends.
    fn keep_lent(&mut self, idx: usize) {
        let Some(op) = self.ops[idx].as_mut() else {
            return;
        };
        for l in &mut self.lends {
            if l.live && l.op == idx && l.owned.is_none() {
                let bytes = op.buf.get(l.off..l.off + l.len).unwrap_or_default();
                l.owned = Some(Box::from(bytes));
                op.lent -= 1;
            }
        }
    }

    /// The link forgot every frame (a reopened connection): nothing is lent any more.
    fn release_all_lends(&mut self) {
        for i in 0..self.lends.len() {
            self.release_lend(i as u64);
        }
    }

    fn release_lend(&mut self, key: u64) {
        let Some(i) = usize::try_from(key).ok().filter(|&i| i < self.lends.len()) else {
            return;
        };
        let l = &mut self.lends[i];
        if !l.live {
            return;
        }
        l.live = false;
        if l.owned.take().is_none() {
            if let Some(op) = self.ops[l.op].as_mut() {
                op.lent -= 1;
            }
        }
        self.free_lends.push(i);
    }

    /// Puts every transfer in flight back in the send queue (after a reconnection).
    fn requeue_all(&mut self) {
        let mut sent: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == SlotState::Sent)
            .collect();
        sent.sort_by_key(|&i| self.slots[i].sent_at);
        for &i in sent.iter().rev() {
            self.slots[i].state = SlotState::Queued;
            self.send_q.push_front(i);
            self.stats.reissued += 1;
        }
    }

    /// Fails transfers past the request timeout; re-issues those past `reissue_after`.
    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.state == SlotState::Free {
                continue;
            }
            if now.saturating_duration_since(s.first_sent) >= timeout {
                if s.state == SlotState::Queued {
                    self.send_q.retain(|&q| q != i);
                }
                self.finish_txn(i, Some(IoError::TimedOut(timeout)));
            } else if let Some(after) = self.cfg.reissue_after {
                if s.state == SlotState::Sent && now.saturating_duration_since(s.sent_at) >= after {
                    self.slots[i].state = SlotState::Queued;
                    self.send_q.push_back(i);
                    self.stats.reissued += 1;
                }
            }
        }
    }

    fn message(&self, slot: usize) -> MessageRepr {
        let txn = self.slots[slot].txn;
        let opcode = match txn.kind {
            TxnKind::Get => op_a::GET,
            TxnKind::PutFull => op_a::PUT_FULL,
            TxnKind::PutPartial => op_a::PUT_PARTIAL,
        };
        MessageRepr {
            header: MessageHeader::new(Channel::A, opcode, txn.size, self.source(slot)),
            address: txn.addr,
            sink: 0,
        }
    }

    /// Writes a transfer's payload (data, or mask and data) into `p`.
    fn payload(&self, slot: usize, p: &mut [u8]) {
        let s = &self.slots[slot];
        let Some(op) = self.ops[s.op].as_ref() else {
            return;
        };
        let txn = s.txn;
        let Some(data) = op.buf.get(txn.buf_off..txn.buf_off + txn.len) else {
            return;
        };
        let order = self.cfg.lane_order;
        match txn.kind {
            TxnKind::Get => {}
            TxnKind::PutFull => to_wire(order, txn.addr, data, p),
            TxnKind::PutPartial => {
                let mask = group_mask(txn.skip, txn.skip + txn.len);
                p[..FLIT].copy_from_slice(&mask.to_be_bytes());
                for (i, b) in data.iter().enumerate() {
                    let pos = wire_pos(order, txn.addr + (txn.skip + i) as u64);
                    p[FLIT + pos] = *b;
                }
            }
        }
    }

    /// Adds transfer `slot`'s message to `frame`; full writes in raw lane order copy their
    /// data straight from the request's buffer, or, if large, leave it there for the
    /// transport to send (not in C-driver mode, whose peers acknowledge loosely).
    fn push(
        &mut self,
        frame: &mut FrameBuilder<'_>,
        slot: usize,
        repr: &MessageRepr,
    ) -> crate::wire::Result<()> {
        let s = &self.slots[slot];
        let txn = s.txn;
        let op = s.op;
        let raw_full = txn.kind == TxnKind::PutFull
            && self.cfg.lane_order == LaneOrder::Raw
            && txn.len >= FLIT;
        let in_buf = self.ops[op]
            .as_ref()
            .is_some_and(|o| o.buf.len() >= txn.buf_off + txn.len);
        if raw_full
            && in_buf
            && txn.len >= ZERO_COPY_MIN
            && frame.allows_external()
            && !self.cfg.link.compat.tolerant_receive
        {
            let key = self.lend(op, txn.buf_off, txn.len);
            let pushed = frame.push_external(repr, key, txn.len);
            if pushed.is_err() {
                self.release_lend(key);
            }
            return pushed;
        }
        if raw_full {
            let data = self.ops[s.op]
                .as_ref()
                .and_then(|op| op.buf.get(txn.buf_off..txn.buf_off + txn.len));
            if let Some(data) = data {
                return frame.push_data(repr, data);
            }
        }
        frame.push(repr, |p| self.payload(slot, p))
    }

    fn check_response(&self, slot: usize, msg: &Message<'_>) -> Result<(), IoError> {
        let txn = self.slots[slot].txn;
        let h = msg.header;
        let addr = txn.addr;
        if h.denied {
            return Err(IoError::Denied { addr });
        }
        if h.corrupt {
            return Err(IoError::Corrupt { addr });
        }
        let want = if txn.kind == TxnKind::Get {
            op_d::ACCESS_ACK_DATA
        } else {
            op_d::ACCESS_ACK
        };
        if h.opcode != want || h.size != txn.size {
            return Err(IoError::BadResponse { addr });
        }
        Ok(())
    }
}

impl MessageSource for Inner {
    fn fill(&mut self, frame: &mut FrameBuilder<'_>, credits: &mut TxCredits) {
        while let Some(&slot) = self.send_q.front() {
            let repr = self.message(slot);
            if repr.flits() > frame.room() || !credits.try_take(Channel::A, repr.flits()) {
                return;
            }
            if self.push(frame, slot, &repr).is_err() {
                return;
            }
            self.send_q.pop_front();
            let s = &mut self.slots[slot];
            s.state = SlotState::Sent;
            s.sent_at = self.now;
            self.stats.transfers += 1;
        }
    }

    fn has_pending(&self) -> bool {
        !self.send_q.is_empty()
    }

    fn external(&self, key: u64, len: usize) -> Option<&[u8]> {
        let l = self.lends.get(usize::try_from(key).ok()?)?;
        if !l.live || l.len != len {
            return None;
        }
        match &l.owned {
            Some(b) => Some(b),
            None => self.ops[l.op].as_ref()?.buf.get(l.off..l.off + l.len),
        }
    }
}

impl MessageSink for Inner {
    fn released(&mut self, key: u64) {
        self.release_lend(key);
    }

    fn deliver(&mut self, msg: &Message<'_>) {
        let slot = match (msg.header.chan, self.slot_of(msg.header.source)) {
            (Channel::D, Some(slot)) => slot,
            _ => {
                self.stats.unexpected += 1;
                return;
            }
        };
        if let Err(e) = self.check_response(slot, msg) {
            return self.finish_txn(slot, Some(e));
        }
        let s = self.slots[slot];
        if s.txn.kind == TxnKind::Get {
            if let Some(op) = self.ops[s.op].as_mut() {
                let order = self.cfg.lane_order;
                let txn = s.txn;
                if let Some(dst) = op.buf.get_mut(txn.buf_off..txn.buf_off + txn.len) {
                    let at = txn.addr + txn.skip as u64;
                    let src = if dst.len() < FLIT {
                        msg.payload
                    } else {
                        msg.payload.get(txn.skip..).unwrap_or(&[])
                    };
                    from_wire(order, at, src, dst);
                }
            }
        }
        self.finish_txn(slot, None);
    }
}
