//! Call eventfds that the frontend may replace while the device runs.
//!
//! QEMU sends `SET_VRING_CALL` again with another eventfd whenever the guest masks or unmasks
//! a queue's MSI-X vector, without stopping the vring. Restarting the device for that would
//! be slow and racy, so the device signals through this table, whose entries can be swapped
//! under a lock that devices take for reading only (uncontended, so cheap).

use std::io;
use std::sync::RwLock;

use oxio_virtio::Interrupt;
use vmm_sys_util::eventfd::EventFd;

/// One optional call eventfd per queue. A queue without one is in polling mode (the
/// frontend sent the "no fd" flag), and signals for it are dropped.
#[derive(Debug)]
pub struct CallFds {
    calls: Vec<RwLock<Option<EventFd>>>,
    config: EventFd,
}

impl CallFds {
    /// A table for `num_queues` queues, all without call fds.
    pub fn new(num_queues: usize) -> io::Result<Self> {
        Ok(Self {
            calls: (0..num_queues).map(|_| RwLock::new(None)).collect(),
            // Config changes would go over the backend request channel, which we do not
            // negotiate; the eventfd keeps `signal_config` harmless.
            config: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Installs (or removes) the call fd of `queue`. Returns false for a bad index.
    pub fn set(&self, queue: usize, fd: Option<EventFd>) -> bool {
        let Some(slot) = self.calls.get(queue) else {
            return false;
        };
        *slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fd;
        true
    }

    /// Drops every call fd (the frontend went away).
    pub fn clear(&self) {
        for i in 0..self.calls.len() {
            self.set(i, None);
        }
    }

    /// Whether `queue` has a call fd.
    pub fn has(&self, queue: usize) -> bool {
        self.calls.get(queue).is_some_and(|s| {
            s.read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some()
        })
    }
}

impl Interrupt for CallFds {
    fn signal_used(&self, queue: u16) -> io::Result<()> {
        let slot = self
            .calls
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such queue"))?;
        match &*slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }

    fn signal_config(&self) -> io::Result<()> {
        self.config.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_the_current_fd_only() {
        let calls = CallFds::new(2).unwrap();
        calls.signal_used(0).unwrap(); // polling mode: dropped
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(calls.set(0, Some(a.try_clone().unwrap())));
        calls.signal_used(0).unwrap();
        assert!(calls.set(0, Some(b.try_clone().unwrap())));
        calls.signal_used(0).unwrap();
        calls.signal_used(0).unwrap();
        assert_eq!(a.read().unwrap(), 1);
        assert_eq!(b.read().unwrap(), 2);
        assert!(calls.signal_used(2).is_err());
        assert!(!calls.set(2, None));
        assert!(calls.has(0) && !calls.has(1));
        calls.clear();
        assert!(!calls.has(0));
    }
}
