//! [`Transport`]: the byte streams a connection can be served on.
//!
//! Why a trait beyond `AsyncRead + AsyncWrite`: tokio's `AsyncRead` has no vectored read, and
//! a WRITE payload received straight into a RAM backend's storage spans one slice per 64 KiB
//! chunk. Sockets override [`Transport::poll_read_vectored`] with one `readv`; other streams
//! (in-memory pipes, test doubles) fill the first slice.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream the NBD server can serve a connection on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Reads into `bufs` in order; `Ok(0)` means end of stream. The default reads into the
    /// first non-empty buffer only.
    fn poll_read_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter_mut().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let mut rb = ReadBuf::new(first);
        Pin::new(self)
            .poll_read(cx, &mut rb)
            .map_ok(|()| rb.filled().len())
    }

    /// The stream's non-blocking socket, when it has one: the server may then poll it with
    /// plain `readv` calls before waiting for readiness (see `BusyPoll`).
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

macro_rules! socket_transport {
    ($t:ty) => {
        impl Transport for $t {
            fn poll_read_vectored(
                &mut self,
                cx: &mut Context<'_>,
                bufs: &mut [IoSliceMut<'_>],
            ) -> Poll<io::Result<usize>> {
                loop {
                    ready!(self.poll_read_ready(cx))?;
                    match self.try_read_vectored(bufs) {
                        // Readiness was stale; `try_read_vectored` cleared it, so poll again.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        r => return Poll::Ready(r),
                    }
                }
            }

            fn raw_fd(&self) -> Option<RawFd> {
                Some(self.as_raw_fd())
            }
        }
    };
}

socket_transport!(tokio::net::UnixStream);
socket_transport!(tokio::net::TcpStream);

impl Transport for tokio::io::DuplexStream {}
