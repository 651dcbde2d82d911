//! Real Linux guests under QEMU TCG for oxio's device and NBD tests.
//!
//! A test describes a guest in a few lines: kernel modules to load, programs to copy in, QEMU
//! devices to attach, and a busybox shell script that is the test. The harness builds an
//! initramfs (busybox, the modules with their dependencies, programs with their shared
//! libraries, statically linked workspace binaries), boots the Debian cloud kernel under
//! `timeout`-wrapped `qemu-system-x86_64 -accel tcg`, and reads pass/fail from the script's
//! exit status, which the guest reports through QEMU's `isa-debug-exit` device.
//!
//! ```no_run
//! use oxio_guest_harness::Guest;
//!
//! let outcome = Guest::new("blk-read")
//!     .modules(["virtio_pci", "virtio_blk"])
//!     .qemu_args(["-drive", "file=/tmp/disk.img,format=raw,if=none,id=d0"])
//!     .qemu_args(["-device", "virtio-blk-pci,drive=d0"])
//!     .script("wait_for /dev/vda; oxio-guest check /dev/vda 0 65536 7")
//!     .run()?;
//! outcome.expect_pass()?;
//! # Ok::<(), oxio_guest_harness::GuestError>(())
//! ```
//!
//! The environment (QEMU from bookworm-backports, the cloud kernel unpacked in
//! `.cache/guest`) comes from `scripts/setup.d/20-guest.sh`; without it every guest test fails
//! with an error that says so, never silently skips. At most two guests run at once on the
//! machine (`OXIO_GUEST_SLOTS`), whatever the number of test processes.

mod env;
mod guest;
mod initramfs;
pub mod pattern;
mod run;
mod static_bin;
mod tap;

pub use env::{find_program, workspace_root, GuestEnv};
pub use guest::Guest;
pub use initramfs::{Initramfs, ModuleLoad};
pub use run::{GuestOutcome, GuestResult, RunningGuest};
pub use static_bin::static_binary;
pub use tap::HostTap;

/// Waits until something accepts connections on the Unix socket `path` (a vhost-user or NBD
/// daemon the test started); false if nothing does within `timeout`.
pub fn wait_for_socket(path: &std::path::Path, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Everything that can go wrong while preparing, booting or judging a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The host lacks part of the guest environment.
    #[error("the guest environment is not ready: {0}")]
    Setup(String),
    /// A host file or process operation failed.
    #[error("cannot {context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Cargo could not build a static guest program.
    #[error("building the static guest program `{bin}` failed:\n{stderr}")]
    Build {
        /// The binary.
        bin: String,
        /// Cargo's output.
        stderr: String,
    },
    /// The guest did not pass.
    #[error("guest `{name}`: {result} (serial log: {log})\n{tail}")]
    Failed {
        /// The guest's name.
        name: String,
        /// How it ended.
        result: String,
        /// Where the full serial log is.
        log: std::path::PathBuf,
        /// The last lines of the serial log and QEMU's stderr.
        tail: String,
    },
    /// The guest never printed what the host waited for.
    #[error("guest `{name}` {} before printing `{needle}`:\n{tail}", if *stopped { "stopped" } else { "timed out" })]
    WaitFailed {
        /// The guest's name.
        name: String,
        /// What the host waited for.
        needle: String,
        /// Whether the guest had stopped (else the wait timed out).
        stopped: bool,
        /// The last lines of the serial log.
        tail: String,
    },
}

impl GuestError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        GuestError::Io {
            context: context.into(),
            source,
        }
    }
}
