//! The virtio-blk device: configuration, feature negotiation, and one worker per queue.

use std::sync::Arc;
use std::thread::JoinHandle;

use oxio_block::{BlockBackend, Capabilities};
use vmm_sys_util::eventfd::EventFd;

use super::config::{offered_features, BlockConfig, ConfigSpace};
use super::request::Limits;
use super::worker::Worker;
use super::{features, ID_BYTES, SECTOR_SIZE};
use crate::device::{ActiveQueue, DeviceError, VirtioDevice};
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::queue::QueueState;

/// A virtio-blk device on a block backend.
#[derive(Debug)]
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    cfg: BlockConfig,
    caps: Capabilities,
    config: ConfigSpace,
    offered: u64,
    acked: u64,
    queue_sizes: Vec<u16>,
    workers: Vec<(EventFd, JoinHandle<(u16, QueueState)>)>,
}

impl Block {
    /// A device serving `backend` as configured.
    pub fn new(backend: Arc<dyn BlockBackend>, cfg: BlockConfig) -> Self {
        let caps = backend.capabilities();
        let config = ConfigSpace::new(&caps, &cfg);
        let offered = offered_features(&caps, &cfg);
        let queue_sizes = vec![cfg.queue_size; usize::from(cfg.num_queues.max(1))];
        Self {
            backend,
            cfg,
            caps,
            config,
            offered,
            acked: 0,
            queue_sizes,
            workers: Vec::new(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            capacity: self.caps.size / SECTOR_SIZE * SECTOR_SIZE,
            read_only: self.offered & features::RO != 0,
            discard: self.acked & features::DISCARD != 0,
            write_zeroes: self.acked & features::WRITE_ZEROES != 0,
            max_range_segments: self.cfg.max_range_segments,
            max_range_sectors: u32::try_from((1u64 << 30) / SECTOR_SIZE).unwrap_or(u32::MAX),
        }
    }

    fn serial(&self) -> [u8; ID_BYTES] {
        let mut s = [0u8; ID_BYTES];
        let b = self.cfg.serial.as_bytes();
        let n = b.len().min(ID_BYTES);
        s[..n].copy_from_slice(&b[..n]);
        s
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        2
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn set_features(&mut self, features: u64) -> Result<(), DeviceError> {
        self.acked = features;
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        let _ = self.stop_workers();
        for aq in queues {
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::Activate)?;
            let worker = self.worker(aq.index, aq.queue, aq.kick, &stop, interrupt.clone())?;
            let mem = mem.clone();
            let handle = std::thread::Builder::new()
                .name(format!("virtio-blk-q{}", aq.index))
                .spawn(move || worker.run(mem))
                .map_err(DeviceError::Activate)?;
            self.workers.push((stop, handle));
        }
        Ok(())
    }

    fn reset(&mut self) -> Vec<(u16, QueueState)> {
        let states = self.stop_workers();
        self.acked = 0;
        states
    }
}

impl Block {
    fn worker(
        &self,
        index: u16,
        queue: crate::queue::Queue,
        kick: EventFd,
        stop: &EventFd,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<Worker, DeviceError> {
        let depth = self.cfg.depth + self.cfg.max_range_segments as usize;
        let backend = self
            .backend
            .open_queue(depth)
            .map_err(|e| DeviceError::Activate(std::io::Error::other(e)))?;
        Ok(Worker {
            index,
            queue,
            kick,
            stop: stop.try_clone().map_err(DeviceError::Activate)?,
            interrupt,
            backend,
            limits: self.limits(),
            serial: self.serial(),
            depth: self.cfg.depth,
            flush: self.caps.flush,
            pool: Default::default(),
            iov: Vec::new(),
            tuning: super::worker::Tuning {
                poll_max: std::time::Duration::from_nanos(self.cfg.poll_max_ns),
                coalesce: std::time::Duration::from_nanos(self.cfg.coalesce_ns),
            },
            poll: std::time::Duration::ZERO,
            stats: Default::default(),
            idle_ticks: 0,
        })
    }

    /// One queue driven by the caller instead of a worker thread, with the same request
    /// handling: for benchmarks and fuzzing. Negotiate features first (`set_features`).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn direct_queue(&self, queue: crate::queue::Queue) -> Result<DirectQueue, DeviceError> {
        let fd = || EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::Activate);
        let irq = crate::interrupt::EventFdInterrupt::with_new_eventfds(1)
            .map_err(DeviceError::Activate)?;
        Ok(DirectQueue {
            worker: self.worker(0, queue, fd()?, &fd()?, Arc::new(irq))?,
        })
    }

    /// Stops the workers after they drain their requests in flight; returns queue states.
    fn stop_workers(&mut self) -> Vec<(u16, QueueState)> {
        for (stop, _) in &self.workers {
            if let Err(e) = stop.write(1) {
                tracing::warn!(error = %e, "cannot stop a virtio-blk worker");
            }
        }
        let mut states = Vec::new();
        for (_, handle) in self.workers.drain(..) {
            match handle.join() {
                Ok(state) => states.push(state),
                Err(_) => tracing::error!("a virtio-blk worker panicked"),
            }
        }
        states
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let _ = self.reset();
    }
}

/// See [`Block::direct_queue`].
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug)]
pub struct DirectQueue {
    worker: Worker,
}

#[cfg(any(test, feature = "test-utils"))]
impl DirectQueue {
    /// Serves every request available now and waits until the backend finished them; returns
    /// `false` once the queue is broken (the driver would have to reset it).
    pub fn run_until_idle(&mut self, mem: &GuestMemory) -> bool {
        self.worker.run_until_idle(mem)
    }

    /// The queue's counters.
    pub fn stats(&self) -> crate::queue::QueueStats {
        self.worker.queue.stats()
    }
}
