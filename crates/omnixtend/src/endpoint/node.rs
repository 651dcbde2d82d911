//! The memory node: peers, their links, request execution, and the serving loop.

use super::handler::{Executor, HandlerStats, Responder, Responses};
use super::lent::Lent;
use super::memory::Memory;
use crate::link::{Compat, Link, LinkConfig, LinkStats, Received};
use crate::transport::Transport;
use crate::wire::tilelink::MAX_SIZE;
use crate::wire::{EthernetFrame, Frame, LaneOrder, MacAddr, MessageType, FLIT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Configuration of a memory node.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The node's MAC address.
    pub mac: MacAddr,
    /// Data lane order (raw = the C driver's memory node, the default).
    pub lane_order: LaneOrder,
    /// Link behaviour; `Compat::C_PEER` tolerates the C driver.
    pub compat: Compat,
    /// Frame payload size (MTU).
    pub mtu: usize,
    /// Padding minimum in flits (5 = 70-byte frames like the C driver's peers).
    pub min_flits: usize,
    /// Channel A credits granted to each peer (flits). The default, 2^20 flits (8 MiB), lets
    /// a requester keep 1000 PutFullData of 8 KiB in flight: requests are executed on arrival,
    /// and credits come back one power of two per frame, so a window of only a few dozen
    /// large Puts starves the requester once AccessAcks are coalesced into few frames.
    pub rx_window: u64,
    /// Most peers served at once.
    pub max_peers: usize,
    /// An Open from a connected peer within this time of its previous Open is taken as a
    /// duplicate; after it, as a restarted peer (the connection is reset).
    pub reopen_guard: Duration,
    /// A peer that sends nothing for this long is forgotten (it reopens to come back).
    pub idle_timeout: Duration,
    /// Initial retransmission timeout.
    pub retransmit_timeout: Duration,
    /// Delayed-ACK bound.
    pub ack_delay: Duration,
}

impl EndpointConfig {
    /// Defaults for a node with MAC `mac` at a 1500-byte MTU.
    pub fn new(mac: MacAddr) -> EndpointConfig {
        EndpointConfig {
            mac,
            lane_order: LaneOrder::Raw,
            compat: Compat::SPEC,
            mtu: 1500,
            min_flits: 5,
            rx_window: 1 << 20,
            max_peers: 64,
            reopen_guard: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(600),
            retransmit_timeout: Duration::from_millis(10),
            ack_delay: Duration::from_micros(50),
        }
    }

    fn link_config(&self, peer: MacAddr) -> LinkConfig {
        let mut c = LinkConfig::new(self.mac, peer).with_mtu(self.mtu);
        c.min_flits = self.min_flits;
        c.compat = self.compat;
        c.rx_window = [self.rx_window, 0, self.rx_window, 0, self.rx_window];
        c.retransmit_timeout = self.retransmit_timeout;
        c.ack_delay = self.ack_delay;
        c
    }

    /// Largest transfer (log2 bytes) whose AccessAckData fits one frame.
    fn max_size(&self) -> u8 {
        let flits = (self.mtu.saturating_sub(16)) / FLIT;
        (0..=MAX_SIZE)
            .rev()
            .find(|&n| (1usize << n).div_ceil(FLIT) < flits)
            .unwrap_or(0)
    }
}

/// Counters for the whole node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Peers currently connected.
    pub peers: usize,
    /// Connections opened (including resets by a restarted peer).
    pub connections: u64,
    /// Frames dropped: not for us, from unknown peers, or malformed.
    pub dropped: u64,
    /// Request counters.
    pub handler: HandlerStats,
    /// Link counters, summed over current peers.
    pub link: LinkStats,
}

#[derive(Debug)]
struct Peer {
    link: Link,
    responses: Responses,
    opened_at: Instant,
    /// Last frame accepted from this peer (idle peers are forgotten).
    last_rx: Instant,
}

/// The memory node state machine (no I/O).
#[derive(Debug)]
pub struct EndpointCore {
    cfg: EndpointConfig,
    mem: Memory,
    peers: HashMap<MacAddr, Peer>,
    /// Per peer, read payloads its unacknowledged frames send from `mem` (kept apart from
    /// `peers` because a write from one peer must check every peer's).
    lent: HashMap<MacAddr, Lent>,
    stats: EndpointStats,
    max_size: u8,
}

impl EndpointCore {
    /// A node serving `mem`.
    pub fn new(cfg: EndpointConfig, mem: Memory) -> EndpointCore {
        let max_size = cfg.max_size();
        EndpointCore {
            cfg,
            mem,
            peers: HashMap::new(),
            lent: HashMap::new(),
            stats: EndpointStats::default(),
            max_size,
        }
    }

