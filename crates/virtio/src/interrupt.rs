//! How a device tells the driver that used buffers or the configuration changed.
//!
//! Devices call [`Interrupt`] once per published batch at most (see
//! [`Queue::publish_used`](crate::Queue::publish_used)). The transport decides what a signal
//! is: an eventfd a VMM turned into an irqfd, a vhost-user call fd, or virtio-mmio's
//! interrupt-status bits plus an eventfd.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Signals from a device to the driver.
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    /// The device published used buffers on `queue`.
    fn signal_used(&self, queue: u16) -> io::Result<()>;
    /// The device's configuration space changed.
    fn signal_config(&self) -> io::Result<()>;
}

/// One eventfd per queue plus one for configuration changes (vhost-user call fds, or KVM
/// irqfds in a VMM).
#[derive(Debug)]
pub struct EventFdInterrupt {
    queues: Vec<EventFd>,
    config: EventFd,
}

impl EventFdInterrupt {
    /// Uses the given eventfds.
    pub fn new(queues: Vec<EventFd>, config: EventFd) -> Self {
        Self { queues, config }
    }

    /// Creates `num_queues` fresh non-blocking eventfds plus the config one.
    pub fn with_new_eventfds(num_queues: usize) -> io::Result<Self> {
        let queues = (0..num_queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            queues,
            config: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd of `queue`, to hand to a VMM or a frontend.
    pub fn queue_eventfd(&self, queue: u16) -> Option<&EventFd> {
        self.queues.get(usize::from(queue))
    }

    /// The configuration-change eventfd.
    pub fn config_eventfd(&self) -> &EventFd {
        &self.config
    }
}

impl Interrupt for EventFdInterrupt {
    fn signal_used(&self, queue: u16) -> io::Result<()> {
        self.queues
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such queue"))?
            .write(1)
    }

    fn signal_config(&self) -> io::Result<()> {
        self.config.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfds_count_signals() {
        let irq = EventFdInterrupt::with_new_eventfds(2).unwrap();
        irq.signal_used(1).unwrap();
        irq.signal_used(1).unwrap();
        irq.signal_config().unwrap();
        assert_eq!(irq.queue_eventfd(1).unwrap().read().unwrap(), 2);
        assert!(
            irq.queue_eventfd(0).unwrap().read().is_err(),
            "nothing signalled: EAGAIN"
        );
        assert_eq!(irq.config_eventfd().read().unwrap(), 1);
        assert!(irq.signal_used(2).is_err());
    }
}
