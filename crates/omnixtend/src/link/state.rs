//! The link state machine: transmit side (sequence numbers, replay, credits) and receive side
//! (sequence check, ACK/NAK, delivery).

use super::credits::{RxCredits, TxCredits};
use super::{LinkConfig, LinkError};
use crate::wire::{
    Channel, EthernetRepr, ExternalData, Frame, FrameBuilder, Message, MessageType, Seq,
    TloeHeader, ETHERNET_HEADER_LEN, ETHERTYPE_OMNIXTEND,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Supplies TileLink messages for outgoing frames.
pub trait MessageSource {
    /// Adds messages to `frame` while it has room and `credits` allow. Must not block.
    fn fill(&mut self, frame: &mut FrameBuilder<'_>, credits: &mut TxCredits);
    /// Whether messages are waiting to be sent.
    fn has_pending(&self) -> bool;
    /// Flits per channel (A..E) of received messages whose buffers were freed since the last
    /// call, for a sink that returns credits only when its buffers drain
    /// ([`MessageSink::credits_on_delivery`] false).
    fn take_released(&mut self) -> [u64; 5] {
        [0; 5]
    }
    /// The bytes of an [`ExternalData`] payload this source put in a frame with
    /// [`FrameBuilder::push_external`]: asked each time the frame is sent or replayed, so they
    /// must stay what they were when the frame was first sent until
    /// [`MessageSink::released`] reports the frame acknowledged.
    fn external(&self, _key: u64, _len: usize) -> Option<&[u8]> {
        None
    }
}

/// A source with nothing to send (for links that only acknowledge).
impl MessageSource for () {
    fn fill(&mut self, _: &mut FrameBuilder<'_>, _: &mut TxCredits) {}
    fn has_pending(&self) -> bool {
        false
    }
}

/// Consumes the TileLink messages of accepted frames.
pub trait MessageSink {
    /// Whether a frame's messages can be taken now. If not, the frame is dropped unacknowledged
    /// as though lost, and the peer replays it later (back-pressure on a peer that ignores
    /// credits).
    fn ready(&mut self) -> bool {
        true
    }
    /// Takes one message; its payload borrows the received frame.
    fn deliver(&mut self, msg: &Message<'_>);
    /// Whether the link returns a message's credits as soon as it is delivered (the default),
    /// or only when the source reports its buffer freed ([`MessageSource::take_released`]).
    fn credits_on_delivery(&self) -> bool {
        true
    }
    /// A frame carrying the [`ExternalData`] named `key` was acknowledged: the link will not
    /// ask for those bytes again.
    fn released(&mut self, _key: u64) {}
}

/// What [`Link::receive`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Accepted in order; its messages were delivered.
    Accepted {
        /// Messages delivered.
        messages: usize,
    },
    /// An ACK_only frame (never answered).
    AckOnly,
    /// Already received: dropped and acknowledged.
    Duplicate,
    /// Ahead of a gap: dropped and NAKed.
    OutOfOrder,
    /// The sink was not ready: dropped unacknowledged.
    Deferred,
    /// An Open on a link that is already open: the peer may have restarted. The caller
    /// decides whether to [`Link::reset`].
    Reopen,
}

/// Counters, for `stats` output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames sent for the first time.
    pub frames_sent: u64,
    /// Frames sent again by Go-Back-N.
    pub frames_replayed: u64,
    /// ACK_only frames sent.
    pub ack_only_sent: u64,
    /// Frames accepted in order.
    pub frames_accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Out-of-order frames dropped.
    pub out_of_order: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// NAKs received that caused a replay.
    pub naks_received: u64,
    /// Retransmission timer expiries.
    pub timeouts: u64,
    /// Frames rejected as malformed.
    pub malformed: u64,
    /// Frames deferred by a busy sink.
    pub deferred: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Open,
}

#[derive(Debug)]
struct TxFrame {
    seq: Seq,
    buf: Vec<u8>,
    /// Payloads left out of `buf`, supplied by the source when the frame is sent.
    external: Vec<ExternalData>,
    /// An empty Normal frame sent only to acknowledge (C compatibility).
    pure_ack: bool,
    /// When it was first sent (for round-trip samples).
    sent_at: Instant,
    /// Sent more than once: its acknowledgement is no round-trip sample (Karn's rule).
    replayed: bool,
}

/// Bits remembered by the tolerant receiver to drop exact duplicates.
const SEEN_BITS: u32 = 4096;

/// One TLoE connection. See the module documentation.
#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    eth: EthernetRepr,
    state: State,
    // Transmit side.
    next_tx: Seq,
    acked: Seq,
    replay: VecDeque<TxFrame>,
    pool: Vec<(Vec<u8>, Vec<ExternalData>)>,
    /// The ACK_only frame of the current transmit turn.
    ack_buf: Vec<u8>,
    replay_due: bool,
    /// The due replay is a timeout's probe: only the oldest frame goes out again.
    probe_only: bool,
    /// A timeout probe is out: the first acknowledgement that makes progress replays what it
    /// leaves unacknowledged (the tail that was lost).
    recovering: bool,
    rto: Duration,
    /// The timeout after progress: smoothed RTT + 4 x RTT variation (RFC 6298), never below
    /// the configured timeout, so scheduling noise does not cause spurious Go-Back-N replays.
    base_rto: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto_deadline: Option<Instant>,
    last_progress: Instant,
    last_nak: Option<(Seq, Instant)>,
    tx_credits: TxCredits,
    open_step: u8,
    close_requested: bool,
    close_sent: bool,
    // Receive side.
    next_rx: Seq,
    rx_highest: Option<Seq>,
    seen: Vec<u64>,
    ack_pending: bool,
    ack_justified: bool,
    ack_deadline: Option<Instant>,
    nak_pending: bool,
    nak_sent: bool,
    unacked_rx: usize,
    rx_credits: RxCredits,
    peer_closed: bool,
    stats: LinkStats,
}

impl Link {
    /// A link in the idle state; call [`Link::open`] (requester) or [`Link::accept`] (endpoint).
    pub fn new(cfg: LinkConfig, now: Instant) -> Link {
        let eth = EthernetRepr {
            dst: cfg.peer,
            src: cfg.local,
            ethertype: ETHERTYPE_OMNIXTEND,
        };
        let tx_credits = TxCredits::new(cfg.initial_credits, cfg.compat.ignore_peer_credits);
        let rx_credits = RxCredits::new(cfg.rx_window);
        Link {
            rto: cfg.retransmit_timeout,
            base_rto: cfg.retransmit_timeout,
            srtt: None,
            rttvar: Duration::ZERO,
            eth,
            state: State::Idle,
            next_tx: Seq::new(0),
            acked: Seq::MAX,
            replay: VecDeque::new(),
            pool: Vec::new(),
            ack_buf: Vec::new(),
            replay_due: false,
            probe_only: false,
            recovering: false,
            rto_deadline: None,
            last_progress: now,
            last_nak: None,
            tx_credits,
            open_step: 2,
            close_requested: false,
            close_sent: false,
            next_rx: Seq::new(0),
            rx_highest: None,
            seen: vec![0; (SEEN_BITS / 64) as usize],
            ack_pending: false,
            ack_justified: false,
            ack_deadline: None,
            nak_pending: false,
            nak_sent: false,
            unacked_rx: 0,
            rx_credits,
            peer_closed: false,
            stats: LinkStats::default(),
            cfg,
        }
    }

    /// Opens the connection: the next frame sent is an Open.
    pub fn open(&mut self, now: Instant) {
        self.reset(now);
        self.state = State::Open;
        self.open_step = 0;
        if !self.cfg.compat.c_open {
            self.rx_credits.start(self.cfg.initial_credits);
        }
    }

    /// Accepts a connection the peer is opening (call before receiving its Open frame).
    pub fn accept(&mut self, now: Instant) {
        self.reset(now);
        self.state = State::Open;
        self.rx_credits.start(self.cfg.initial_credits);
    }

    /// Forgets all state: sequence numbers, replay buffer, credits.
    pub fn reset(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        let stats = self.stats;
        let mut pool = std::mem::take(&mut self.pool);
        pool.extend(self.replay.drain(..).map(|f| (f.buf, f.external)));
        *self = Link::new(cfg, now);
        self.pool = pool;
        self.stats = stats;
    }

    /// Asks for a Close once every queued message has been sent.
    pub fn close(&mut self) {
        self.close_requested = true;
    }

    /// Whether the link is open (possibly closing).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether we sent our Close and everything we sent was acknowledged.
    pub fn close_complete(&self) -> bool {
        self.close_sent && self.replay.is_empty()
    }

    /// Whether the peer sent its Close.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Frames awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.replay.len()
    }

    /// Credits the peer has granted us.
    pub fn tx_credits(&self) -> &TxCredits {
        &self.tx_credits
    }

    /// How long frames have waited without any acknowledgement progress (None if none wait).
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        (!self.replay.is_empty()).then(|| now.saturating_duration_since(self.last_progress))
    }

    /// When [`Link::poll_transmit`] must next be called even if nothing arrives.
    pub fn poll_at(&self) -> Option<Instant> {
        let ack = if self.ack_pending {
            self.ack_deadline
        } else {
            None
        };
        match (ack, self.rto_deadline) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }
}

