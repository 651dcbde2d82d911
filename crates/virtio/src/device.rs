//! The contract between a transport (virtio-mmio, vhost-user) and a device model.
//!
//! The transport owns the negotiation: it checks that the driver's features are a subset of
//! the device's, that `VIRTIO_F_VERSION_1` is among them, and asks the device to validate
//! its own dependencies before it sets `FEATURES_OK`. At `DRIVER_OK` it hands the device the
//! guest memory, an [`Interrupt`], and each queue with the eventfd the driver's notifications
//! arrive on, so the device serves them on its own threads, never on a vCPU thread.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::queue::Queue;

/// Device status bits (VIRTIO 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Transport feature bits every oxio queue supports, to be offered by devices that want them.
pub mod features {
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u64 = 1 << 32;
    /// `VIRTIO_F_ACCESS_PLATFORM`.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// `VIRTIO_F_RING_PACKED`.
    pub const RING_PACKED: u64 = 1 << 34;
    /// `VIRTIO_F_IN_ORDER`.
    pub const IN_ORDER: u64 = 1 << 35;
    /// `VIRTIO_F_NOTIFICATION_DATA`.
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    /// The ring features the engine implements, all at once.
    pub const RING_ALL: u64 = INDIRECT_DESC | EVENT_IDX | VERSION_1 | RING_PACKED | IN_ORDER;
}

/// Device-level failures a transport reports to the driver.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver's feature set is not acceptable.
    #[error("Feature set {0:#x} is not acceptable")]
    FeaturesRejected(u64),
    /// A queue the device needs is missing or not ready.
    #[error("Queue {0} is missing or not ready")]
    QueueNotReady(u16),
    /// A queue's layout is invalid for this guest memory.
    #[error("Queue {index} cannot be activated")]
    Queue {
        /// Which queue.
        index: u16,
        /// Why.
        #[source]
        source: crate::queue::QueueError,
    },
    /// Starting the device's workers failed.
    #[error("Cannot start the device")]
    Activate(#[source] std::io::Error),
}

/// One queue handed to a device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index.
    pub index: u16,
    /// The queue, with negotiated features, addresses and size set.
    pub queue: Queue,
    /// Becomes readable when the driver notifies this queue.
    pub kick: EventFd,
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Device type (VIRTIO 1.2 §5: 1 net, 2 block, 3 console, 19 vsock, 26 fs, ...).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// All features offered, device-specific and transport ones (see [`features`]).
    fn device_features(&self) -> u64;

    /// Checks the driver's features at `FEATURES_OK`, after the transport checked that they
    /// are a subset of the offered ones and include `VERSION_1`. An error makes the
    /// transport leave `FEATURES_OK` clear, which tells the driver to give up.
    fn set_features(&mut self, features: u64) -> Result<(), DeviceError> {
        let _ = features;
        Ok(())
    }

    /// Reads the device configuration space. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space (most devices ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// A counter the device bumps whenever its configuration changes on its own, so the
    /// driver can read multi-field configs consistently (§4.2.2 `ConfigGeneration`).
    fn config_generation(&self) -> u32 {
        0
    }

    /// Starts serving the queues (at `DRIVER_OK`).
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError>;

    /// Stops serving: finishes the requests in flight (their completions reach the used
    /// ring), returns each queue's index and final state (vhost-user `GET_VRING_BASE` reports
    /// its `next_avail`; a restarted backend resumes from it), and returns to the state
    /// before negotiation. Returns nothing if the device was not active.
    fn reset(&mut self) -> Vec<(u16, crate::queue::QueueState)>;
}

/// The checks every transport makes on the driver's features before asking the device.
pub fn check_driver_features(offered: u64, driver: u64) -> Result<(), DeviceError> {
    if driver & !offered != 0 || driver & features::VERSION_1 == 0 {
        return Err(DeviceError::FeaturesRejected(driver));
    }
    Ok(())
}
