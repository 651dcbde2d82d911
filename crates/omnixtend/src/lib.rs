//! OmniXtend: TileLink over Ethernet, a pipelined requester and a software memory node.

pub mod endpoint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod link;
pub mod requester;
mod slots;
pub mod transport;
pub mod wire;
