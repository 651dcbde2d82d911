//! Kernel attach: serve an export to the Linux NBD client as `/dev/nbdN`, over socketpairs.
//!
//! The kernel is a transmission-phase-only client (no handshake), so attaching means: make one
//! `AF_UNIX` socketpair per connection, give the kernel one end of each together with the
//! export's size, block size and transmission flags, and serve NBD requests on the other end.
//! Two control planes do the giving:
//!
//! - [`ioctl`]: `NBD_SET_*` + `NBD_SET_SOCK` + `NBD_DO_IT` (blocks on its own thread until the
//!   connections end), `NBD_DISCONNECT` and `NBD_CLEAR_SOCK` on the way out — the seed's path.
//! - [`netlink`]: generic netlink `CONNECT` with all sockets at once, a dead-connection
//!   timeout, `RECONFIGURE`, `STATUS` and `DISCONNECT` — nbd-client's default.
//!
//! [`Attachment`] runs either one end to end with a caller-supplied serving function (the NBD
//! server's transmission phase), one thread per connection. A server in the I/O path of a
//! device must not wait on reclaim that writes to that device: call [`prepare_process`] first
//! (`mlockall` and `PR_SET_IO_FLUSHER`, see docs/nbd.md §2.5).

mod attach;
mod attrs;
pub mod ioctl;
pub mod netlink;

use std::path::PathBuf;
use std::time::Duration;

pub use attach::{AttachMethod, AttachOptions, Attachment, Ended, ServeFn};
pub use attrs::DeviceStatus;

/// `NBD_FLAG_HAS_FLAGS`: must be set in every flags word.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_CAN_MULTI_CONN`: required by the kernel for more than one socket.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Errors of kernel attach.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The device node could not be opened.
    #[error("cannot open {}: {source} (is the nbd module loaded? `modprobe nbd`; are you root?)", path.display())]
    Open {
        /// The node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An ioctl failed.
    #[error("{name} on {} failed: {source}", path.display())]
    Ioctl {
        /// The ioctl.
        name: &'static str,
        /// The node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A netlink operation failed (the kernel's errno).
    #[error("nbd netlink {op} failed: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel has no nbd driver (no `nbd` generic netlink family).
    #[error("the kernel has no nbd driver loaded (`modprobe nbd`)")]
    NoDriver,
    /// The kernel answered something this code cannot read.
    #[error("unexpected reply from the kernel: {0}")]
    Protocol(String),
    /// The configuration is one the kernel would refuse.
    #[error("invalid device configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Creating sockets or threads failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A serving thread ended with an error.
    #[error("connection {connection} failed: {message}")]
    Serve {
        /// Which connection.
        connection: usize,
        /// The server's error.
        message: String,
    },
}

impl KernelError {
    fn netlink(op: &'static str) -> impl FnOnce(std::io::Error) -> KernelError {
        move |source| KernelError::Netlink { op, source }
    }
}

/// What the kernel is told about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Size in bytes; a multiple of `block_size`.
    pub size: u64,
    /// Logical (= physical) block size: a power of two from 512 to 4096. Keep it stable
    /// across attaches: changing it breaks partition tables.
    pub block_size: u32,
    /// Transmission flags, as the server would send in the handshake (`HAS_FLAGS` set;
    /// `CAN_MULTI_CONN` needed for several connections).
    pub flags: u16,
    /// Per-request timeout (zero: none; the kernel then only logs stuck requests).
    pub timeout: Duration,
    /// Netlink only: how long new I/O waits for a RECONFIGURE once all sockets are dead.
    pub dead_conn_timeout: Duration,
    /// Netlink only: `NBD_CFLAG_*`.
    pub client_flags: u64,
    /// Netlink only: shown in `/sys/block/nbdN/backend`.
    pub backend_identifier: Option<String>,
}

impl DeviceConfig {
    /// A device of `size` bytes with `flags`, 4 KiB blocks, no timeouts.
    pub fn new(size: u64, flags: u16) -> Self {
        DeviceConfig {
            size,
            block_size: 4096,
            flags,
            timeout: Duration::ZERO,
            dead_conn_timeout: Duration::ZERO,
            client_flags: 0,
            backend_identifier: None,
        }
    }

