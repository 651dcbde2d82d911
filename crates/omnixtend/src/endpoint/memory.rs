//! The memory region a software memory node serves: anonymous, or a file mapped with mmap.

use memmap2::{MmapMut, MmapOptions};
use std::fs::OpenOptions;
use std::path::Path;

/// Why a memory region could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("Failed to map {size} bytes of memory")]
    Map {
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backing file could not be opened or sized.
    #[error("Failed to open or size the backing file {path}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The size does not fit this machine's address space.
    #[error("Memory size {0} does not fit in this process's address space")]
    TooLarge(u64),
}

/// A contiguous region of bytes at bus addresses `base..base + len`.
#[derive(Debug)]
pub struct Memory {
    map: MmapMut,
    base: u64,
}

impl Memory {
    /// Anonymous memory (zero-filled, pages allocated on first touch).
    ///
    /// Transparent huge pages are deliberately not requested: in a VM, a 2 MiB page taken
    /// from guest memory the host has not backed yet costs hundreds of host faults at once
    /// (measured: touching 256 MiB took 1 s with MADV_HUGEPAGE against 0.13 s without), which
    /// stalls the node's only thread long enough for its peers' retransmission timers to fire.
    pub fn anonymous(size: u64, base: u64) -> Result<Memory, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        let map = MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(|source| MemoryError::Map { size, source })?;
        Ok(Memory { map, base })
    }

    /// Anonymous memory allocated and faulted in now (`MAP_POPULATE`), as a hardware node's
    /// DRAM is always there: serving never stalls on a first touch (page faults took 6–12 % of
    /// the node's time in write runs on fresh memory), and a machine short of memory fails
    /// here, at start, rather than part-way through serving. Costs about 0.5 s per GiB.
    pub fn anonymous_populated(size: u64, base: u64) -> Result<Memory, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        let map = MmapOptions::new()
            .len(len)
            .populate()
            .map_anon()
            .map_err(|source| MemoryError::Map { size, source })?;
        Ok(Memory { map, base })
    }

    /// A file mapped shared: writes reach the file. The file is created and grown to `size`.
    pub fn file(path: &Path, size: u64, base: u64) -> Result<Memory, MemoryError> {
        let file_err = |source| MemoryError::File {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(file_err)?;
        if file.metadata().map_err(file_err)?.len() < size {
            file.set_len(size).map_err(file_err)?;
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        // SAFETY: a shared mapping of a file we opened read-write and sized to `len`. Memory
        // safety holds as long as no other process truncates the file while it is mapped (that
        // would fault on access); the node is documented as the file's only user.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&file) }
            .map_err(|source| MemoryError::Map { size, source })?;
        Ok(Memory { map, base })
    }

    /// First bus address served.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes served.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes at bus addresses `addr..addr + len`, or None if any is outside the region.
    pub fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let range = self.range(addr, len)?;
        self.map.get(range)
    }

    /// Mutable bytes at `addr..addr + len`, or None if any is outside the region.
    pub fn slice_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let range = self.range(addr, len)?;
        self.map.get_mut(range)
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = off.checked_add(len)?;
        (end <= self.map.len()).then_some(off..end)
    }

    /// Flushes a file-backed region to disk.
    pub fn flush(&self) -> std::io::Result<()> {
        self.map.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let mut m = Memory::anonymous(4096, 0x1000).unwrap();
        assert!(m.slice(0xfff, 1).is_none());
        assert!(m.slice(0x1000, 4096).is_some());
        assert!(m.slice(0x1001, 4096).is_none());
        assert!(m.slice(u64::MAX, 2).is_none());
        m.slice_mut(0x1ff8, 8).unwrap().copy_from_slice(&[7; 8]);
        assert_eq!(m.slice(0x1ffc, 4).unwrap(), &[7; 4]);
    }

    #[test]
    fn populated_memory_is_zeroed_and_resident() {
        let size = 1u64 << 20;
        let m = Memory::anonymous_populated(size, 0).unwrap();
        assert!(m.slice(0, 1 << 20).unwrap().iter().all(|&b| b == 0));
        // mincore: every page of a populated mapping is resident before anyone touched it.
        let fresh = Memory::anonymous_populated(size, 0).unwrap();
        let len = usize::try_from(size).unwrap();
        let pages = len / 4096;
        let mut vec = vec![0u8; pages];
        let ptr = fresh.slice(0, 1).unwrap().as_ptr();
        // SAFETY: `ptr` is the page-aligned start of a live mapping of `size` bytes and `vec`
        // has one byte per 4 KiB page of it.
        let rc = unsafe { libc::mincore(ptr.cast_mut().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert!(
            vec.iter().all(|&v| v & 1 == 1),
            "some pages were not faulted in"
        );
    }

    #[test]
    fn file_backed_writes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mut m = Memory::file(&path, 8192, 0).unwrap();
        m.slice_mut(4096, 4).unwrap().copy_from_slice(b"oxio");
        m.flush().unwrap();
        drop(m);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[4096..4100], b"oxio");
        assert_eq!(data.len(), 8192);
    }
}
