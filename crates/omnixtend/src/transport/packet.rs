//! AF_PACKET raw socket bound to one interface and EtherType 0xAAAA, batched with
//! `sendmmsg`/`recvmmsg`.

use super::sys::{wait_readable, EventFd};
use super::{Transport, Waker};
use crate::wire::{MacAddr, ETHERTYPE_OMNIXTEND};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Socket buffer size: 32 MiB holds about 2000 jumbo frames, so a receiving thread that the
/// scheduler keeps off the CPU for tens of milliseconds does not cost dropped frames (and a
/// retransmission timeout). Memory is only used while frames are queued.
const SOCKET_BUFFER: libc::c_int = 32 << 20;
/// Frames per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;
const BATCH_U32: libc::c_uint = 64;
/// Bytes per frame buffer: a jumbo frame with room to spare.
const FRAME_BUF: usize = 16 * 1024;

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    mac: MacAddr,
    mtu: usize,
    wake: Arc<EventFd>,
    tx: Vec<Vec<u8>>,
    tx_len: Vec<usize>,
    tx_count: usize,
    rx: Vec<Vec<u8>>,
    busy_poll: Duration,
    ifindex: i32,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: passes a pointer to a live c_int and its exact size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), len) })
        .map(|_| ())
}

/// An `ifreq` naming `ifname`, or an error if the name is too long.
fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    Ok(req)
}

impl PacketSocket {
    /// Opens a socket on `ifname` (needs CAP_NET_RAW).
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL")
        })?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("no network interface {ifname:?}: {e}"),
            ));
        }
        let proto = ETHERTYPE_OMNIXTEND.to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open a raw socket (needs root or CAP_NET_RAW): {e}"),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before we fill it in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::sa_family_t::try_from(libc::AF_PACKET).unwrap_or_default();
        sll.sll_protocol = proto;
        sll.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(20);
        // SAFETY: binds to a fully initialised sockaddr_ll of the stated length.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) })?;
        for (opt, force) in [
            (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
            (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
        ] {
            if setsockopt_int(&fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                setsockopt_int(&fd, libc::SOL_SOCKET, opt, SOCKET_BUFFER)?;
            }
        }
        // Skipping the qdisc is only an optimisation; older kernels lack it.
        let _ = setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        let (mac, mtu) = interface_info(&fd, ifname)?;
        Ok(PacketSocket {
            fd,
            mac,
            mtu,
            wake: EventFd::new()?,
            tx: vec![vec![0; FRAME_BUF]; BATCH],
            tx_len: vec![0; BATCH],
            tx_count: 0,
            rx: vec![vec![0; FRAME_BUF]; BATCH],
            busy_poll: Duration::ZERO,
            ifindex: sll.sll_ifindex,
        })
    }

    /// Before sleeping in `recv`, keep polling the socket for up to `d`: fewer sleeps and
    /// wake-ups under steady traffic, at the cost of some CPU. Zero (the default) disables it.
    pub fn set_busy_poll(&mut self, d: Duration) {
        self.busy_poll = d;
    }

    /// Puts the interface in promiscuous mode for as long as this socket lives, so frames to a
    /// MAC address other than the interface's own (a node answering as `--mac`) get through
    /// the NIC's filter.
    pub fn set_promiscuous(&mut self) -> io::Result<()> {
        let mreq = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: u16::try_from(libc::PACKET_MR_PROMISC).unwrap_or_default(),
            mr_alen: 0,
            mr_address: [0; 8],
        };
        let len = libc::socklen_t::try_from(size_of::<libc::packet_mreq>()).unwrap_or(16);
        // SAFETY: passes a pointer to a live packet_mreq and its exact size.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&raw const mreq).cast(),
                len,
            )
        })
        .map(|_| ())
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The interface's MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Sends frames with `sendmmsg`, at most `BATCH` per call: frame `i` is the next
    /// `parts[i]` iovecs of `iovs`. Frames the interface cannot take are dropped, as a busy
    /// NIC would; the link layer retransmits them.
    fn send_iovecs(&mut self, iovs: &mut [libc::iovec], parts: &[usize]) -> io::Result<()> {
        let mut first_iov = Vec::with_capacity(parts.len());
        let mut at = 0;
        for &n in parts {
            first_iov.push(at);
            at += n;
        }
        if at > iovs.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame parts exceed the iovecs given",
            ));
        }
        let mut start = 0;
        while start < parts.len() {
            let count = (parts.len() - start).min(BATCH);
            // SAFETY: plain old data, filled in below.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, m) in msgs.iter_mut().enumerate().take(count) {
                m.msg_hdr.msg_iov = iovs[first_iov[start + i]..].as_mut_ptr();
                m.msg_hdr.msg_iovlen = parts[start + i];
            }
            // SAFETY: the first `count` headers point at live iovecs (checked above to lie
            // within `iovs`) over buffers of the stated lengths that outlive the call (the
            // caller's frames or our tx buffers); the bound socket supplies the destination.
            let ret = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    libc::c_uint::try_from(count).unwrap_or(BATCH_U32),
                    0,
                )
            };
            if ret < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // A full device queue drops the rest of the batch, as a busy NIC would;
                    // the link layer retransmits.
                    io::ErrorKind::WouldBlock => break,
                    // An interface that is down (or a full device queue) loses frames, as a
                    // cable pulled out would; the link replays them once it is back.
                    _ if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::ENETDOWN | libc::ENXIO | libc::ENODEV)
                    ) =>
                    {
                        tracing::debug!(error = %e, "frames dropped by the interface");
                        break;
                    }
                    _ => return Err(e),
                }
            }
            start += usize::try_from(ret).unwrap_or(0).max(1);
        }
        Ok(())
    }

    /// One `recvmmsg`: returns (frames read, frames delivered).
    fn recv_batch(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<(usize, usize)> {
        // SAFETY: these are plain old data arrays filled in below before use.
        let mut addrs: [libc::sockaddr_ll; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: self.rx[i].as_mut_ptr().cast(),
                iov_len: FRAME_BUF,
            };
            msgs[i].msg_hdr.msg_iov = &raw mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
            msgs[i].msg_hdr.msg_namelen =
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(20);
        }
        // SAFETY: every mmsghdr points at a live iovec over a live FRAME_BUF-byte buffer and
        // a live sockaddr_ll, all of which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH_U32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // ENETDOWN is reported once when the interface goes down: not fatal, the link
            // replays what was lost once it is back up.
            let transient = e.kind() == io::ErrorKind::WouldBlock
                || matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::EINTR));
            return if transient { Ok((0, 0)) } else { Err(e) };
        }
        let n = usize::try_from(n).unwrap_or(0);
        let mut delivered = 0;
        for i in 0..n {
            let outgoing = addrs[i].sll_pkttype == libc::PACKET_OUTGOING;
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = msgs[i].msg_len as usize;
            if !outgoing && !truncated {
                on_frame(&self.rx[i][..len.min(FRAME_BUF)]);
                delivered += 1;
            }
        }
        Ok((n, delivered))
    }
}

