//! The frontend's memory table: guest RAM shared as file descriptors (memfd, hugetlbfs).
//!
//! `SET_MEM_TABLE` sends, per region, its guest physical address, size, the address the VMM
//! mapped it at (its "user address") and an fd with an offset. We map each fd ourselves, so
//! the device reads guest memory directly, and keep the user addresses because vring
//! addresses arrive as VMM user addresses, not guest addresses.

use std::fs::File;
use std::sync::Arc;

use oxio_virtio::GuestMemory;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Why a memory table was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryTableError {
    /// The message and its fds disagree.
    #[error("Memory table has {regions} regions but {fds} file descriptors")]
    FdCount {
        /// Regions in the message.
        regions: usize,
        /// Fds attached.
        fds: usize,
    },
    /// A region's size does not fit this host.
    #[error("Memory region at guest address {0:#x} is too large for this host")]
    TooLarge(u64),
    /// mmap of a region failed.
    #[error("Cannot map the memory region at guest address {gpa:#x} (fd offset {offset:#x})")]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// Offset in the fd.
        offset: u64,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions overlap or are empty.
    #[error("Memory regions overlap or none were given")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    /// The queue engine refused the mapping.
    #[error("Cannot use the mapped guest memory")]
    Engine(#[source] oxio_virtio::MemoryError),
    /// A region's fd could not be duplicated (kept to rebuild the table later).
    #[error("Cannot keep the memory region's file descriptor")]
    Dup(#[source] std::io::Error),
    /// `REM_MEM_REG` named a region that is not in the table.
    #[error("No memory region at guest address {0:#x} to remove")]
    NoSuchRegion(u64),
}

/// One region as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub memory_size: u64,
    /// Where the VMM mapped it in its own address space.
    pub user_addr: u64,
    /// Offset of the region in its fd.
    pub mmap_offset: u64,
}

impl From<&vhost::vhost_user::message::VhostUserMemoryRegion> for RegionInfo {
    fn from(r: &vhost::vhost_user::message::VhostUserMemoryRegion) -> Self {
        Self {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            user_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

/// Guest memory mapped from a memory table, plus the user-address view of it.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    mem: GuestMemory,
    regions: Vec<RegionInfo>,
    /// The regions' fds, kept so `ADD_MEM_REG`/`REM_MEM_REG` can rebuild the table.
    files: Vec<Arc<File>>,
}

impl MemoryTable {
    /// Maps every region from its fd (shared mapping, so guest and device see each other's
    /// writes).
    pub fn map(regions: &[RegionInfo], files: Vec<File>) -> Result<Self, MemoryTableError> {
        if regions.len() != files.len() {
            return Err(MemoryTableError::FdCount {
                regions: regions.len(),
                fds: files.len(),
            });
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut kept = Vec::with_capacity(regions.len());
        for (r, file) in regions.iter().zip(files) {
            kept.push(Arc::new(file.try_clone().map_err(MemoryTableError::Dup)?));
            let size = usize::try_from(r.memory_size)
                .map_err(|_| MemoryTableError::TooLarge(r.guest_phys_addr))?;
            let region = MmapRegion::from_file(FileOffset::new(file, r.mmap_offset), size)
                .map_err(|source| MemoryTableError::Map {
                    gpa: r.guest_phys_addr,
                    offset: r.mmap_offset,
                    source,
                })?;
            let region = GuestRegionMmap::new(region, GuestAddress(r.guest_phys_addr))
                .ok_or(MemoryTableError::TooLarge(r.guest_phys_addr))?;
            mapped.push(region);
        }
        mapped.sort_by_key(vm_memory::GuestMemoryRegion::start_addr);
        let mmap = GuestMemoryMmap::from_regions(mapped).map_err(MemoryTableError::Layout)?;
        let mem = GuestMemory::new(mmap).map_err(MemoryTableError::Engine)?;
        Ok(Self {
            mem,
            regions: regions.to_vec(),
            files: kept,
        })
    }

    /// This table plus one region (`ADD_MEM_REG`).
    pub fn with_region(&self, region: RegionInfo, file: File) -> Result<Self, MemoryTableError> {
        let mut regions = self.regions.clone();
        let mut files = self.dup_files()?;
        regions.push(region);
        files.push(file);
        Self::map(&regions, files)
    }

    /// This table without the region at `region`'s guest address, size and user address
    /// (`REM_MEM_REG`); `None` if it was the last one.
    pub fn without_region(&self, region: &RegionInfo) -> Result<Option<Self>, MemoryTableError> {
        let same = |r: &RegionInfo| {
            (r.guest_phys_addr, r.memory_size, r.user_addr)
                == (region.guest_phys_addr, region.memory_size, region.user_addr)
        };
        let i = self
            .regions
            .iter()
            .position(same)
            .ok_or(MemoryTableError::NoSuchRegion(region.guest_phys_addr))?;
        let mut regions = self.regions.clone();
        let mut files = self.dup_files()?;
        regions.remove(i);
        files.remove(i);
        if regions.is_empty() {
            return Ok(None);
        }
        Self::map(&regions, files).map(Some)
    }

    fn dup_files(&self) -> Result<Vec<File>, MemoryTableError> {
        self.files
            .iter()
            .map(|f| f.try_clone().map_err(MemoryTableError::Dup))
            .collect()
    }

    /// The mapped guest memory.
    pub fn guest_memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The regions as described by the frontend.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// Translates a VMM user address (how vring addresses arrive) to a guest address.
    pub fn user_to_guest(&self, user_addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let offset = user_addr.checked_sub(r.user_addr)?;
            (offset < r.memory_size).then(|| r.guest_phys_addr + offset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn memfd(len: u64) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        f.write_all(b"first page").unwrap();
        f
    }

    #[test]
    fn maps_regions_at_their_offsets_and_translates_user_addresses() {
        let regions = [
            RegionInfo {
                guest_phys_addr: 0,
                memory_size: 0x1000,
                user_addr: 0x7f00_0000_0000,
                mmap_offset: 0,
            },
            RegionInfo {
                guest_phys_addr: 0x10_0000,
                memory_size: 0x2000,
                user_addr: 0x7f00_0000_1000,
                mmap_offset: 0x1000,
            },
        ];
        let f0 = memfd(0x3000);
        let f1 = f0.try_clone().unwrap();
        let table = MemoryTable::map(&regions, vec![f1, f0]).unwrap();
        let mmap = table.guest_memory().mmap();
        let mut buf = [0u8; 10];
        mmap.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert_eq!(&buf, b"first page");
        // The second region is the file from offset 0x1000: writes land there.
        mmap.write_slice(b"x", GuestAddress(0x10_0000)).unwrap();
        assert_eq!(table.user_to_guest(0x7f00_0000_0010), Some(0x10));
        assert_eq!(table.user_to_guest(0x7f00_0000_1800), Some(0x10_0800));
        assert_eq!(table.user_to_guest(0x7f00_0000_3000), None);
        assert_eq!(table.user_to_guest(0x10), None);
    }

    #[test]
    fn regions_are_added_and_removed() {
        let r0 = RegionInfo {
            guest_phys_addr: 0,
            memory_size: 0x1000,
            user_addr: 0x10_0000,
            mmap_offset: 0,
        };
        let r1 = RegionInfo {
            guest_phys_addr: 0x8000,
            memory_size: 0x2000,
            user_addr: 0x20_0000,
            mmap_offset: 0x1000,
        };
        let t = MemoryTable::map(&[r0], vec![memfd(0x1000)]).unwrap();
        let t = t.with_region(r1, memfd(0x3000)).unwrap();
        assert_eq!(t.guest_memory().num_regions(), 2);
        assert_eq!(t.user_to_guest(0x20_0010), Some(0x8010));
        let t = t.without_region(&r0).unwrap().unwrap();
        assert_eq!(t.user_to_guest(0x10_0010), None);
        assert_eq!(t.user_to_guest(0x20_0010), Some(0x8010));
        assert!(matches!(
            t.without_region(&r0),
            Err(MemoryTableError::NoSuchRegion(0))
        ));
        assert!(t.without_region(&r1).unwrap().is_none());
    }

    #[test]
    fn refuses_fd_count_mismatch_and_overlap() {
        let r = RegionInfo {
            guest_phys_addr: 0,
            memory_size: 0x1000,
            user_addr: 0,
            mmap_offset: 0,
        };
        assert!(matches!(
            MemoryTable::map(&[r], vec![]),
            Err(MemoryTableError::FdCount { .. })
        ));
        let f = memfd(0x1000);
        let g = f.try_clone().unwrap();
        assert!(matches!(
            MemoryTable::map(&[r, r], vec![f, g]),
            Err(MemoryTableError::Layout(_))
        ));
    }
}
