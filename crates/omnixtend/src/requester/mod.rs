//! The pipelined requester: the client the block backend uses.
//!
//! [`RequesterCore`] is the I/O-free state machine; [`Requester`] runs it on its own thread
//! over any [`Transport`](crate::transport::Transport) and offers a thread-safe handle:
//! completion callbacks ([`Requester::submit_read`], [`Requester::submit_write`]) and blocking
//! [`Requester::read_at`] / [`Requester::write_at`] that pipeline under the hood.
//!
//! - Any (offset, length) is split into aligned power-of-two transfers up to what the MTU
//!   allows (1 KiB at 1500 bytes, 8 KiB at 9000); unaligned edges use PutPartialData (writes)
//!   or a Get of the containing flit (reads).
//! - Many transfers are in flight; source IDs come from a slot table, reused round-robin with
//!   a generation in the high bits so a late duplicate response cannot complete a newer
//!   request.
//! - Gets (and small Puts) are packed into frames while they fit: coalescing.
//! - Denied or corrupt responses, responses of the wrong kind and timeouts fail the request
//!   with an [`IoError`]. When the link makes no progress for `reconnect_after`, the requester
//!   reopens the connection and re-issues every transfer in flight (all are idempotent).
//!
//! ```
//! use oxio_omnixtend::endpoint::{serve, EndpointConfig, EndpointCore, Memory};
//! use oxio_omnixtend::requester::{Requester, RequesterConfig};
//! use oxio_omnixtend::transport::{fault::Faults, mem};
//! use oxio_omnixtend::wire::MacAddr;
//! use std::sync::{atomic::AtomicBool, Arc};
//! use std::time::Duration;
//!
//! // A memory node on one end of an in-memory wire (AF_PACKET or UDP work the same way).
//! let (near, mut far) = mem::pair(Faults::NONE, Faults::NONE, 1);
//! let (node_mac, our_mac) = (MacAddr::local(2), MacAddr::local(1));
//! let stop = Arc::new(AtomicBool::new(false));
//! let s = stop.clone();
//! let node = std::thread::spawn(move || {
//!     let mem = Memory::anonymous(1 << 20, 0).unwrap();
//!     let mut core = EndpointCore::new(EndpointConfig::new(node_mac), mem);
//!     serve(&mut core, &mut far, &s).unwrap();
//! });
//!
//! let cfg = RequesterConfig::new(our_mac, node_mac, 1 << 20);
//! let req = Requester::connect(cfg, Box::new(near), Duration::from_secs(5)).unwrap();
//! req.write_at(1000, b"remote memory").unwrap(); // any offset and length
//! let mut back = [0u8; 13];
//! req.read_at(1000, &mut back).unwrap();
//! assert_eq!(&back, b"remote memory");
//! req.submit_read(0, vec![0; 4096], |r| assert_eq!(r.unwrap().len(), 4096));
//! req.shutdown(); // finishes what is in flight, then closes
//! stop.store(true, std::sync::atomic::Ordering::Relaxed);
//! node.join().unwrap();
//! ```

mod core;
mod handle;
mod plan;

pub use self::core::{Completion, OpKind, RequesterCore, RequesterStats};
pub use handle::Requester;
pub use plan::{Planner, Txn, TxnKind};

use crate::link::{Compat, LinkConfig};
use crate::wire::tilelink::MAX_SIZE;
use crate::wire::{LaneOrder, MacAddr, FLIT};
use std::time::Duration;

/// Configuration of a requester.
#[derive(Debug, Clone)]
pub struct RequesterConfig {
    /// Link settings (MACs, MTU, compatibility, timers).
    pub link: LinkConfig,
    /// Data lane order; must match the memory image the endpoint should hold.
    pub lane_order: LaneOrder,
    /// Bus address of offset 0.
    pub base: u64,
    /// Bytes addressable from `base`.
    pub size: u64,
    /// Most transfers in flight (source IDs in use).
    pub max_inflight: usize,
    /// A transfer unanswered for this long fails its request with `TimedOut`.
    pub request_timeout: Duration,
    /// Re-issue an unanswered transfer after this long (the C driver's recovery, for memory
    /// nodes that never replay); None = rely on the link's replay.
    pub reissue_after: Option<Duration>,
    /// Reopen the connection when the link has made no progress for this long.
    pub reconnect_after: Duration,
}

impl RequesterConfig {
    /// Defaults for a requester at `local` talking to the node at `peer`.
    pub fn new(local: MacAddr, peer: MacAddr, size: u64) -> RequesterConfig {
        let mut link = LinkConfig::new(local, peer);
        link.rx_window = [0, 1 << 16, 0, 1 << 20, 0];
        RequesterConfig {
            link,
            lane_order: LaneOrder::Raw,
            base: 0,
            size,
            max_inflight: 512,
            request_timeout: Duration::from_secs(10),
            reissue_after: None,
            reconnect_after: Duration::from_secs(1),
        }
    }

    /// Sets the MTU of the path (frame payload bytes).
    pub fn with_mtu(mut self, mtu: usize) -> RequesterConfig {
        self.link = self.link.with_mtu(mtu);
        self
    }

    /// Behaves like the C driver on the wire (omnixtend.md §7): its open sequence, empty
    /// Normal acks, tolerant receive, and re-issue after 100 ms.
    pub fn c_compatible(mut self) -> RequesterConfig {
        self.link.compat = Compat::C_DRIVER;
        self.reissue_after = Some(Duration::from_millis(100));
        self
    }

    /// Largest transfer (log2 bytes) whose PutFullData fits one frame (and whose
    /// AccessAckData fits the node's frame at the same MTU).
    pub fn max_size(&self) -> u8 {
        let flits = self
            .link
            .max_frame_len
            .saturating_sub(crate::wire::tloe::MIN_PARSE_LEN)
            / FLIT;
        (3..=MAX_SIZE)
            .rev()
            .find(|&n| 2 + (1usize << n) / FLIT <= flits)
            .unwrap_or(3)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The range is outside the memory the requester was configured with.
    #[error("Access at offset {offset} of {len} bytes is outside the {size}-byte remote memory")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Configured size.
        size: u64,
    },
    /// The endpoint denied a transfer (misaligned, out of its range, or unsupported).
    #[error("The memory node denied the access at bus address {addr:#x}")]
    Denied {
        /// Bus address of the transfer.
        addr: u64,
    },
    /// The endpoint flagged the data corrupt.
    #[error("The memory node returned corrupt data at bus address {addr:#x}")]
    Corrupt {
        /// Bus address of the transfer.
        addr: u64,
    },
    /// The response did not match the request (wrong opcode or size).
    #[error("The memory node answered the access at bus address {addr:#x} with the wrong message")]
    BadResponse {
        /// Bus address of the transfer.
        addr: u64,
    },
    /// No response within the request timeout.
    #[error("The memory node did not answer within {0:?}; check that it is running and reachable")]
    TimedOut(Duration),
    /// The requester is shutting down or its I/O thread stopped.
    #[error("The requester is shut down")]
    Shutdown,
    /// The transport failed.
    #[error("Transport failed: {0}")]
    Transport(String),
}