    /// Checks what the kernel would otherwise refuse with a bare `EINVAL`.
    pub fn validate(&self, connections: usize) -> Result<(), KernelError> {
        let bad = |reason: String| Err(KernelError::Config { reason });
        if !self.block_size.is_power_of_two() || !(512..=4096).contains(&self.block_size) {
            return bad(format!(
                "block size {} is not a power of two from 512 to 4096",
                self.block_size
            ));
        }
        if self.size == 0 || self.size % u64::from(self.block_size) != 0 {
            return bad(format!(
                "size {} is not a positive multiple of the block size {}",
                self.size, self.block_size
            ));
        }
        if self.flags & FLAG_HAS_FLAGS == 0 {
            return bad("transmission flags lack NBD_FLAG_HAS_FLAGS".into());
        }
        if connections == 0 {
            return bad("at least one connection is needed".into());
        }
        if connections > 1 && self.flags & FLAG_CAN_MULTI_CONN == 0 {
            return bad(format!(
                "{connections} connections need a backend that allows NBD_FLAG_CAN_MULTI_CONN; use 1"
            ));
        }
        Ok(())
    }
}

/// What [`prepare_process`] achieved; each part may fail on its own (old kernel, no
/// capability), which the caller reports as a warning.
#[derive(Debug)]
pub struct ProcessPreparation {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`.
    pub mlockall: std::io::Result<()>,
    /// `prctl(PR_SET_IO_FLUSHER, 1)` (Linux ≥ 5.6, `CAP_SYS_RESOURCE`).
    pub io_flusher: std::io::Result<()>,
}

/// Keeps this process out of the memory-reclaim deadlock of a device served from user space:
/// its pages stay resident and its allocations never recurse into I/O on its own device.
pub fn prepare_process() -> ProcessPreparation {
    // SAFETY: mlockall only changes this process's paging policy. MCL_ONFAULT locks pages as
    // they are touched, so thread stacks are not populated in full.
    let mut rc =
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above, for kernels before 4.4 that lack MCL_ONFAULT.
        rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    }
    let mlockall = if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) sets a flag on this process only.
    let rc = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0, 0, 0) };
    let io_flusher = if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    ProcessPreparation {
        mlockall,
        io_flusher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_the_kernel_would_refuse() {
        let flags = FLAG_HAS_FLAGS;
        assert!(DeviceConfig::new(1 << 20, flags).validate(1).is_ok());
        let err = |c: DeviceConfig, n| c.validate(n).unwrap_err().to_string();
        assert!(err(DeviceConfig::new(1000, flags), 1).contains("multiple of the block size"));
        assert!(err(DeviceConfig::new(0, flags), 1).contains("positive"));
        assert!(err(DeviceConfig::new(1 << 20, 0), 1).contains("HAS_FLAGS"));
        assert!(err(DeviceConfig::new(1 << 20, flags), 2).contains("CAN_MULTI_CONN"));
        assert!(err(DeviceConfig::new(1 << 20, flags), 0).contains("at least one"));
        let mut odd = DeviceConfig::new(1 << 20, flags);
        odd.block_size = 1536;
        assert!(err(odd, 1).contains("power of two"));
        assert!(DeviceConfig::new(1 << 20, flags | FLAG_CAN_MULTI_CONN)
            .validate(4)
            .is_ok());
    }

    #[test]
    fn opening_a_missing_device_says_what_to_do() {
        let err = ioctl::IoctlDevice::open(std::path::Path::new("/dev/nbd-does-not-exist"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("modprobe nbd"), "{err}");
    }

    #[test]
    fn netlink_without_the_driver_is_a_clear_error() {
        // The host kernel here has no nbd driver; where it has one this is not an error.
        match netlink::NbdNetlink::open() {
            Ok(_) => {}
            Err(KernelError::NoDriver) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}
