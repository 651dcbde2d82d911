//! The `vhost` crate's request trait, implemented on [`Backend`]: decoding is done by the
//! crate, so this file only maps each request to the state machine and refuses what we do
//! not offer.

use std::fs::File;

use oxio_virtio::{RingAddresses, VirtioDevice};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Result, VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures};
use vhost::VhostUserMemoryRegionBase;

use super::{Backend, BackendError};
use crate::memory::{MemoryTable, RegionInfo};

/// The protocol features we implement (REPLY_ACK is added by the `vhost` crate).
pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::RESET_DEVICE)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD);

/// Memory slots offered with CONFIGURE_MEM_SLOTS (regions added one by one: memory hotplug,
/// and more than the 8 regions `SET_MEM_TABLE` can carry).
pub const MAX_MEM_SLOTS: u64 = 64;

/// A request we never offered: the frontend broke the protocol, so the session ends (these
/// requests expect data back, which we have none to give).
fn unsupported<T>(what: &'static str) -> Result<T> {
    tracing::warn!(
        request = what,
        "frontend sent a request that was not negotiated"
    );
    Err(vhost::vhost_user::Error::InvalidOperation(what))
}

impl<D: VirtioDevice> VhostUserBackendReqHandlerMut for Backend<D> {
    fn set_owner(&mut self) -> Result<()> {
        tracing::debug!("SET_OWNER");
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        tracing::debug!("RESET_OWNER");
        self.reset_device();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        tracing::debug!("RESET_DEVICE");
        Backend::reset_device(self);
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        tracing::debug!(features = format_args!("{features:#x}"), "SET_FEATURES");
        Ok(Backend::set_features(self, features)?)
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        tracing::debug!(regions = ctx.len(), "SET_MEM_TABLE");
        let regions: Vec<RegionInfo> = ctx.iter().map(RegionInfo::from).collect();
        let table = MemoryTable::map(&regions, files).map_err(BackendError::from)?;
        Backend::set_mem_table(self, table);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        tracing::debug!(index, num, "SET_VRING_NUM");
        Ok(Backend::set_vring_num(self, index, num)?)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        tracing::debug!(
            index,
            descriptor = format_args!("{descriptor:#x}"),
            used = format_args!("{used:#x}"),
            available = format_args!("{available:#x}"),
            "SET_VRING_ADDR"
        );
        let addrs = RingAddresses {
            desc: descriptor,
            driver: available,
            device: used,
        };
        Ok(Backend::set_vring_addr(self, index, addrs)?)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        tracing::debug!(index, base = format_args!("{base:#x}"), "SET_VRING_BASE");
        Ok(Backend::set_vring_base(self, index, base)?)
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        tracing::debug!(index, "GET_VRING_BASE");
        // Must reply with data: a bad index ends the session instead of leaving the
        // frontend waiting for an answer.
        let num = Backend::get_vring_base(self, index)
            .map_err(|_| vhost::vhost_user::Error::InvalidParam)?;
        Ok(VhostUserVringState::new(index, num))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        tracing::debug!(index, fd = fd.is_some(), "SET_VRING_KICK");
        Ok(Backend::set_vring_kick(self, index, fd)?)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        tracing::debug!(index, fd = fd.is_some(), "SET_VRING_CALL");
        Ok(Backend::set_vring_call(self, index, fd)?)
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        // We never report vring errors through it; the fd is simply closed.
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(PROTOCOL_FEATURES)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        tracing::debug!(
            features = format_args!("{features:#x}"),
            "SET_PROTOCOL_FEATURES"
        );
        let ours = (PROTOCOL_FEATURES | VhostUserProtocolFeatures::REPLY_ACK).bits();
        if features & !ours != 0 {
            return Err(BackendError::Features(features).into());
        }
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.max_sizes.len() as u64) // usize to u64 never truncates on our targets
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        tracing::debug!(index, enable, "SET_VRING_ENABLE");
        Ok(Backend::set_vring_enable(self, index, enable)?)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        Ok(self.read_config(offset, size)?)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        tracing::debug!(offset, len = buf.len(), "SET_CONFIG");
        if buf.len() > MAX_CONFIG_LEN {
            return Err(
                BackendError::ConfigSize(u32::try_from(buf.len()).unwrap_or(u32::MAX)).into(),
            );
        }
        self.device.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: vhost::vhost_user::GpuBackend) -> Result<()> {
        unsupported("GPU_SET_SOCKET")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        unsupported("GET_SHARED_OBJECT")
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        let (num_queues, queue_size) = (inflight.num_queues, inflight.queue_size);
        tracing::debug!(num_queues, queue_size, "GET_INFLIGHT_FD");
        let (file, size) = Backend::get_inflight_fd(self, num_queues, queue_size)?;
        Ok((
            VhostUserInflight::new(size, 0, num_queues, queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> Result<()> {
        let (size, offset) = (inflight.mmap_size, inflight.mmap_offset);
        let (num_queues, queue_size) = (inflight.num_queues, inflight.queue_size);
        tracing::debug!(size, offset, num_queues, queue_size, "SET_INFLIGHT_FD");
        Ok(Backend::set_inflight_fd(
            self, &file, size, offset, num_queues, queue_size,
        )?)
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        let info = RegionInfo::from(&**region);
        tracing::debug!(
            gpa = format_args!("{:#x}", info.guest_phys_addr),
            size = info.memory_size,
            "ADD_MEM_REG"
        );
        let count = self.mem_table().map_or(0, |t| t.regions().len());
        if count as u64 >= MAX_MEM_SLOTS {
            return Err(BackendError::Unsupported("more than MAX_MEM_SLOTS regions").into());
        }
        let table = match self.mem_table() {
            Some(t) => t.with_region(info, fd),
            None => MemoryTable::map(&[info], vec![fd]),
        }
        .map_err(BackendError::from)?;
        Backend::set_mem_table(self, table);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let info = RegionInfo::from(&**region);
        tracing::debug!(
            gpa = format_args!("{:#x}", info.guest_phys_addr),
            "REM_MEM_REG"
        );
        let table = self
            .mem_table()
            .ok_or(BackendError::Memory(
                crate::memory::MemoryTableError::NoSuchRegion(info.guest_phys_addr),
            ))?
            .without_region(&info)
            .map_err(BackendError::from)?;
        match table {
            Some(t) => Backend::set_mem_table(self, t),
            None => self.clear_mem_table(),
        }
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        unsupported("SET_DEVICE_STATE_FD")
    }

    fn check_device_state(&mut self) -> Result<()> {
        unsupported("CHECK_DEVICE_STATE")
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        unsupported("GET_SHMEM_CONFIG")
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        unsupported("SET_LOG_BASE")
    }
}

/// `MAX_CONFIG_SIZE` as a length.
const MAX_CONFIG_LEN: usize = super::MAX_CONFIG_SIZE as usize;
