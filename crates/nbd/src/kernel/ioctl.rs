//! Attach by ioctl on `/dev/nbdN`, the interface every kernel has had since 2.1 and the one the
//! seed's oxmem-nbd used: configure, hand over sockets, then `NBD_DO_IT` blocks (on its own
//! thread) until the connections end.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DeviceConfig, KernelError};

// `_IO(0xab, n)` from include/uapi/linux/nbd.h.
const NBD_SET_SOCK: u64 = 0xab00;
const NBD_SET_BLKSIZE: u64 = 0xab01;
const NBD_SET_SIZE: u64 = 0xab02;
const NBD_DO_IT: u64 = 0xab03;
const NBD_CLEAR_SOCK: u64 = 0xab04;
const NBD_CLEAR_QUE: u64 = 0xab05;
const NBD_DISCONNECT: u64 = 0xab08;
const NBD_SET_TIMEOUT: u64 = 0xab09;
const NBD_SET_FLAGS: u64 = 0xab0a;

/// An open `/dev/nbdN` configured by ioctl. Shared between the thread blocked in
/// [`IoctlDevice::run`] and the one that calls [`IoctlDevice::disconnect`].
#[derive(Debug)]
pub struct IoctlDevice {
    path: PathBuf,
    file: File,
}

impl IoctlDevice {
    /// Opens the device node (needs `CAP_SYS_ADMIN` and the `nbd` module).
    pub fn open(path: &Path) -> Result<Arc<Self>, KernelError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| KernelError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Arc::new(IoctlDevice {
            path: path.to_path_buf(),
            file,
        }))
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clears any stale sockets, sets block size, size, transmission flags and timeout, and
    /// hands the kernel one end of each connection (the kernel takes its own reference, so
    /// the caller's descriptors may be closed afterwards).
    pub fn configure(&self, config: &DeviceConfig, sockets: &[OwnedFd]) -> Result<(), KernelError> {
        config.validate(sockets.len())?;
        // CLEAR_SOCK below would tear down a live device of another process: refuse first.
        if let Some(pid) = self.serving_pid() {
            return Err(KernelError::Config {
                reason: format!(
                    "{} is in use (connected, sysfs pid {pid}); disconnect it first (`nbd-client -d {}`) \
                     or pick another --device",
                    self.path.display(),
                    self.path.display()
                ),
            });
        }
        // A device left configured by a crashed process refuses SET_SOCK with EBUSY only
        // while its DO_IT runs; clearing first is what nbd-client does too.
        self.ioctl("NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0)?;
        let result = self.set_up(config, sockets);
        if result.is_err() {
            // Leave no half-configured device behind (ours: the busy check passed).
            let _ = self.ioctl("NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0);
        }
        result
    }

    fn set_up(&self, config: &DeviceConfig, sockets: &[OwnedFd]) -> Result<(), KernelError> {
        let block_size = u64::from(config.block_size);
        self.ioctl("NBD_SET_BLKSIZE", NBD_SET_BLKSIZE, block_size)?;
        self.ioctl("NBD_SET_SIZE", NBD_SET_SIZE, config.size)?;
        self.ioctl("NBD_SET_FLAGS", NBD_SET_FLAGS, u64::from(config.flags))?;
        self.ioctl("NBD_SET_TIMEOUT", NBD_SET_TIMEOUT, config.timeout.as_secs())?;
        for socket in sockets {
            let fd = u64::try_from(socket.as_raw_fd()).map_err(|_| KernelError::Config {
                reason: "negative socket descriptor".into(),
            })?;
            self.ioctl("NBD_SET_SOCK", NBD_SET_SOCK, fd)?;
        }
        Ok(())
    }

    /// The pid the kernel shows in `/sys/block/nbdN/pid` while the device is connected.
    fn serving_pid(&self) -> Option<String> {
        let name = self.path.file_name()?.to_str()?;
        let pid = std::fs::read_to_string(format!("/sys/block/{name}/pid")).ok()?;
        Some(pid.trim().to_string()).filter(|p| !p.is_empty())
    }

    /// Runs the device: blocks in `NBD_DO_IT` until every connection has ended (after
    /// [`IoctlDevice::disconnect`], the server closing its sockets, or a kernel timeout),
    /// then clears the sockets. Call it on a thread of its own.
    pub fn run(&self) -> Result<(), KernelError> {
        let result = self.ioctl("NBD_DO_IT", NBD_DO_IT, 0);
        // Whatever DO_IT returned, leave the device reusable, as the seed did.
        let _ = self.ioctl("NBD_CLEAR_QUE", NBD_CLEAR_QUE, 0);
        let clear = self.ioctl("NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0);
        result.and(clear)
    }

    /// Asks the kernel to send `NBD_CMD_DISC` on every connection; [`IoctlDevice::run`]
    /// returns once the server has answered what was in flight and closed.
    pub fn disconnect(&self) -> Result<(), KernelError> {
        self.ioctl("NBD_DISCONNECT", NBD_DISCONNECT, 0)
    }

    fn ioctl(&self, name: &'static str, request: u64, arg: u64) -> Result<(), KernelError> {
        let arg = libc::c_ulong::try_from(arg).map_err(|_| KernelError::Config {
            reason: format!("{name} argument {arg} does not fit"),
        })?;
        let request = libc::c_ulong::try_from(request).unwrap_or_default();
        // SAFETY: every NBD ioctl takes its argument by value (an integer, never a pointer),
        // on a descriptor this struct owns.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, arg) };
        if rc < 0 {
            Err(KernelError::Ioctl {
                name,
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    }
}
