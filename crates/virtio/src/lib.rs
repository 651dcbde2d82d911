//! VirtIO device emulation for oxio.
//!
//! - [`GuestMemory`]: guest RAM on `vm-memory`, many regions, with fast checked translation.
//! - [`Queue`]: the virtqueue engine, one API over split and packed rings, with indirect
//!   descriptors, notification suppression both ways, batched used publishing, `IN_ORDER`
//!   and save/restore. Devices read and write chains through [`Reader`] and [`Writer`].
//! - [`VirtioDevice`] and [`Interrupt`]: what a device implements and how it signals the
//!   driver; [`mmio::MmioTransport`] drives any device through virtio-mmio registers.
//! - With the `test-utils` feature, [`mock`] provides a driver-side model of both layouts.
//!
//! Nothing the guest writes can make this crate panic, loop without bound or touch memory
//! outside guest RAM: see the rules in [`queue`].

#![deny(missing_docs)]

pub mod blk;
pub mod device;
pub mod interrupt;
pub mod memory;
pub mod mmio;
pub mod queue;

#[cfg(any(test, feature = "test-utils"))]
pub mod mock;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing_blk;

pub use device::{DeviceError, VirtioDevice};
pub use interrupt::{EventFdInterrupt, Interrupt};
pub use memory::{GuestMemory, MemoryError};
pub use queue::{
    ChainError, DescriptorChain, Queue, QueueError, QueueState, QueueStats, Reader, RingAddresses,
    RingFeatures, Writer,
};
