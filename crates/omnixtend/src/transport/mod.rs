//! Transports move whole Ethernet frames (FCS excluded) between a link and its peer.
//!
//! - [`packet::PacketSocket`]: an AF_PACKET raw socket bound to an interface and EtherType
//!   0xAAAA, with batched `sendmmsg`/`recvmmsg`.
//! - [`udp::UdpTransport`]: TLoE frames (with their Ethernet header, which names the peers)
//!   carried in UDP datagrams, for unprivileged use and across IP networks.
//! - [`mem::MemTransport`]: an in-memory pair with a deterministic, seeded
//!   [`FaultInjector`](fault::FaultInjector) (loss, duplication, reordering, delay, and
//!   corruption modelled as the drop an Ethernet FCS check would make).

pub mod fault;
pub mod mem;
pub mod packet;
mod sys;
pub mod udp;

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Interrupts a transport blocked in [`Transport::recv`] (from any thread).
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn() + Send + Sync>);

impl Waker {
    /// A waker calling `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Waker {
        Waker(Arc::new(f))
    }

    /// Wakes the transport.
    pub fn wake(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// Moves frames. Implementations batch: `send` may queue until `flush`, and `recv` drains
/// every frame already waiting after the first arrives.
pub trait Transport: Send {
    /// Queues one frame for sending (it may go out at once).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Sends every queued frame.
    fn flush(&mut self) -> io::Result<()>;
    /// Queues several frames (after any queued before); a transport that can send from the
    /// caller's buffers sends them at once, with no copy. `flush` is still needed after.
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for f in frames {
            self.send(f)?;
        }
        Ok(())
    }
    /// [`Transport::send_batch`] for frames given as lists of parts (a frame is its parts
    /// concatenated), as [`crate::link::Link::poll_transmit_batch`] hands them out: a transport
    /// that can gather sends each frame from its parts with no copy; the default gathers each
    /// frame into one buffer first. `flush` is still needed after.
    fn send_vectored_batch(&mut self, frames: &[&[&[u8]]]) -> io::Result<()> {
        let mut whole = Vec::new();
        for parts in frames {
            if let [one] = parts {
                self.send(one)?;
            } else {
                whole.clear();
                for p in *parts {
                    whole.extend_from_slice(p);
                }
                self.send(&whole)?;
            }
        }
        Ok(())
    }
    /// Waits up to `timeout` (None = until woken) for frames and hands each to `on_frame`.
    /// Returns how many were received; 0 on timeout or wake-up.
    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize>;
    /// A handle that interrupts `recv`.
    fn waker(&self) -> Waker;
}