// Receive side.
impl Link {
    /// Processes one received frame (a whole Ethernet frame, FCS excluded). Messages of an
    /// accepted frame are handed to `sink`. A malformed frame is rejected as a whole.
    pub fn receive(
        &mut self,
        now: Instant,
        bytes: &[u8],
        sink: &mut dyn MessageSink,
    ) -> Result<Received, LinkError> {
        let parsed = Frame::new_checked(bytes).and_then(|f| Ok((f.header()?, f.validate()?, f)));
        let (h, _, frame) = parsed.inspect_err(|_| self.stats.malformed += 1)?;
        let src = frame.ethernet().src;
        if src != self.cfg.peer {
            return Err(LinkError::WrongPeer(src));
        }
        if self.state != State::Open {
            return Err(LinkError::NotOpen);
        }
        match h.msg_type {
            MessageType::AckOnly => {
                if self.cfg.compat.tolerant_receive || h.seq == self.next_rx {
                    self.on_ack(now, h.seq_ack, h.ack, sink);
                }
                return Ok(Received::AckOnly);
            }
            MessageType::Open if !(h.seq.get() == 0 && self.nothing_received()) => {
                return Ok(Received::Reopen);
            }
            _ => {}
        }
        let in_order = if self.cfg.compat.tolerant_receive {
            self.tolerant_check(h.seq)
        } else {
            self.strict_check(now, h, sink)
        };
        if let Some(other) = in_order {
            return Ok(other);
        }
        if !sink.ready() {
            self.stats.deferred += 1;
            return Ok(Received::Deferred);
        }
        Ok(self.accept_frame(now, h, frame, sink))
    }

