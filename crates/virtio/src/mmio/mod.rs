//! The virtio-mmio transport, version 2 (VIRTIO 1.2 §4.2), for VMMs that embed oxio devices.
//!
//! The VMM forwards its MMIO exits for the device's register window to [`MmioTransport::read`]
//! and [`MmioTransport::write`], and wires [`MmioTransport::irq_eventfd`] to the device's
//! interrupt line (an irqfd). Queue notifications become writes to per-queue eventfds, so the
//! device serves its queues on its own threads; a VMM may register those eventfds as
//! ioeventfds ([`MmioTransport::kick_eventfd`]) to skip the exit altogether.

mod regs;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::device::{check_driver_features, features, status, ActiveQueue, VirtioDevice};
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::queue::{NotificationData, Queue, RingAddresses, RingFeatures};
pub use regs::*;

/// `InterruptStatus` bit: used buffers.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: configuration change.
pub const INT_CONFIG: u32 = 2;

/// The interrupt a virtio-mmio device raises: status bits plus an eventfd for the line.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used(&self, _queue: u16) -> io::Result<()> {
        self.raise(INT_VRING)
    }

    fn signal_config(&self) -> io::Result<()> {
        self.raise(INT_CONFIG)
    }
}

/// A device behind virtio-mmio registers.
#[derive(Debug)]
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
}

impl<D: VirtioDevice + std::fmt::Debug> MmioTransport<D> {
    /// Puts `device` behind registers, serving buffers in `mem`.
    pub fn new(device: D, mem: GuestMemory) -> io::Result<Self> {
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m))
            .collect();
        let kicks = (0..queues.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let interrupt = Arc::new(MmioInterrupt {
            status: AtomicU32::new(0),
            irq: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        Ok(Self {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            kicks,
        })
    }

    /// The eventfd that is written when the device raises its interrupt.
    pub fn irq_eventfd(&self) -> &EventFd {
        &self.interrupt.irq
    }

    /// The eventfd that receives notifications for `queue` (usable as an ioeventfd).
    pub fn kick_eventfd(&self, queue: u16) -> Option<&EventFd> {
        self.kicks.get(usize::from(queue))
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        let sel = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(sel)
    }

    /// Handles a read of `data.len()` bytes at `offset` in the register window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        let value = if data.len() == 4 {
            self.read_reg(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let features = self.device.device_features();
        let half = |sel: u32, v: u64| match sel {
            0 => (v & 0xffff_ffff) as u32, // low half
            1 => (v >> 32) as u32,         // high half; fits after the shift
            _ => 0,
        };
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => half(self.device_features_sel, features),
            QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            STATUS => self.status,
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.device.config_generation(),
            _ => 0,
        }
    }

    /// Handles a write of `data` at `offset` in the register window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "ignoring non-32-bit virtio-mmio register write"
            );
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let queue_setup =
            self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NOTIFY => self.notify(v),
            INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            STATUS => self.set_status(v),
            _ if queue_setup => self.write_queue_reg(offset, v),
            _ => tracing::debug!(
                offset,
                v,
                "ignoring virtio-mmio register write in this state"
            ),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        let Some(q) = self.selected() else { return };
        if q.ready() && offset != QUEUE_READY {
            return; // §4.2.2.2: queue registers are read-only while the queue is ready.
        }
        let mut a = q.addresses();
        let set_low = |x: &mut u64| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_high = |x: &mut u64| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            QUEUE_NUM => q.set_size(u16::try_from(v).unwrap_or(0)),
            QUEUE_READY => q.set_ready(v == 1),
            QUEUE_DESC_LOW => set_low(&mut a.desc),
            QUEUE_DESC_HIGH => set_high(&mut a.desc),
            QUEUE_DRIVER_LOW => set_low(&mut a.driver),
            QUEUE_DRIVER_HIGH => set_high(&mut a.driver),
            QUEUE_DEVICE_LOW => set_low(&mut a.device),
            QUEUE_DEVICE_HIGH => set_high(&mut a.device),
            _ => return,
        }
        if a != q.addresses() {
            q.set_addresses(RingAddresses { ..a });
        }
    }

    fn notify(&mut self, v: u32) {
        let data = self.driver_features & features::NOTIFICATION_DATA != 0;
        let n = NotificationData::decode(v, data);
        if self.status & status::DRIVER_OK == 0 {
            return;
        }
        if let Some(kick) = self.kicks.get(usize::from(n.queue)) {
            if let Err(e) = kick.write(1) {
                tracing::warn!(queue = n.queue, error = %e, "cannot forward queue notification");
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let added = v & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let ok = check_driver_features(offered, self.driver_features)
                .and_then(|()| self.device.set_features(self.driver_features));
            if let Err(e) = ok {
                tracing::warn!(error = %e, "refusing the driver's features");
                self.status = v & !status::FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && v & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ring_features = RingFeatures::from_bits(self.driver_features);
        let mut active = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            let Ok(index) = u16::try_from(i) else { break };
            q.set_features(ring_features);
            let kick = match self.kicks.get(i).map(EventFd::try_clone) {
                Some(Ok(k)) => k,
                _ => continue,
            };
            let mut queue = Queue::new(q.max_size());
            if queue.restore(q.state()).is_err() {
                continue;
            }
            if let Err(e) = queue.activate(&self.mem) {
                tracing::warn!(index, error = %e, "queue cannot be activated");
                return self.needs_reset();
            }
            active.push(ActiveQueue { index, queue, kick });
        }
        let irq: Arc<dyn Interrupt> = self.interrupt.clone();
        if let Err(e) = self.device.activate(self.mem.clone(), irq, active) {
            tracing::warn!(error = %e, "device activation failed");
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.raise(INT_CONFIG) {
            tracing::warn!(error = %e, "cannot raise the config interrupt");
        }
    }

    fn reset(&mut self) {
        let _ = self.device.reset();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
