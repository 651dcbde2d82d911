//! OmniXtend: TileLink over Ethernet, a pipelined requester and a software memory node.

pub mod link;
pub mod wire;
