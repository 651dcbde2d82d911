//! OmniXtend: TileLink over Ethernet, a pipelined requester and a software memory node.

pub mod endpoint;
pub mod link;
pub mod requester;
pub mod transport;
pub mod wire;
