//! TLoE frames in UDP datagrams: each datagram holds one whole frame, Ethernet header
//! included, so MAC addresses still name the link's ends. A node learns each peer's UDP
//! address from the frames it receives; a requester sends to a fixed address.

use super::sys::{wait_readable, EventFd};
use super::{Transport, Waker};
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Most peers whose UDP address is remembered.
const MAX_PEERS: usize = 4096;

/// A UDP socket carrying TLoE frames.
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
    peer: Option<SocketAddr>,
    learned: HashMap<MacAddr, SocketAddr>,
    wake: Arc<EventFd>,
    buf: Vec<u8>,
}

impl UdpTransport {
    /// Binds `local`; frames go to `peer` if given, else to the address each destination MAC
    /// was last heard from.
    pub fn bind(local: SocketAddr, peer: Option<SocketAddr>) -> io::Result<UdpTransport> {
        let sock = UdpSocket::bind(local)?;
        sock.set_nonblocking(true)?;
        Ok(UdpTransport {
            sock,
            peer,
            learned: HashMap::new(),
            wake: EventFd::new()?,
            buf: vec![0; 65536],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

fn mac_at(frame: &[u8], at: usize) -> Option<MacAddr> {
    let b = frame.get(at..at + 6)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    Some(MacAddr(m))
}

impl Transport for UdpTransport {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let to = mac_at(frame, 0)
            .and_then(|m| self.learned.get(&m).copied())
            .or(self.peer);
        let Some(to) = to else { return Ok(()) };
        match self.sock.send_to(frame, to) {
            Ok(_) => Ok(()),
            // A full socket buffer drops the frame, as a busy NIC would; the link retransmits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            // ICMP port unreachable from a peer that is not up yet.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let mut n = 0;
        let mut waited = false;
        while n < 256 {
            match self.sock.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    let frame = &self.buf[..len];
                    if let Some(src) = mac_at(frame, 6) {
                        if self.learned.len() < MAX_PEERS || self.learned.contains_key(&src) {
                            self.learned.insert(src, from);
                        }
                    }
                    on_frame(frame);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if n > 0
                        || waited
                        || !wait_readable(self.sock.as_raw_fd(), &self.wake, timeout)?
                    {
                        break;
                    }
                    waited = true;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn waker(&self) -> Waker {
        let w = self.wake.clone();
        Waker::new(move || w.wake())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_peers_are_learned() {
        let mut node = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let mut req = UdpTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(node.local_addr().unwrap()),
        )
        .unwrap();
        let mut frame = vec![0u8; 30];
        frame[..6].copy_from_slice(&[4, 0, 0, 0, 0, 0]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        req.send(&frame).unwrap();
        let mut got = Vec::new();
        node.recv(Some(Duration::from_secs(2)), &mut |f| got.push(f.to_vec()))
            .unwrap();
        assert_eq!(got, vec![frame.clone()]);
        // The node answers the MAC it learned.
        let mut reply = frame.clone();
        reply[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        reply[6..12].copy_from_slice(&[4, 0, 0, 0, 0, 0]);
        node.send(&reply).unwrap();
        let mut back = Vec::new();
        req.recv(Some(Duration::from_secs(2)), &mut |f| back.push(f.to_vec()))
            .unwrap();
        assert_eq!(back, vec![reply]);
    }
}