    /// The memory served.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        let mut s = self.stats;
        s.peers = self.peers.len();
        for p in self.peers.values() {
            add_link_stats(&mut s.link, &p.link.stats());
        }
        s
    }

    /// Handles one received frame. Frames that are not for us, malformed, or from a peer with
    /// no connection (other than an Open) are counted and dropped.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) {
        if !self.try_receive(now, bytes) {
            self.stats.dropped += 1;
        }
    }

    fn try_receive(&mut self, now: Instant, bytes: &[u8]) -> bool {
        let Ok(frame) = Frame::new_checked(bytes) else {
            return false;
        };
        let Ok(header) = frame.header() else {
            return false;
        };
        let eth = EthernetFrame::new_unchecked(bytes);
        if eth.dst() != self.cfg.mac {
            return false;
        }
        let src = eth.src();
        if !self.peers.contains_key(&src) && !self.admit(now, src, header.msg_type) {
            return false;
        }
        for _ in 0..2 {
            let Some(peer) = self.peers.get_mut(&src) else {
                return false;
            };
            peer.last_rx = now;
            let mut exec = Executor {
                mem: &mut self.mem,
                lent: &mut self.lent,
                peer: src,
                order: self.cfg.lane_order,
                out: &mut peer.responses,
                stats: &mut self.stats.handler,
                max_size: self.max_size,
                cap_flits: 1 << 17,
            };
            match peer.link.receive(now, bytes, &mut exec) {
                Ok(Received::Reopen)
                    if now.saturating_duration_since(peer.opened_at) >= self.cfg.reopen_guard =>
                {
                    tracing::info!(peer = %src, "peer reopened its connection; resetting it");
                    peer.link.accept(now);
                    peer.responses = Responses::default();
                    self.lent.remove(&src);
                    peer.opened_at = now;
                    self.stats.connections += 1;
                }
                Ok(_) => {
                    if peer.link.peer_closed() {
                        peer.link.close();
                    }
                    return true;
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Makes room for a new peer by forgetting the one idle longest, if it has been idle for
    /// at least a second (so a flood of Opens cannot push out active peers).
    fn evict_idlest(&mut self, now: Instant) -> bool {
        let idlest = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.last_rx)
            .map(|(m, p)| (*m, p.last_rx));
        match idlest {
            Some((mac, last)) if now.saturating_duration_since(last) >= Duration::from_secs(1) => {
                tracing::info!(peer = %mac, "peer table full; forgetting the idlest peer");
                self.lent.remove(&mac);
                if let Some(p) = self.peers.remove(&mac) {
                    add_link_stats(&mut self.stats.link, &p.link.stats());
                }
                true
            }
            _ => false,
        }
    }

    fn admit(&mut self, now: Instant, src: MacAddr, msg_type: MessageType) -> bool {
        let opening = msg_type == MessageType::Open
            || (self.cfg.compat.tolerant_receive && msg_type != MessageType::AckOnly);
        if !opening {
            return false;
        }
        if self.peers.len() >= self.cfg.max_peers && !self.evict_idlest(now) {
            return false;
        }
        tracing::info!(peer = %src, "connection opened");
        let mut link = Link::new(self.cfg.link_config(src), now);
        link.accept(now);
        self.lent.remove(&src);
        self.peers.insert(
            src,
            Peer {
                link,
                responses: Responses::default(),
                opened_at: now,
                last_rx: now,
            },
        );
        self.stats.connections += 1;
        true
    }

    /// Emits frames for every peer (at most `budget` per peer); forgets closed peers.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        budget: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> usize {
        self.poll_transmit_batch(now, budget, &mut crate::link::one_by_one(out))
    }

    /// [`EndpointCore::poll_transmit`], handing each peer's frames to `out` at once, borrowed
    /// from its link's buffers (for a transport that sends them without a copy).
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        budget: usize,
        out: &mut crate::link::FrameBatchSink<'_>,
    ) -> usize {
        let mut sent = 0;
        for (mac, peer) in &mut self.peers {
            let mut src = Responder {
                mem: &self.mem,
                lent: self.lent.entry(*mac).or_default(),
                order: self.cfg.lane_order,
                out: &mut peer.responses,
            };
            sent += peer.link.poll_transmit_batch(now, &mut src, budget, out);
        }
        let idle_timeout = self.cfg.idle_timeout;
        let retired = &mut self.stats.link;
        let lent = &mut self.lent;
        self.peers.retain(|mac, p| {
            let done = p.link.peer_closed() && p.link.close_complete();
            let idle = now.saturating_duration_since(p.last_rx) >= idle_timeout;
            if done {
                tracing::info!(peer = %mac, "connection closed");
            } else if idle {
                tracing::info!(peer = %mac, "connection idle for {idle_timeout:?}; forgotten");
            }
            if done || idle {
                add_link_stats(retired, &p.link.stats());
                lent.remove(mac);
            }
            !done && !idle
        });
        sent
    }

    /// When `poll_transmit` must next run.
    pub fn poll_at(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.link.poll_at()).min()
    }
}

