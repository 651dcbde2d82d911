//! [`Notifier`]: the eventfd a queue signals when completions arrive asynchronously.

use std::os::fd::{AsRawFd, BorrowedFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{BlockError, Result};

/// A non-blocking eventfd. Producers [`signal`](Notifier::signal); the queue's owner clears it
/// with [`clear`](Notifier::clear) before collecting completions so no wake-up is lost.
#[derive(Debug)]
pub struct Notifier {
    fd: EventFd,
}

impl Notifier {
    /// A fresh, unsignalled notifier.
    pub fn new() -> Result<Self> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| BlockError::io("create an eventfd", e))?;
        Ok(Notifier { fd })
    }

    /// Makes the fd readable (wakes a waiter).
    pub fn signal(&self) {
        // Only fails if the counter would overflow, in which case it is readable anyway.
        let _ = self.fd.write(1);
    }

    /// Resets the fd to unreadable. Returns whether it was signalled.
    pub fn clear(&self) -> bool {
        self.fd.read().is_ok()
    }

    /// Blocks the calling thread until the fd is readable or `timeout_ms` passes (-1 waits
    /// forever). Used by [`BlockingQueue`](crate::BlockingQueue).
    pub fn wait(&self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }

    /// Another handle to the same eventfd, for a producer thread or an io_uring registration.
    pub fn try_clone(&self) -> Result<Notifier> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| BlockError::io("duplicate an eventfd", e))?;
        Ok(Notifier { fd })
    }

    /// The fd, for `poll`/epoll/tokio `AsyncFd` registration.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.fd` and stays open for the borrow's
        // lifetime, which is tied to `&self`.
        unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_then_clear() {
        let n = Notifier::new().unwrap();
        assert!(!n.clear());
        n.try_clone().unwrap().signal();
        n.wait(1000);
        assert!(n.clear());
        assert!(!n.clear());
    }
}