    fn nothing_received(&self) -> bool {
        self.next_rx.get() == 0 && self.rx_highest.is_none()
    }

    /// Strict Go-Back-N check: `None` if in order, else what happened to the frame.
    fn strict_check(
        &mut self,
        now: Instant,
        h: TloeHeader,
        sink: &mut dyn MessageSink,
    ) -> Option<Received> {
        if h.seq == self.next_rx {
            return None;
        }
        // Acknowledgements in a frame we drop still say what the peer received.
        if h.ack {
            self.on_ack(now, h.seq_ack, true, sink);
        }
        self.ack_pending = true;
        self.ack_justified = true;
        self.ack_deadline = Some(now);
        if self.next_rx.since(h.seq) <= Seq::HALF {
            self.stats.duplicates += 1;
            return Some(Received::Duplicate);
        }
        self.stats.out_of_order += 1;
        if !self.nak_sent {
            self.nak_pending = true;
        }
        Some(Received::OutOfOrder)
    }

    /// Tolerant check: anything not seen recently is accepted.
    fn tolerant_check(&mut self, seq: Seq) -> Option<Received> {
        let bit = |s: Seq| (s.get() % SEEN_BITS) as usize;
        let Some(high) = self.rx_highest else {
            self.rx_highest = Some(seq);
            self.seen[bit(seq) / 64] |= 1 << (bit(seq) % 64);
            return None;
        };
        let ahead = seq.since(high);
        if ahead != 0 && ahead < Seq::HALF {
            for i in 1..=ahead.min(SEEN_BITS) {
                let b = bit(high.add(i));
                self.seen[b / 64] &= !(1 << (b % 64));
            }
            self.rx_highest = Some(seq);
        } else if high.since(seq) >= SEEN_BITS
            || self.seen[bit(seq) / 64] & (1 << (bit(seq) % 64)) != 0
        {
            self.stats.duplicates += 1;
            return Some(Received::Duplicate);
        }
        self.seen[bit(seq) / 64] |= 1 << (bit(seq) % 64);
        None
    }

