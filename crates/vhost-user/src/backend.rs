//! The vhost-user device state machine: what the frontend set up, and when the device runs.
//!
//! The frontend configures each vring piece by piece (size, base, addresses, kick and call
//! fds, enable) and may change any piece later. A device model, on the other hand, is
//! activated once with a set of ready queues and reset as a whole. [`Backend::refresh`]
//! bridges the two: the queues a device should run are those with a kick fd and addresses
//! that are enabled (or, without `VHOST_USER_F_PROTOCOL_FEATURES`, merely kicked); whenever
//! that set, the memory table or the features change, the device is stopped, each queue's
//! position is kept, and the device is started again with the new set.
//!
//! The requests themselves are dispatched by `handler`, which implements the `vhost`
//! crate's request trait on top of this type.

mod handler;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;

use oxio_virtio::device::{check_driver_features, features, ActiveQueue};
use oxio_virtio::{GuestMemory, Queue, RingAddresses, RingFeatures, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::inflight::{InflightFile, InflightFileError};
use crate::interrupt::CallFds;
use crate::memory::{MemoryTable, MemoryTableError};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a virtio feature bit that only means "this backend
/// speaks protocol features"; it never reaches the device.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Largest config space read or written in one message.
pub const MAX_CONFIG_SIZE: u32 = 256;

/// Errors from frontend requests. They become a NACK (or a dropped connection for requests
/// that must reply with data).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The vring index is out of range.
    #[error("Vring {0} does not exist")]
    NoSuchVring(u32),
    /// A vring size the device cannot take.
    #[error("Vring {index} cannot have {size} entries (maximum {max})")]
    BadSize {
        /// The vring.
        index: u32,
        /// Requested size.
        size: u32,
        /// The device's maximum.
        max: u16,
    },
    /// Features outside what was offered.
    #[error("Features {0:#x} were not offered")]
    Features(u64),
    /// A vring address is not in the memory table.
    #[error("Vring {index} address {addr:#x} is not in the memory table")]
    Address {
        /// The vring.
        index: u16,
        /// The VMM user address.
        addr: u64,
    },
    /// The memory table could not be mapped.
    #[error("Cannot map the memory table")]
    Memory(#[from] MemoryTableError),
    /// A kick fd is needed: polling mode is not supported.
    #[error("Vring {0} has no kick fd; polling mode is not supported")]
    NoKickFd(u8),
    /// A config access outside what one message can carry.
    #[error("Config access of {0} bytes is too large")]
    ConfigSize(u32),
    /// The request is not supported by this backend.
    #[error("Request {0} is not supported")]
    Unsupported(&'static str),
    /// An fd operation failed.
    #[error("File descriptor operation failed")]
    Io(#[from] std::io::Error),
    /// The inflight region could not be created or mapped.
    #[error(transparent)]
    Inflight(#[from] InflightFileError),
}

impl From<BackendError> for vhost::vhost_user::Error {
    fn from(e: BackendError) -> Self {
        vhost::vhost_user::Error::ReqHandlerError(std::io::Error::other(e))
    }
}

/// Where a vring resumes: the avail position, and the used position when it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Base {
    avail: (u16, bool),
    used: Option<(u16, bool)>,
}

impl Default for Base {
    fn default() -> Self {
        Self {
            avail: (0, true),
            used: None,
        }
    }
}

/// A vring's base: as the frontend sent it, or as the device reported it at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseSource {
    Sent(u32),
    Saved(Base),
}

impl Default for BaseSource {
    fn default() -> Self {
        Self::Saved(Base::default())
    }
}

impl BaseSource {
    fn decode(self, packed: bool) -> Base {
        let num = match self {
            Self::Saved(base) => return base,
            Self::Sent(num) => num,
        };
        let low = (num & 0xffff) as u16; // the low half; the high half is decoded below
        let high = (num >> 16) as u16; // fits: a u32 shifted right by 16
        let split = |v: u16| (v & 0x7fff, v & 0x8000 != 0);
        if packed {
            Base {
                avail: split(low),
                // QEMU sends only the avail half and means "used = avail"; newer frontends
                // put the used position in the high half.
                used: (high != 0).then(|| split(high)),
            }
        } else {
            Base {
                avail: (low, true),
                used: None,
            }
        }
    }
}

/// One vring as the frontend has set it up so far.
#[derive(Debug, Default)]
struct Vring {
    /// 0 until `SET_VRING_NUM`.
    size: u16,
    /// Descriptor, avail and used areas as VMM user addresses.
    user_addrs: Option<RingAddresses>,
    base: BaseSource,
    kick: Option<EventFd>,
    enabled: bool,
}

/// A device behind the vhost-user protocol. See the [module documentation](self).
#[derive(Debug)]
pub struct Backend<D: VirtioDevice> {
    device: D,
    max_sizes: Vec<u16>,
    acked: u64,
    protocol: u64,
    mem: Option<MemoryTable>,
    vrings: Vec<Vring>,
    calls: Arc<CallFds>,
    /// Queues the device is running, with the memory they run in.
    running: Vec<u16>,
    running_mem: Option<GuestMemory>,
    starts: u64,
    /// The `INFLIGHT_SHMFD` region the frontend set, if any.
    inflight: Option<InflightFile>,
    /// Requests resubmitted from the inflight region since the daemon started.
    resubmitted: std::cell::Cell<u64>,
}

impl<D: VirtioDevice> Backend<D> {
    /// Wraps `device`; nothing runs until a frontend sets it up.
    pub fn new(device: D) -> std::io::Result<Self> {
        let max_sizes = device.queue_max_sizes().to_vec();
        let calls = Arc::new(CallFds::new(max_sizes.len())?);
        let vrings = max_sizes.iter().map(|_| Vring::default()).collect();
        Ok(Self {
            device,
            max_sizes,
            acked: 0,
            protocol: 0,
            mem: None,
            vrings,
            calls,
            running: Vec::new(),
            running_mem: None,
            starts: 0,
            inflight: None,
            resubmitted: std::cell::Cell::new(0),
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Queues the device is serving now.
    pub fn running_queues(&self) -> &[u16] {
        &self.running
    }

    /// How many times the device was activated.
    pub fn device_starts(&self) -> u64 {
        self.starts
    }

    /// Requests resubmitted from the inflight region (left in flight by a previous daemon).
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.get()
    }

    /// `GET_INFLIGHT_FD`: a new zeroed region for `num_queues` queues of `queue_size`
    /// entries; returns the file and its size.
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(File, u64), BackendError> {
        Ok(crate::inflight::create(num_queues, queue_size)?)
    }

    /// `SET_INFLIGHT_FD`: maps the region; queues log into it from their next start, and
    /// recover from it what a previous daemon left in flight.
    pub fn set_inflight_fd(
        &mut self,
        file: &File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(), BackendError> {
        let map = InflightFile::map(file, mmap_size, mmap_offset, num_queues, queue_size)?;
        self.stop();
        self.inflight = Some(map);
        self.refresh();
        Ok(())
    }

    /// Virtio features offered to the frontend.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | PROTOCOL_FEATURES
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, BackendError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.vrings.get_mut(i))
            .ok_or(BackendError::NoSuchVring(index))
    }

    fn packed(&self) -> bool {
        self.acked & features::RING_PACKED != 0
    }

    /// Records the driver's features (and restarts a running device with them).
    pub fn set_features(&mut self, value: u64) -> Result<(), BackendError> {
        if value & !self.offered_features() != 0 {
            return Err(BackendError::Features(value));
        }
        if value != self.acked {
            self.stop();
            self.acked = value;
            self.refresh();
        }
        Ok(())
    }

    /// The current memory table.
    pub fn mem_table(&self) -> Option<&MemoryTable> {
        self.mem.as_ref()
    }

    /// Drops the memory table (its last region was removed); the device stops.
    pub fn clear_mem_table(&mut self) {
        self.stop();
        self.mem = None;
    }

    /// Replaces the memory table; a running device restarts in the new memory.
    pub fn set_mem_table(&mut self, table: MemoryTable) {
        self.stop();
        tracing::debug!(regions = table.regions().len(), "memory table mapped");
        self.mem = Some(table);
        self.refresh();
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), BackendError> {
        let max = usize::try_from(index)
            .ok()
            .and_then(|i| self.max_sizes.get(i).copied())
            .ok_or(BackendError::NoSuchVring(index))?;
        let size = u16::try_from(num)
            .ok()
            .filter(|&s| s > 0 && s <= max)
            .ok_or(BackendError::BadSize {
                index,
                size: num,
                max,
            })?;
        self.vring(index)?.size = size;
        Ok(())
    }

    fn set_vring_addr(&mut self, index: u32, addrs: RingAddresses) -> Result<(), BackendError> {
        self.vring(index)?.user_addrs = Some(addrs);
        Ok(())
    }

    /// Kept as sent and decoded when used: its meaning depends on whether the packed ring
    /// was negotiated, and a frontend may send it before `SET_FEATURES`.
    fn set_vring_base(&mut self, index: u32, num: u32) -> Result<(), BackendError> {
        self.vring(index)?.base = BaseSource::Sent(num);
        Ok(())
    }

    /// `GET_VRING_BASE`: stops the vring and says where it stopped.
    fn get_vring_base(&mut self, index: u32) -> Result<u32, BackendError> {
        self.vring(index)?;
        self.stop();
        let packed = self.packed();
        let vring = self.vring(index)?;
        vring.kick = None; // the vring is stopped until the next SET_VRING_KICK
        let base = vring.base.decode(packed);
        // Packed: avail slot and wrap counter in the low half, the used ones in the high half
        // (QEMU restores both from it).
        let pack = |(idx, wrap): (u16, bool)| u32::from(idx & 0x7fff) | (u32::from(wrap) << 15);
        let num = if packed {
            pack(base.avail) | (pack(base.used.unwrap_or(base.avail)) << 16)
        } else {
            u32::from(base.avail.0)
        };
        tracing::debug!(index, num = format_args!("{num:#x}"), "vring stopped");
        self.refresh();
        Ok(num)
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<(), BackendError> {
        let fd = fd.ok_or(BackendError::NoKickFd(index))?;
        set_nonblocking(&fd)?;
        // SAFETY: `fd` is an owned eventfd from the frontend; ownership moves into the EventFd.
        let kick = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        self.vring(u32::from(index))?;
        // A running vring's workers wait on the old fd: restart; other vrings go on.
        if self.running.contains(&u16::from(index)) {
            self.stop();
        }
        self.vring(u32::from(index))?.kick = Some(kick);
        self.refresh();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<(), BackendError> {
        // SAFETY: `f` is an owned eventfd from the frontend; ownership moves into the EventFd.
        let call = fd.map(|f| unsafe { EventFd::from_raw_fd(f.into_raw_fd()) });
        if !self.calls.set(usize::from(index), call) {
            return Err(BackendError::NoSuchVring(u32::from(index)));
        }
        Ok(())
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), BackendError> {
        self.vring(index)?.enabled = enable;
        self.refresh();
        Ok(())
    }

    fn read_config(&self, offset: u32, size: u32) -> Result<Vec<u8>, BackendError> {
        if size > MAX_CONFIG_SIZE {
            return Err(BackendError::ConfigSize(size));
        }
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
        self.device.read_config(u64::from(offset), &mut buf);
        Ok(buf)
    }

    /// Device reset (`RESET_DEVICE`, `RESET_OWNER`): the device stops and every vring is
    /// forgotten; the memory table and protocol features stay.
    pub fn reset_device(&mut self) {
        self.stop();
        self.device.reset();
        self.acked = 0;
        // A reset device starts its rings from scratch: the frontend sends a fresh region.
        self.inflight = None;
        self.vrings.iter_mut().for_each(|v| *v = Vring::default());
        self.calls.clear();
    }

    /// The frontend went away: stop the device (letting it drain) and forget everything
    /// about this frontend, so the next one starts from scratch.
    pub fn disconnect(&mut self) {
        self.reset_device();
        self.protocol = 0;
        self.mem = None;
    }

    /// Which vrings should run now.
    fn wanted(&self) -> Vec<u16> {
        if self.mem.is_none() || self.acked & features::VERSION_1 == 0 {
            return Vec::new();
        }
        let gated = self.acked & PROTOCOL_FEATURES != 0;
        (0..self.vrings.len())
            .filter(|&i| {
                let v = &self.vrings[i];
                v.kick.is_some() && v.user_addrs.is_some() && (v.enabled || !gated)
            })
            .filter_map(|i| u16::try_from(i).ok())
            .collect()
    }

    /// Brings the device in line with the frontend's set-up: see the module documentation.
    pub fn refresh(&mut self) {
        let wanted = self.wanted();
        if wanted == self.running {
            return;
        }
        self.stop();
        if wanted.is_empty() {
            return;
        }
        if let Err(e) = self.start(&wanted) {
            tracing::warn!(error = %e, queues = ?wanted, "cannot start the device");
            self.device.reset();
        }
    }

    fn start(&mut self, wanted: &[u16]) -> Result<(), Box<dyn std::error::Error>> {
        let Some(table) = self.mem.clone() else {
            return Ok(());
        };
        let mem = table.guest_memory().clone();
        let device_features = self.acked & !PROTOCOL_FEATURES;
        check_driver_features(self.device.device_features(), device_features)?;
        self.device.set_features(device_features)?;
        let ring_features = RingFeatures::from_bits(device_features);
        let mut queues = Vec::with_capacity(wanted.len());
        for &index in wanted {
            queues.push(self.build_queue(&table, index, ring_features)?);
        }
        self.device
            .activate(mem.clone(), self.calls.clone(), queues)?;
        tracing::info!(queues = ?wanted, packed = ring_features.packed, "device started");
        self.running = wanted.to_vec();
        self.running_mem = Some(mem);
        self.starts += 1;
        Ok(())
    }

    fn build_queue(
        &self,
        table: &MemoryTable,
        index: u16,
        ring_features: RingFeatures,
    ) -> Result<ActiveQueue, BackendError> {
        let mem = table.guest_memory();
        let i = usize::from(index);
        let vring = &self.vrings[i];
        let user = vring.user_addrs.unwrap_or_default();
        let gpa = |addr: u64| {
            table
                .user_to_guest(addr)
                .ok_or(BackendError::Address { index, addr })
        };
        let addrs = RingAddresses {
            desc: gpa(user.desc)?,
            driver: gpa(user.driver)?,
            device: gpa(user.device)?,
        };
        let mut queue = Queue::new(self.max_sizes[i]);
        if vring.size != 0 {
            queue.set_size(vring.size);
        }
        queue.set_addresses(addrs);
        queue.set_features(ring_features);
        queue.set_ready(true);
        if ring_features.packed {
            let base = vring.base.decode(true);
            queue.set_packed_base(base.avail, base.used.unwrap_or(base.avail));
        } else {
            // The used index in guest memory is the truth: after a backend crash it may lag
            // the frontend's idea of the avail position, and the driver trusts it.
            let avail = vring.base.decode(false).avail.0;
            let used = read_used_idx(mem, addrs.device).unwrap_or(avail);
            queue.set_next_avail(avail, used);
        }
        self.attach_inflight(&mut queue, mem, index);
        queue
            .activate(mem)
            .map_err(|e| std::io::Error::other(format!("vring {index}: {e}")))?;
        let kick = vring
            .kick
            .as_ref()
            .ok_or(BackendError::NoKickFd(0))?
            .try_clone()?;
        Ok(ActiveQueue { index, queue, kick })
    }

    /// Hands the queue its slice of the inflight region: the rings then resume where the
    /// last backend really stopped (split: the used index in guest memory plus what is in
    /// flight; packed: the logged used position), ignoring a base that QEMU could only guess
    /// after a crash, and the requests left in flight are served first.
    fn attach_inflight(&self, queue: &mut Queue, mem: &GuestMemory, index: u16) {
        let Some(file) = &self.inflight else { return };
        let Some(region) = file.region(index) else {
            tracing::warn!(index, "the inflight region has no slice for this vring");
            return;
        };
        match queue.set_inflight(region, mem) {
            Ok(rec) if !rec.resubmit.is_empty() => {
                let n = rec.resubmit.len() as u64; // usize to u64 never truncates
                self.resubmitted.set(self.resubmitted.get() + n);
                tracing::info!(
                    index,
                    resubmit = rec.resubmit.len(),
                    overtaken = rec.overtaken,
                    next_avail = ?rec.next_avail,
                    next_used = ?rec.next_used,
                    "resubmitting requests left in flight by the previous backend"
                );
            }
            Ok(rec) => tracing::debug!(index, fresh = rec.fresh, "inflight log attached"),
            Err(e) => tracing::warn!(
                index,
                error = %e,
                "cannot use the inflight region: a restart will not resubmit this vring's requests"
            ),
        }
    }

    /// Stops a running device and records where each queue stopped.
    pub fn stop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        // The device finishes what it popped and says where each queue stopped. A device
        // that reports nothing for a queue leaves us the used index in guest memory (split
        // rings), which is right once everything popped has been completed.
        let states = self.device.reset();
        let mem = self.running_mem.take();
        let packed = self.packed();
        for index in std::mem::take(&mut self.running) {
            let reported = states
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, st)| Base {
                    avail: (st.next_avail, st.avail_wrap),
                    used: packed.then_some((st.next_used, st.used_wrap)),
                });
            let saved = reported.or_else(|| self.saved_state(mem.as_ref(), index, packed));
            if let (Some(v), Some(base)) = (self.vrings.get_mut(usize::from(index)), saved) {
                v.base = BaseSource::Saved(base);
            }
        }
        tracing::debug!("device stopped");
    }

    fn saved_state(&self, mem: Option<&GuestMemory>, index: u16, packed: bool) -> Option<Base> {
        if packed {
            tracing::warn!(
                index,
                "the device did not report where the packed vring stopped; \
                 resuming from the last base"
            );
            return None;
        }
        let user = self.vrings.get(usize::from(index))?.user_addrs?;
        let table = self.mem.as_ref()?;
        let used = read_used_idx(mem?, table.user_to_guest(user.device)?)?;
        Some(Base {
            avail: (used, true),
            used: None,
        })
    }
}

impl<D: VirtioDevice> Drop for Backend<D> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a split ring's used index (`used->idx`, 2 bytes after the used ring's start).
fn read_used_idx(mem: &GuestMemory, used_ring: u64) -> Option<u16> {
    let addr = used_ring.checked_add(2)?;
    mem.mmap()
        .read_obj::<u16>(GuestAddress(addr))
        .ok()
        .map(u16::from_le)
}

fn set_nonblocking(fd: &File) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we own, with no pointers involved.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vring_bases_decode_per_layout() {
        let sent = BaseSource::Sent(0x8005);
        assert_eq!(
            sent.decode(false).avail,
            (0x8005, true),
            "split: the whole index"
        );
        assert_eq!(
            sent.decode(true),
            Base {
                avail: (5, true),
                used: None
            },
            "packed: slot and wrap counter, used = avail"
        );
        let both = BaseSource::Sent(0x0003_8005);
        assert_eq!(both.decode(true).used, Some((3, false)));
        let saved = Base {
            avail: (7, false),
            used: Some((6, false)),
        };
        assert_eq!(BaseSource::Saved(saved).decode(false), saved);
        assert_eq!(BaseSource::default().decode(true).avail, (0, true));
    }
}
