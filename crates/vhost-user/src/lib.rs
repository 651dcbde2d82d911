//! A vhost-user backend daemon that serves any [`oxio_virtio::VirtioDevice`] to a VMM.
//!
//! The `vhost` crate speaks the protocol (message framing, fd passing, REPLY_ACK); this crate
//! turns the frontend's requests into the calls a device model expects, the way
//! `oxio_virtio::mmio` does for virtio-mmio registers:
//!
//! - [`memory::MemoryTable`]: `SET_MEM_TABLE` regions (memfd + offset) mapped into a
//!   `vm-memory` map, with the VMM-address to guest-address translation vring addresses need.
//! - [`backend::Backend`]: feature and protocol-feature negotiation, vring set-up, config
//!   space, and the rule that decides when the device runs: every vring that has a kick fd and
//!   addresses must be enabled, then the device is activated with those queues. Any change to
//!   the running set (a vring stopped by `GET_VRING_BASE`, a new memory table, a new kick fd)
//!   stops the device, keeps each queue's indices, and starts it again.
//! - [`interrupt::CallFds`]: call eventfds the frontend may swap while the device runs (QEMU
//!   does when the guest masks an MSI-X vector).
//! - [`inflight::InflightFile`]: the `INFLIGHT_SHMFD` region (one log slice per queue) that
//!   lets a restarted daemon resubmit the requests its predecessor never completed.
//! - [`daemon::Daemon`]: the listening socket, one frontend at a time, reconnection, and a
//!   graceful [`daemon::Shutdown`].

#![deny(missing_docs)]

pub mod backend;
pub mod daemon;
pub mod inflight;
pub mod interrupt;
pub mod memory;

pub use backend::Backend;
pub use daemon::{Daemon, DaemonError, Shutdown};