    fn accept_frame(
        &mut self,
        now: Instant,
        h: TloeHeader,
        frame: Frame<&[u8]>,
        sink: &mut dyn MessageSink,
    ) -> Received {
        let acked_substantive = self.on_ack(now, h.seq_ack, h.ack, sink);
        self.tx_credits.grant(h.chan, h.credit);
        let mut messages = 0;
        let credit_now = sink.credits_on_delivery();
        for msg in frame.into_messages().flatten() {
            if credit_now {
                self.rx_credits.consumed(msg.header.chan, msg.flits());
            }
            sink.deliver(&msg);
            messages += 1;
        }
        if !self.cfg.compat.tolerant_receive {
            self.next_rx = self.next_rx.next();
        } else if let Some(high) = self.rx_highest {
            self.next_rx = high.next();
        }
        self.stats.frames_accepted += 1;
        self.nak_sent = false;
        self.unacked_rx += 1;
        if h.msg_type == MessageType::Close {
            self.peer_closed = true;
        }
        self.schedule_ack(
            now,
            messages > 0 || acked_substantive || h.msg_type != MessageType::Normal,
        );
        Received::Accepted { messages }
    }

    fn schedule_ack(&mut self, now: Instant, justified: bool) {
        self.ack_pending = true;
        self.ack_justified |= justified;
        let deadline = if self.cfg.compat.empty_normal_acks || self.unacked_rx >= 16 {
            now
        } else {
            now + self.cfg.ack_delay
        };
        self.ack_deadline = Some(self.ack_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// Applies a cumulative ACK (or NAK) for `seq_ack`. Returns whether it acknowledged a frame
    /// that was more than an empty acknowledgement.
    fn on_ack(
        &mut self,
        now: Instant,
        seq_ack: Seq,
        ack: bool,
        sink: &mut dyn MessageSink,
    ) -> bool {
        let outstanding = self.next_tx.prev().since(self.acked);
        let newly = seq_ack.since(self.acked);
        if newly > outstanding {
            return false; // stale or nonsense
        }
        let mut substantive = false;
        let mut sample = None;
        for _ in 0..newly {
            if let Some(f) = self.replay.pop_front() {
                substantive |= !f.pure_ack;
                if !f.replayed {
                    sample = Some(now.saturating_duration_since(f.sent_at));
                }
                for e in &f.external {
                    sink.released(e.key);
                }
                self.pool.push((f.buf, f.external));
            }
        }
        if let Some(rtt) = sample {
            self.update_rtt(rtt);
        }
        if newly > 0 {
            self.acked = seq_ack;
            self.last_progress = now;
            self.rto = self.base_rto;
            self.rto_deadline = (!self.replay.is_empty()).then(|| now + self.rto);
            if std::mem::take(&mut self.recovering) && !self.replay.is_empty() {
                // The probe got through but frames after it are still unacknowledged: they
                // were lost with no later frame to reveal the gap. Replay them.
                self.replay_due = true;
                self.probe_only = false;
            }
        }
        if !ack && !self.replay.is_empty() && !self.nak_held_off(now, seq_ack) {
            self.stats.naks_received += 1;
            self.last_nak = Some((seq_ack, now));
            self.replay_due = true;
            self.probe_only = false;
            self.recovering = false;
        }
        substantive
    }

    /// Folds a round-trip sample into the smoothed estimate and the timeout (RFC 6298).
    fn update_rtt(&mut self, rtt: Duration) {
        let (srtt, rttvar) = match self.srtt {
            None => (rtt, rtt / 2),
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                ((srtt * 7 + rtt) / 8, (self.rttvar * 3 + diff) / 4)
            }
        };
        self.srtt = Some(srtt);
        self.rttvar = rttvar;
        self.base_rto =
            (srtt + rttvar * 4).clamp(self.cfg.retransmit_timeout, self.cfg.max_retransmit_timeout);
    }

    /// The current smoothed round-trip time, if any sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Repeated NAKs for the same point within a quarter timeout are one request.
    fn nak_held_off(&self, now: Instant, seq_ack: Seq) -> bool {
        matches!(self.last_nak, Some((s, t)) if s == seq_ack && now.saturating_duration_since(t) < self.rto / 4)
    }
}

/// Adapts a per-frame sink to the batch sink of the `poll_transmit_batch` methods, for callers
/// that take frames one at a time as contiguous bytes (a frame in several parts is gathered).
pub(crate) fn one_by_one<'a>(out: &'a mut dyn FnMut(&[u8])) -> impl FnMut(&[&[&[u8]]]) + 'a {
    let mut gathered = Vec::new();
    move |frames| {
        for parts in frames {
            if let [whole] = parts {
                out(whole);
            } else {
                gathered.clear();
                for p in *parts {
                    gathered.extend_from_slice(p);
                }
                out(&gathered);
            }
        }
    }
}

