//! A complete NBD server and Linux kernel NBD attach on top of `oxio-block`.
//!
//! - [`wire`]: the protocol's messages (handshake, options, requests, simple, structured and
//!   extended replies), parsed from untrusted bytes without panicking.
//! - [`server`]: fixed-newstyle negotiation with `GO`/`INFO`/`LIST`/`EXPORT_NAME`, structured
//!   replies, extended headers and `base:allocation`; a transmission phase with hundreds of
//!   requests in flight and out-of-order replies; TCP, Unix and systemd-activated listeners;
//!   graceful draining on `NBD_CMD_DISC` and shutdown.
//! - [`kernel`]: attaching an export to `/dev/nbdN` through the kernel's ioctl and netlink
//!   interfaces, serving the kernel's end of a socketpair with [`server::serve_transmission`].

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod kernel;
pub mod server;
pub mod wire;
