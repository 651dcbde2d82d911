//! The NBD server: fixed-newstyle negotiation ([`negotiate`]), the transmission phase
//! ([`serve_transmission`]), listeners and connection management ([`Server`], [`Listener`]).
//!
//! ```text
//!  accept ──> negotiate(options) ──GO/EXPORT_NAME──> serve_transmission ──DISC/EOF──> close
//!                                                         │  many requests in flight, out-of-order
//!                                                         ▼  replies, one BlockQueue per connection
//!                                                    Export ──> Arc<dyn BlockBackend>
//! ```
//!
//! The kernel attach path (`crate::kernel`) skips negotiation: it calls
//! [`serve_transmission_blocking`] (or [`serve_transmission`]) on its end of a socketpair with
//! [`TransmissionMode::simple`] and the flags from [`Export::transmission_flags`].

mod block_status;
mod busy_poll;
mod export;
mod handshake;
mod listener;
mod outbox;
mod shards;
mod shutdown;
mod stats;
mod transmission;
mod transport;
mod validate;

use std::io;

pub use export::{Export, ExportSet, TransmissionMode};
pub use handshake::{negotiate, Negotiated, HANDSHAKE_TIMEOUT};
pub use listener::{listeners_from_systemd, Listener, Server, DEFAULT_MAX_CONNECTIONS};
pub use shards::ShardRuntimes;
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use stats::{ConnStats, ExportStats, StatsSnapshot};
pub use transmission::{serve_transmission, serve_transmission_blocking, MAX_IN_FLIGHT};
pub use transport::Transport;

use crate::wire::WireError;

/// Why a connection or the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket failed.
    #[error("Socket I/O failed while {0}")]
    Io(&'static str, #[source] io::Error),
    /// The peer broke a MUST of the protocol; the connection was closed.
    #[error("The client violated the protocol: {0}")]
    Protocol(String),
    /// A message could not be parsed; the stream is out of sync, so the connection closed.
    #[error("Malformed message from the client")]
    Wire(#[from] WireError),
    /// The client took too long to negotiate.
    #[error("The client did not finish negotiating within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The backend could not open a queue for the connection.
    #[error("The block backend failed")]
    Backend(#[from] oxio_block::BlockError),
    /// A listener could not be set up.
    #[error("Cannot listen on {0}")]
    Listen(String, #[source] io::Error),
}

/// Result alias for the server.
pub type Result<T> = std::result::Result<T, ServerError>;