/// Stands in for external bytes a source cannot supply (never expected: see
/// [`MessageSource::external`]), so the frame keeps its length and framing.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Appends the parts of `f` as it goes on the wire: its buffer cut at each external payload,
/// with the payload's bytes from `src` in between.
fn frame_parts<'a>(f: &'a TxFrame, src: &'a dyn MessageSource, parts: &mut Vec<&'a [u8]>) {
    let mut pos = 0;
    for e in &f.external {
        parts.push(f.buf.get(pos..e.at).unwrap_or_default());
        let bytes = src
            .external(e.key, e.len)
            .filter(|b| b.len() == e.len)
            .unwrap_or_else(|| {
                debug_assert!(false, "external payload {:#x} missing", e.key);
                &ZEROS[..e.len.min(ZEROS.len())]
            });
        parts.push(bytes);
        pos = e.at;
    }
    parts.push(f.buf.get(pos..).unwrap_or_default());
}

// Transmit side.
impl Link {
    /// Emits up to `budget` frames through `out`: replays first, then new frames carrying
    /// `src`'s messages, credits and acknowledgements, then an ACK_only if one is due. A
    /// replay is always emitted whole. Returns how many frames were emitted.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        src: &mut dyn MessageSource,
        budget: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> usize {
        self.poll_transmit_batch(now, src, budget, &mut one_by_one(out))
    }