/// Adds one link's counters to a total (links of departed peers stay counted).
fn add_link_stats(total: &mut LinkStats, l: &LinkStats) {
    total.frames_sent += l.frames_sent;
    total.frames_replayed += l.frames_replayed;
    total.ack_only_sent += l.ack_only_sent;
    total.frames_accepted += l.frames_accepted;
    total.duplicates += l.duplicates;
    total.out_of_order += l.out_of_order;
    total.naks_sent += l.naks_sent;
    total.naks_received += l.naks_received;
    total.timeouts += l.timeouts;
    total.malformed += l.malformed;
    total.deferred += l.deferred;
}

impl EndpointCore {
    /// Whether no response is queued or awaiting acknowledgement (for a draining shutdown).
    pub fn drained(&self) -> bool {
        self.peers
            .values()
            .all(|p| p.responses.queue.is_empty() && p.link.in_flight() == 0)
    }
}

/// Frames sent per peer per turn of the serving loop.
const BATCH: usize = 64;

/// Serves `core` over `transport` until `stop` is set. Frames are received and sent in batches.
pub fn serve(
    core: &mut EndpointCore,
    transport: &mut dyn Transport,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    serve_with(core, transport, stop, &mut |_| ())
}

/// [`serve`], calling `tick` with the node about every 100 ms (for stats and progress).
pub fn serve_with(
    core: &mut EndpointCore,
    transport: &mut dyn Transport,
    stop: &AtomicBool,
    tick: &mut dyn FnMut(&EndpointCore),
) -> std::io::Result<()> {
    let mut next_tick = Instant::now();
    let mut drain_until: Option<Instant> = None;
    loop {
        // On stop, keep serving briefly so queued responses go out and are acknowledged.
        if stop.load(Ordering::Relaxed) {
            let until =
                *drain_until.get_or_insert_with(|| Instant::now() + Duration::from_millis(500));
            if core.drained() || Instant::now() >= until {
                break;
            }
        }
        if Instant::now() >= next_tick {
            tick(core);
            next_tick = Instant::now() + Duration::from_millis(100);
        }
        let now = Instant::now();
        let mut send_err = None;
        let sent = core.poll_transmit_batch(now, BATCH, &mut |frames| {
            if let Err(e) = transport.send_vectored_batch(frames) {
                send_err.get_or_insert(e);
            }
        });
        transport.flush()?;
        if let Some(e) = send_err {
            return Err(e);
        }
        // A full batch means more may be ready to go: only peek at the socket.
        let wait = if sent >= BATCH {
            Duration::ZERO
        } else {
            core.poll_at()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(now)
                })
                .min(Duration::from_millis(100))
        };
        // Frames handed over by one `recv` arrived together: one clock read serves them all.
        let mut at = None;
        transport.recv(Some(wait), &mut |f| {
            core.receive(*at.get_or_insert_with(Instant::now), f);
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetRepr, FrameBuilder, Seq, TloeHeader, ETHERTYPE_OMNIXTEND};

    fn open_from(mac: MacAddr, node: MacAddr) -> Vec<u8> {
        let eth = EthernetRepr {
            dst: node,
            src: mac,
            ethertype: ETHERTYPE_OMNIXTEND,
        };
        let h = TloeHeader::new(MessageType::Open, Seq::new(0), Seq::MAX, false);
        let mut buf = Vec::new();
        FrameBuilder::new(&mut buf, &eth, &h, 1514).finish(5);
        buf
    }

    #[test]
    fn a_full_peer_table_forgets_idle_peers_but_not_active_ones() {
        let node = MacAddr::local(1000);
        let mut cfg = EndpointConfig::new(node);
        cfg.max_peers = 2;
        let mut core = EndpointCore::new(cfg, Memory::anonymous(4096, 0).unwrap());
        let t0 = Instant::now();
        core.receive(t0, &open_from(MacAddr::local(1), node));
        core.receive(t0, &open_from(MacAddr::local(2), node));
        core.receive(t0, &open_from(MacAddr::local(3), node));
        assert_eq!(core.stats().peers, 2);
        assert_eq!(core.stats().dropped, 1, "active peers are not pushed out");
        core.receive(
            t0 + Duration::from_secs(2),
            &open_from(MacAddr::local(3), node),
        );
        assert_eq!(core.stats().peers, 2);
        assert_eq!(core.stats().connections, 3);
        // Peers idle past the idle timeout are forgotten.
        core.poll_transmit(t0 + Duration::from_secs(3600), 8, &mut |_| ());
        assert_eq!(core.stats().peers, 0);
    }

    #[test]
    fn frames_for_other_macs_and_from_unknown_peers_are_dropped() {
        let node = MacAddr::local(1000);
        let mut core = EndpointCore::new(
            EndpointConfig::new(node),
            Memory::anonymous(4096, 0).unwrap(),
        );
        let now = Instant::now();
        core.receive(now, &open_from(MacAddr::local(1), MacAddr::local(999)));
        let mut normal = open_from(MacAddr::local(1), node);
        normal[14] = 0; // a Normal frame before any Open
        core.receive(now, &normal);
        core.receive(now, &[0u8; 10]);
        assert_eq!(core.stats().dropped, 3);
        assert_eq!(core.stats().peers, 0);
    }
}