impl PacketSocket {
    /// Frames the kernel dropped because this socket's receive buffer was full, since the
    /// last call (the kernel resets the counter when read).
    pub fn take_drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats is plain old data; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(size_of::<libc::tpacket_stats>()).unwrap_or(8);
        // SAFETY: passes a live tpacket_stats and its exact size for the kernel to fill.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut st).cast(),
                &raw mut len,
            )
        })?;
        Ok(u64::from(st.tp_drops))
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        if let Ok(n) = self.take_drops() {
            if n > 0 {
                tracing::info!(
                    frames = n,
                    "the kernel dropped received frames: the socket's receive buffer was full"
                );
            }
        }
    }
}

/// Reads the MAC address and MTU of `ifname`.
fn interface_info(fd: &OwnedFd, ifname: &str) -> io::Result<(MacAddr, usize)> {
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass, which is live and correctly sized.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) })?;
    // SAFETY: the kernel just filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = b.to_ne_bytes()[0];
    }
    let mut req = ifreq(ifname)?;
    // SAFETY: as above, for SIOCGIFMTU.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) })?;
    // SAFETY: the kernel just filled the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok((MacAddr(mac), usize::try_from(mtu).unwrap_or(1500)))
}

impl Transport for PacketSocket {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > FRAME_BUF {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame larger than the transport's buffers",
            ));
        }
        if self.tx_count == BATCH {
            self.flush()?;
        }
        self.tx[self.tx_count][..frame.len()].copy_from_slice(frame);
        self.tx_len[self.tx_count] = frame.len();
        self.tx_count += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let count = self.tx_count;
        self.tx_count = 0;
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        for (iov, (buf, &len)) in iovs
            .iter_mut()
            .zip(self.tx.iter_mut().zip(&self.tx_len))
            .take(count)
        {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            };
        }
        self.send_iovecs(&mut iovs[..count], &[1; BATCH][..count])
    }

    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        self.flush()?;
        for chunk in frames.chunks(BATCH) {
            if let Some(f) = chunk.iter().find(|f| f.len() > FRAME_BUF) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "frame of {} bytes larger than the transport's buffers",
                        f.len()
                    ),
                ));
            }
            let mut iovs = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH];
            for (iov, f) in iovs.iter_mut().zip(chunk) {
                // sendmmsg only reads through iov_base; the pointer is mutable by type only.
                *iov = libc::iovec {
                    iov_base: f.as_ptr().cast_mut().cast(),
                    iov_len: f.len(),
                };
            }
            self.send_iovecs(&mut iovs[..chunk.len()], &[1; BATCH][..chunk.len()])?;
        }
        Ok(())
    }

    fn send_vectored_batch(&mut self, frames: &[&[&[u8]]]) -> io::Result<()> {
        self.flush()?;
        let mut iovs = Vec::with_capacity(frames.iter().map(|f| f.len()).sum());
        let mut parts = Vec::with_capacity(frames.len());
        for frame in frames {
            let len: usize = frame.iter().map(|p| p.len()).sum();
            if len > FRAME_BUF {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("frame of {len} bytes larger than the transport's buffers"),
                ));
            }
            // sendmmsg only reads through iov_base; the pointer is mutable by type only.
            iovs.extend(frame.iter().map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            }));
            parts.push(frame.len());
        }
        self.send_iovecs(&mut iovs, &parts)
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let (mut read, mut total) = self.recv_batch(on_frame)?;
        if read == 0 && !self.busy_poll.is_zero() && timeout != Some(Duration::ZERO) {
            let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
            let start = std::time::Instant::now();
            while read == 0 && start.elapsed() < spin {
                std::hint::spin_loop();
                (read, total) = self.recv_batch(on_frame)?;
            }
        }
        if read == 0 {
            if !wait_readable(self.fd.as_raw_fd(), &self.wake, timeout)? {
                return Ok(0);
            }
            (read, total) = self.recv_batch(on_frame)?;
        }
        // Drain a few more batches that are already waiting.
        for _ in 0..3 {
            if read < BATCH {
                break;
            }
            let (r, n) = self.recv_batch(on_frame)?;
            read = r;
            total += n;
        }
        Ok(total)
    }

    fn waker(&self) -> Waker {
        let w = self.wake.clone();
        Waker::new(move || w.wake())
    }
}