    /// [`Link::poll_transmit`], handing every frame of this turn to `out` at once, borrowed
    /// from the link's own buffers (the replay buffer) and, for external payloads
    /// ([`FrameBuilder::push_external`]), from `src`: each frame is the list of its parts, so a
    /// transport can send them all with one `sendmmsg` and no copy. `out` is not called when
    /// there is nothing to send.
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        src: &mut dyn MessageSource,
        budget: usize,
        out: &mut crate::link::FrameBatchSink<'_>,
    ) -> usize {
        if self.state != State::Open {
            return 0;
        }
        self.check_timer(now);
        let mut sent = 0;
        let old = self.replay.len();
        let mut replayed = 0;
        if self.replay_due {
            replayed = self.replay_all(now);
            sent += replayed;
        }
        while sent < budget && self.replay.len() < self.cfg.window {
            let Some(frame) = self.next_frame(now, src) else {
                break;
            };
            if self.replay.is_empty() {
                self.rto_deadline = Some(now + self.rto);
            }
            self.replay.push_back(frame);
            self.stats.frames_sent += 1;
            sent += 1;
        }
        let ack_only = sent < budget && self.ack_due(now) && self.build_ack_only();
        if ack_only {
            sent += 1;
        }
        if sent > 0 {
            let src: &dyn MessageSource = src;
            let mut parts: Vec<&[u8]> = Vec::with_capacity(sent);
            let mut ends = Vec::with_capacity(sent);
            for f in self
                .replay
                .range(..replayed)
                .chain(self.replay.range(old..))
            {
                frame_parts(f, src, &mut parts);
                ends.push(parts.len());
            }
            if ack_only {
                parts.push(&self.ack_buf);
                ends.push(parts.len());
            }
            let mut frames: Vec<&[&[u8]]> = Vec::with_capacity(ends.len());
            let mut start = 0;
            for end in ends {
                frames.push(&parts[start..end]);
                start = end;
            }
            out(&frames);
        }
        sent
    }

    fn check_timer(&mut self, now: Instant) {
        if matches!(self.rto_deadline, Some(d) if d <= now) && !self.replay.is_empty() {
            self.stats.timeouts += 1;
            // Like TCP's retransmission timeout, send only the oldest frame: if the frames
            // arrived and only their acknowledgement is late (a peer kept off the CPU), the
            // duplicate draws an immediate ACK and nothing else is resent; a Go-Back-N replay
            // of the whole window here turns scheduling noise into a replay storm. (With the
            // C driver's peers, which acknowledge loosely, everything is replayed as before.)
            self.replay_due = true;
            let probe = !self.cfg.compat.tolerant_receive;
            self.probe_only = probe;
            self.recovering = probe;
            tracing::debug!(
                peer = %self.cfg.peer,
                unacked = self.replay.len(),
                oldest = self.replay.front().map_or(0, |f| f.seq.get()),
                late_by_us = now.saturating_duration_since(self.last_progress).as_micros(),
                rto_ms = self.rto.as_millis(),
                "retransmission timeout"
            );
            self.rto = (self.rto * 2).min(self.cfg.max_retransmit_timeout);
        }
    }

    /// Marks the frames of the replay buffer for sending again (with a fresh ACK field): all
    /// of them, or only the oldest for a timeout's probe. Returns how many.
    fn replay_all(&mut self, now: Instant) -> usize {
        self.replay_due = false;
        let limit = if std::mem::take(&mut self.probe_only) {
            1
        } else {
            usize::MAX
        };
        let (seq_ack, ack) = self.ack_fields();
        let mut n = 0;
        for f in self.replay.iter_mut().take(limit) {
            f.replayed = true;
            patch_ack(&mut f.buf, seq_ack, ack);
            n += 1;
        }
        self.stats.frames_replayed += n as u64;
        self.rto_deadline = (!self.replay.is_empty()).then(|| now + self.rto);
        if n > 0 {
            self.ack_sent();
        }
        n
    }

    fn ack_fields(&self) -> (Seq, bool) {
        if self.cfg.compat.tolerant_receive {
            (self.rx_highest.unwrap_or(Seq::MAX), true)
        } else {
            (self.next_rx.prev(), !self.nak_pending)
        }
    }

    fn ack_due(&self, now: Instant) -> bool {
        self.ack_pending && matches!(self.ack_deadline, Some(d) if d <= now)
    }

    fn ack_sent(&mut self) {
        if self.nak_pending {
            self.nak_pending = false;
            self.nak_sent = true;
            self.stats.naks_sent += 1;
        }
        self.ack_pending = false;
        self.ack_justified = false;
        self.ack_deadline = None;
        self.unacked_rx = 0;
    }

    /// Builds the next frame to send, or `None` if there is nothing worth a sequence number.
    fn next_frame(&mut self, now: Instant, src: &mut dyn MessageSource) -> Option<TxFrame> {
        let msg_type = match self.open_step {
            0 => MessageType::Open,
            _ if self.close_requested && !self.close_sent && !src.has_pending() => {
                MessageType::Close
            }
            _ if self.close_sent => return None,
            _ => MessageType::Normal,
        };
        let (seq_ack, ack) = self.ack_fields();
        let ack = ack && msg_type != MessageType::Open;
        let mut header = TloeHeader::new(msg_type, self.next_tx, seq_ack, ack);
        let (mut buf, mut external) = self.pool.pop().unwrap_or_default();
        let mut b = FrameBuilder::with_external(
            &mut buf,
            &mut external,
            &self.eth,
            &header,
            self.cfg.max_frame_len,
        );
        if msg_type == MessageType::Normal && self.open_step == 2 {
            src.fill(&mut b, &mut self.tx_credits);
        }
        for (ch, n) in Channel::ALL.iter().zip(src.take_released()) {
            self.rx_credits
                .consumed(*ch, usize::try_from(n).unwrap_or(usize::MAX));
        }
        let has_messages = b.message_count() > 0;
        let ack_frame = self.ack_due(now) && (self.rx_credits.pending() || self.empty_ack_wanted());
        let wanted = has_messages
            || msg_type != MessageType::Normal
            || self.open_step == 1
            || self.rx_credits.urgent()
            || ack_frame;
        if !wanted {
            self.pool.push((buf, external));
            return None;
        }
        let grant = match self.open_step {
            0 if self.cfg.compat.c_open => Some((1, 20)),
            1 => Some((4, 20)),
            _ => self.rx_credits.take_grant(),
        };
        if let Some((chan, credit)) = grant {
            header.chan = chan;
            header.credit = credit;
            b.set_header(&header);
        }
        b.finish(self.cfg.min_flits);
        self.open_step = match self.open_step {
            0 if self.cfg.compat.c_open => 1,
            _ => 2,
        };
        self.close_sent |= msg_type == MessageType::Close;
        let pure_ack = !has_messages && grant.is_none() && msg_type == MessageType::Normal;
        let frame = TxFrame {
            seq: self.next_tx,
            buf,
            external,
            pure_ack,
            sent_at: now,
            replayed: false,
        };
        self.next_tx = self.next_tx.next();
        self.ack_sent();
        Some(frame)
    }

    /// In C mode, whether an acknowledgement deserves an empty Normal frame of its own.
    fn empty_ack_wanted(&self) -> bool {
        self.cfg.compat.empty_normal_acks && self.ack_justified
    }

    /// Builds an ACK_only frame in `ack_buf`; false if none is to be sent (C mode).
    fn build_ack_only(&mut self) -> bool {
        if self.cfg.compat.empty_normal_acks {
            // The C driver has no ACK_only; an unjustified ack is simply not sent.
            self.ack_sent();
            return false;
        }
        let (seq_ack, ack) = self.ack_fields();
        let header = TloeHeader::new(MessageType::AckOnly, self.next_tx, seq_ack, ack);
        FrameBuilder::new(
            &mut self.ack_buf,
            &self.eth,
            &header,
            self.cfg.max_frame_len,
        )
        .finish(self.cfg.min_flits);
        self.stats.ack_only_sent += 1;
        self.ack_sent();
        true
    }

    /// Starts the transmit sequence at `seq` (tests of wrap-around).
    #[cfg(test)]
    pub(crate) fn set_next_tx(&mut self, seq: Seq) {
        self.next_tx = seq;
        self.acked = seq.prev();
    }

    /// Starts the receive sequence at `seq` (tests of wrap-around).
    #[cfg(test)]
    pub(crate) fn set_next_rx(&mut self, seq: Seq) {
        self.next_rx = seq;
    }

    /// The sequence number the next new frame will carry (for tests and diagnostics).
    pub fn next_tx_seq(&self) -> Seq {
        self.next_tx
    }

    /// The sequence number of the oldest frame awaiting acknowledgement.
    pub fn oldest_unacked(&self) -> Option<Seq> {
        self.replay.front().map(|f| f.seq)
    }
}

/// Rewrites the seq_ack field and the Ack bit of a stored frame before it is replayed.
fn patch_ack(buf: &mut [u8], seq_ack: Seq, ack: bool) {
    let at = ETHERNET_HEADER_LEN;
    if let Some(word) = buf.get_mut(at..at + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let mut v = u64::from_be_bytes(w);
        v &= !(((1u64 << 23) - 1) << 9);
        v |= (u64::from(seq_ack.get()) << 10) | (u64::from(ack) << 9);
        word.copy_from_slice(&v.to_be_bytes());
    }
}
