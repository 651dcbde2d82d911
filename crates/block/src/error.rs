//! The block layer's error type. Front-ends map it to their protocol's status with
//! [`BlockError::errno`] (NBD sends the errno; virtio-blk maps it to `VIRTIO_BLK_S_*`).

use std::io;

/// Result alias for the block layer.
pub type Result<T> = std::result::Result<T, BlockError>;

/// Why a block operation or backend set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the device.
    #[error("Range {offset}+{len} is beyond the end of the device ({size} bytes)")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// A modifying request on a read-only backend.
    #[error("The device is read-only")]
    ReadOnly,
    /// The backend cannot do this (for example fast zeroing without `fallocate`).
    #[error("Operation not supported: {0}")]
    NotSupported(&'static str),
    /// The request itself is malformed (for example a buffer larger than the backend allows).
    #[error("Invalid request: {0}")]
    Invalid(&'static str),
    /// The backend ran out of space.
    #[error("No space left on the backing store")]
    NoSpace,
    /// The backend is shutting down and no longer accepts requests.
    #[error("The backend is shutting down")]
    Shutdown,
    /// An operating-system I/O error.
    #[error("I/O error during {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl BlockError {
    /// Wraps an OS error, turning `ENOSPC`/`EDQUOT`/`EFBIG` into [`BlockError::NoSpace`] and
    /// `EOPNOTSUPP` into [`BlockError::NotSupported`].
    pub fn io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => BlockError::NoSpace,
            Some(libc::EOPNOTSUPP) => BlockError::NotSupported(op),
            _ => BlockError::Io { op, source },
        }
    }

    /// An OS error from a negative errno returned by io_uring.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        Self::io(op, io::Error::from_raw_os_error(errno))
    }

    /// The Linux errno a front-end should report (NBD sends it on the wire).
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::OutOfRange { .. } | BlockError::Invalid(_) => libc::EINVAL,
            BlockError::ReadOnly => libc::EPERM,
            BlockError::NotSupported(_) => libc::ENOTSUP,
            BlockError::NoSpace => libc::ENOSPC,
            BlockError::Shutdown => libc::ESHUTDOWN,
            BlockError::Io { .. } => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_protocol_errnos() {
        assert_eq!(
            BlockError::from_errno("write", libc::EDQUOT).errno(),
            libc::ENOSPC
        );
        assert_eq!(
            BlockError::from_errno("zero", libc::EOPNOTSUPP).errno(),
            libc::ENOTSUP
        );
        assert_eq!(
            BlockError::from_errno("read", libc::EBADF).errno(),
            libc::EIO
        );
        assert_eq!(BlockError::Shutdown.errno(), libc::ESHUTDOWN);
    }
}
