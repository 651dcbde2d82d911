//! The TLoE link: one reliable, flow-controlled connection to one peer.
//!
//! [`Link`] is a state machine with no I/O and no clock of its own: the caller hands it
//! received frames ([`Link::receive`]), asks it for frames to send ([`Link::poll_transmit`])
//! and tells it the time. That lets tests drive loss, duplication and reordering
//! deterministically, and the same code runs over AF_PACKET, UDP or an in-memory pair.
//!
//! What it implements (omnixtend.md §3):
//! - 22-bit sequence numbers compared modulo 2^22; every Normal, Open and Close frame consumes
//!   one; ACK_only frames carry the next number without consuming it.
//! - Cumulative ACK and NAK piggy-backed on every frame; delayed ACKs as ACK_only frames
//!   (never sent in answer to an ACK_only frame).
//! - A Go-Back-N replay buffer: frames are kept until acknowledged and replayed with their
//!   original sequence numbers on a NAK or when the retransmission timer fires (with
//!   exponential back-off).
//! - Credits per channel both ways: the peer's grants bound what we send (128 flits per
//!   channel until grants arrive, as in OmniXtend 1.1); we grant our receive window at open and
//!   return credits as messages are consumed, as 2^k chunks, one channel per frame.
//! - A compatibility mode for the C driver `oxmem-nbd` and its memory node ([`Compat`]).

mod credits;
mod state;
#[cfg(test)]
mod tests;

pub use credits::{RxCredits, TxCredits};
pub(crate) use state::one_by_one;
pub use state::{Link, LinkStats, MessageSink, MessageSource, Received};

use crate::wire::{MacAddr, WireError};
use std::time::Duration;

/// Takes one transmit turn's frames, each as the list of its parts (a frame is its parts
/// concatenated: the link's buffer with any external payloads in between), for a transport's
/// [`send_vectored_batch`](crate::transport::Transport::send_vectored_batch).
pub type FrameBatchSink<'a> = dyn FnMut(&[&[&[u8]]]) + 'a;

/// Implicit credits each side holds per channel before any grant (OmniXtend 1.1).
pub const DEFAULT_INITIAL_CREDITS: u64 = 128;

/// Departures from the specification, for interoperating with the C driver and its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compat {
    /// Acknowledge with empty Normal frames that consume a sequence number (the C driver,
    /// and 1.0.3 hardware) instead of ACK_only frames. An empty frame is only sent in answer
    /// to a frame that acknowledged something other than such an empty frame, which breaks
    /// the C driver's endless ping-pong with its memory node (omnixtend.md §4.4 item 6).
    pub empty_normal_acks: bool,
    /// Accept frames out of order and with gaps (the C driver re-issues lost requests in new
    /// frames with new sequence numbers), dropping only exact duplicates. Never NAK.
    pub tolerant_receive: bool,
    /// Open exactly as the C driver does: Open (ack 0, chan A, credit 20), then a Normal
    /// frame granting 2^20 on channel D; afterwards only consumed D flits are returned.
    pub c_open: bool,
    /// Ignore the peer's credit grants (the C driver's memory node under-counts them).
    pub ignore_peer_credits: bool,
}

impl Compat {
    /// The specification (with the 1.1 message types): no departures.
    pub const SPEC: Compat = Compat {
        empty_normal_acks: false,
        tolerant_receive: false,
        c_open: false,
        ignore_peer_credits: false,
    };
    /// A requester that emits the C driver's frames byte for byte (omnixtend.md §7) and copes
    /// with its memory node, which ignores NAKs and never replays.
    pub const C_DRIVER: Compat = Compat {
        empty_normal_acks: true,
        tolerant_receive: true,
        c_open: true,
        ignore_peer_credits: true,
    };
    /// An endpoint serving the C driver: tolerant receive, peer credits ignored.
    pub const C_PEER: Compat = Compat {
        empty_normal_acks: false,
        tolerant_receive: true,
        c_open: false,
        ignore_peer_credits: true,
    };
}

/// Configuration of one link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Our MAC address.
    pub local: MacAddr,
    /// The peer's MAC address.
    pub peer: MacAddr,
    /// Largest frame we send, FCS excluded (14 + MTU).
    pub max_frame_len: usize,
    /// Frames are padded to at least this many flits after the TLoE header (5 gives the
    /// C driver's 70-byte minimum; 4 the specification's 62 bytes).
    pub min_flits: usize,
    /// Most frames awaiting acknowledgement (the replay buffer), below 2^21.
    pub window: usize,
    /// Initial retransmission timeout; doubled on each expiry without progress.
    pub retransmit_timeout: Duration,
    /// Upper bound for the backed-off retransmission timeout.
    pub max_retransmit_timeout: Duration,
    /// Longest an acknowledgement waits for a frame to ride on before an ACK_only goes out.
    pub ack_delay: Duration,
    /// Credits (flits) we grant the peer per channel A..E; 0 = we do not receive on it.
    pub rx_window: [u64; 5],
    /// Credits the peer holds per channel before its first grant (and we before ours).
    pub initial_credits: u64,
    /// Departures for the C driver.
    pub compat: Compat,
}

impl LinkConfig {
    /// Defaults for a link between `local` and `peer` at a 1500-byte MTU.
    pub fn new(local: MacAddr, peer: MacAddr) -> LinkConfig {
        LinkConfig {
            local,
            peer,
            max_frame_len: 1514,
            min_flits: 5,
            window: 512,
            retransmit_timeout: Duration::from_millis(10),
            max_retransmit_timeout: Duration::from_millis(500),
            ack_delay: Duration::from_micros(50),
            rx_window: [0; 5],
            initial_credits: DEFAULT_INITIAL_CREDITS,
            compat: Compat::SPEC,
        }
    }

    /// Sets the MTU (frame payload bytes, as `ip link` reports it).
    pub fn with_mtu(mut self, mtu: usize) -> LinkConfig {
        self.max_frame_len = mtu + crate::wire::ETHERNET_HEADER_LEN;
        self
    }
}

/// Why the link rejected a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The frame is malformed.
    #[error("Malformed frame")]
    Malformed(#[source] WireError),
    /// The frame is not from our peer or not to us.
    #[error("Frame from {0} is not for this link")]
    WrongPeer(MacAddr),
    /// The frame is not an Open and the link is not open.
    #[error("Frame arrived on a link that is not open")]
    NotOpen,
}

impl From<WireError> for LinkError {
    fn from(e: WireError) -> Self {
        LinkError::Malformed(e)
    }
}
