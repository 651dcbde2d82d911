//! The shared memory behind `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`.
//!
//! `GET_INFLIGHT_FD`: the backend creates a zeroed memfd big enough for every queue's log
//! and gives it to the frontend, which keeps it for the life of the device. `SET_INFLIGHT_FD`
//! (sent before the vrings start, and again to a restarted backend): the backend maps it and
//! gives each queue its slice ([`oxio_virtio::queue::inflight`] keeps the log and recovers
//! from it). The region outlives any backend process, which is the point.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use oxio_virtio::queue::inflight::{queue_region_size, InflightRegion};

/// Largest region we create or map (32768-entry queues, 64 of them, is 64 MiB).
const MAX_SIZE: u64 = 1 << 28;

/// Errors setting up the inflight region.
#[derive(Debug, thiserror::Error)]
pub enum InflightFileError {
    /// Sizes the frontend sent that we cannot use.
    #[error("Inflight region for {num_queues} queues of {queue_size} entries: {why}")]
    Invalid {
        /// Queues.
        num_queues: u16,
        /// Entries per queue.
        queue_size: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// A system call failed.
    #[error("Inflight region: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes each queue's slice takes for `queue_size` entries.
pub fn stride(queue_size: u16) -> u64 {
    queue_region_size(queue_size) as u64 // usize to u64 never truncates on our targets
}

fn check(num_queues: u16, queue_size: u16) -> Result<u64, InflightFileError> {
    let invalid = |why| InflightFileError::Invalid {
        num_queues,
        queue_size,
        why,
    };
    if num_queues == 0 || queue_size == 0 || queue_size > oxio_virtio::queue::MAX_QUEUE_SIZE {
        return Err(invalid("no queues or a queue size out of range"));
    }
    let size = stride(queue_size) * u64::from(num_queues);
    if size > MAX_SIZE {
        return Err(invalid("too large"));
    }
    Ok(size)
}

/// `GET_INFLIGHT_FD`: a zeroed memfd for `num_queues` queues of `queue_size` entries, and
/// its size.
pub fn create(num_queues: u16, queue_size: u16) -> Result<(File, u64), InflightFileError> {
    let size = check(num_queues, queue_size)?;
    let name: &CStr = c"oxio-vhost-inflight";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a new file descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?; // a new memfd is extended with zeros
    Ok((file, size))
}

/// A shared mapping, unmapped when the last queue using it is gone.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Mapping` only unmaps it on drop, and each
// queue accesses its own disjoint slice through `InflightRegion`.
unsafe impl Send for Mapping {}
// SAFETY: as above: `Mapping` has no methods that access the memory.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses them after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapped inflight file: each queue's slice.
#[derive(Debug)]
pub struct InflightFile {
    map: Arc<Mapping>,
    num_queues: u16,
    queue_size: u16,
}

impl InflightFile {
    /// `SET_INFLIGHT_FD`: maps `mmap_size` bytes of `file` at `mmap_offset`.
    pub fn map(
        file: &File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightFileError> {
        let need = check(num_queues, queue_size)?;
        let invalid = |why| InflightFileError::Invalid {
            num_queues,
            queue_size,
            why,
        };
        if mmap_size < need || mmap_size > MAX_SIZE {
            return Err(invalid("the region has the wrong size"));
        }
        // Mapping past the end of the file would fault on first access (SIGBUS).
        let file_len = file.metadata()?.len();
        if mmap_offset
            .checked_add(mmap_size)
            .is_none_or(|end| end > file_len)
        {
            return Err(invalid("the file is smaller than the region"));
        }
        let len = usize::try_from(mmap_size).map_err(|_| invalid("too large"))?;
        let offset = libc::off_t::try_from(mmap_offset).map_err(|_| invalid("bad offset"))?;
        // SAFETY: a new shared mapping of a file we hold; the kernel checks the offset's
        // alignment and the fd's mode. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Self {
            map: Arc::new(Mapping {
                ptr: ptr.cast(),
                len,
            }),
            num_queues,
            queue_size,
        })
    }

    /// Entries per queue the frontend asked for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Queue `index`'s slice, if the region has one for it.
    pub fn region(&self, index: u16) -> Option<InflightRegion> {
        if index >= self.num_queues {
            return None;
        }
        let stride = usize::try_from(stride(self.queue_size)).ok()?;
        let off = stride.checked_mul(usize::from(index))?;
        if off.checked_add(stride)? > self.map.len {
            return None;
        }
        // SAFETY: `off + stride <= len`, so the slice is inside the mapping.
        let ptr = unsafe { self.map.ptr.add(off) };
        let keep: Arc<dyn std::any::Any + Send + Sync> = self.map.clone();
        // SAFETY: the slice stays mapped while `keep` (an `Arc` of the mapping) lives, and
        // slices of different queues do not overlap.
        unsafe { InflightRegion::new(ptr, stride, keep) }.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_map_and_slice_per_queue() {
        let (file, size) = create(2, 128).unwrap();
        assert_eq!(size, 2 * stride(128));
        assert_eq!(stride(128) % 64, 0);
        let map = InflightFile::map(&file, size, 0, 2, 128).unwrap();
        let a = map.region(0).unwrap();
        let b = map.region(1).unwrap();
        assert!(map.region(2).is_none());
        assert!(a.snapshot().iter().all(|&x| x == 0), "zeroed");
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(create(0, 128).is_err());
        assert!(create(1, 0).is_err());
        let (file, size) = create(1, 128).unwrap();
        assert!(InflightFile::map(&file, size - 64, 0, 1, 128).is_err());
        assert!(
            InflightFile::map(&file, size, 4096, 1, 128).is_err(),
            "past the end of the file"
        );
        assert!(InflightFile::map(&file, size, 0, 2, 128).is_err());
    }
}
