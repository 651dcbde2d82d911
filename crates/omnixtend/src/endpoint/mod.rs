//! A software OmniXtend memory node: serves a memory region to several peers (by MAC).
//!
//! [`EndpointCore`] is the I/O-free state machine (one [`Link`](crate::link::Link) per
//! peer); [`serve`] runs it over any [`Transport`](crate::transport::Transport).
//!
//! Requests: Get, PutFullData, PutPartialData, ArithmeticData, LogicalData (up to 8 bytes) and
//! Intent are executed; misaligned, out-of-range or oversized requests are answered with
//! denied set (and corrupt for AccessAckData). Acquire is answered with a denied Grant: the
//! node offers no coherent caching. A Get whose AccessAckData would not fit a frame is
//! answered with a denied AccessAck, since a denied AccessAckData must still carry its data.
//!
//! Large read responses are sent straight from the memory region (no copy into the frame),
//! with the bytes first served kept for replays if a write changes them (`lent`).

mod handler;
mod lent;
mod memory;
mod node;

pub use handler::HandlerStats;
pub use memory::{Memory, MemoryError};
pub use node::{serve, serve_with, EndpointConfig, EndpointCore, EndpointStats};
