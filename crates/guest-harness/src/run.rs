//! A running guest: QEMU under `timeout`, in its own process group, holding one of the
//! machine-wide guest slots; and the outcome read from its exit status and serial log.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::env::GuestEnv;
use crate::guest::Guest;
use crate::initramfs::Initramfs;
use crate::GuestError;

/// Status `timeout(1)` exits with when it had to stop QEMU.
const TIMEOUT_STATUS: i32 = 124;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestResult {
    /// The script exited 0 and the guest reported it through isa-debug-exit.
    Passed,
    /// The script (or module loading: 125) exited with this non-zero status.
    Failed(i32),
    /// The guest stopped without reporting (kernel panic, oops, poweroff).
    NoReport,
    /// QEMU ran past the guest's timeout and was killed.
    TimedOut,
    /// QEMU itself failed (bad arguments, a backend it could not reach): its exit status.
    QemuFailed(i32),
}

impl std::fmt::Display for GuestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestResult::Passed => write!(f, "passed"),
            GuestResult::Failed(rc) => write!(f, "the guest script failed with status {rc}"),
            GuestResult::NoReport => write!(f, "the guest stopped without reporting (panic?)"),
            GuestResult::TimedOut => write!(f, "the guest timed out"),
            GuestResult::QemuFailed(st) => write!(f, "QEMU failed with status {st}"),
        }
    }
}

/// The end of a guest run.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    /// The guest's name.
    pub name: String,
    /// How it ended.
    pub result: GuestResult,
    /// The serial console, `\r` stripped.
    pub serial: String,
    /// QEMU's own stderr (warnings, errors).
    pub qemu_stderr: String,
    /// Where the serial log was kept (`.cache/guest/logs/<name>.log`).
    pub log_path: PathBuf,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

impl GuestOutcome {
    /// `Ok` if the guest passed, else an error with the result and the log's tail.
    pub fn expect_pass(&self) -> Result<&Self, GuestError> {
        if self.result == GuestResult::Passed {
            Ok(self)
        } else {
            Err(self.failure())
        }
    }

    /// The error describing this outcome (for tests that expect a specific failure).
    pub fn failure(&self) -> GuestError {
        let mut lines: Vec<&str> = self.serial.lines().collect();
        let keep = lines.len().saturating_sub(80);
        lines.drain(..keep);
        let mut tail = lines.join("\n");
        if !self.qemu_stderr.trim().is_empty() {
            tail.push_str("\n--- qemu stderr ---\n");
            tail.push_str(self.qemu_stderr.trim());
        }
        GuestError::Failed {
            name: self.name.clone(),
            result: self.result.to_string(),
            log: self.log_path.clone(),
            tail,
        }
    }
}

/// A booted guest. Dropping it kills QEMU; [`RunningGuest::wait`] lets it finish.
#[derive(Debug)]
pub struct RunningGuest {
    name: String,
    child: Option<Child>,
    workdir: tempfile::TempDir,
    serial: PathBuf,
    log_path: PathBuf,
    started: Instant,
    timeout: Duration,
    _slot: File,
}

impl RunningGuest {
    pub(crate) fn start(
        guest: &Guest,
        env: &GuestEnv,
        tree: Initramfs,
    ) -> Result<Self, GuestError> {
        let workdir = tempfile::Builder::new()
            .prefix("oxio-guest-")
            .tempdir()
            .map_err(|e| GuestError::io("create the guest's work folder", e))?;
        let initrd = workdir.path().join("initrd.cpio");
        tree.pack(&initrd)?;
        drop(tree);
        let serial = workdir.path().join("serial.log");
        let stderr = File::create(workdir.path().join("qemu.stderr"))
            .map_err(|e| GuestError::io("create QEMU's stderr file", e))?;
        let slot = acquire_slot(&env.cache)?;
        let secs = guest.timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &secs])
            .arg(&env.qemu)
            .args(guest.qemu_command(env, &initrd, &serial))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| GuestError::io("start timeout + QEMU", e))?;
        let logs = env.cache.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| GuestError::io("create the log folder", e))?;
        Ok(RunningGuest {
            name: guest.name.clone(),
            child: Some(child),
            log_path: logs.join(format!("{}.log", sanitize(&guest.name))),
            workdir,
            serial,
            started: Instant::now(),
            timeout: guest.timeout,
            _slot: slot,
        })
    }

    /// The serial console so far, `\r` stripped.
    pub fn serial(&self) -> String {
        read_stripped(&self.serial)
    }

    /// Waits until the serial console contains `needle` (e.g. a line printed with the
    /// prelude's `mark`). Fails early if the guest stops first.
    pub fn wait_for_serial(&mut self, needle: &str, limit: Duration) -> Result<(), GuestError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.serial().contains(needle) {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .map_err(|e| GuestError::io("poll QEMU", e))?,
                None => None,
            };
            if exited.is_some() || Instant::now() >= deadline {
                return Err(GuestError::WaitFailed {
                    name: self.name.clone(),
                    needle: needle.to_string(),
                    stopped: exited.is_some(),
                    tail: tail(&self.serial(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit (at the latest when its timeout kills it) and reads the outcome.
    pub fn wait(mut self) -> Result<GuestOutcome, GuestError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| GuestError::Setup("no QEMU".into()))?;
        let status = child
            .wait()
            .map_err(|e| GuestError::io("wait for QEMU", e))?;
        let elapsed = self.started.elapsed();
        let serial = self.serial();
        let qemu_stderr = read_stripped(&self.workdir.path().join("qemu.stderr"));
        let _ = std::fs::write(&self.log_path, &serial);
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        let result = decode(code, &serial, elapsed >= self.timeout);
        Ok(GuestOutcome {
            name: self.name.clone(),
            result,
            serial,
            qemu_stderr,
            log_path: self.log_path.clone(),
            elapsed,
        })
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child's process group (timeout and QEMU); no
                // memory is involved.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

/// Maps QEMU's exit status (through `timeout`) and the serial log to a result.
/// The guest prints `OXIO-GUEST-END rc=N` and writes `min(N, 126) + 1` to isa-debug-exit, so
/// QEMU exits `((min(N, 126) + 1) << 1) | 1`. A report counts only when both agree: QEMU's
/// own errors exit 1, and a signal death (128 + n) cannot pose as a report.
fn decode(code: i32, serial: &str, ran_out: bool) -> GuestResult {
    let reported = serial.lines().rev().find_map(|l| {
        l.strip_prefix("OXIO-GUEST-END rc=")
            .and_then(|rc| rc.trim().parse::<i32>().ok())
    });
    match (code, reported) {
        (TIMEOUT_STATUS, _) => GuestResult::TimedOut,
        (137, _) if ran_out => GuestResult::TimedOut,
        (0, _) => GuestResult::NoReport,
        (c, Some(rc)) if c >= 3 && c % 2 == 1 && (c >> 1) - 1 == rc.clamp(0, 126) => {
            if rc == 0 {
                GuestResult::Passed
            } else {
                GuestResult::Failed(rc)
            }
        }
        (c, _) => GuestResult::QemuFailed(c),
    }
}

/// Takes one of `$OXIO_GUEST_SLOTS` (default 2) machine-wide slots, waiting for a free one:
/// never more than that many TCG guests at once, across every test process.
fn acquire_slot(cache: &Path) -> Result<File, GuestError> {
    let slots = std::env::var("OXIO_GUEST_SLOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2u32);
    let dir = cache.join("slots");
    std::fs::create_dir_all(&dir).map_err(|e| GuestError::io("create the slot folder", e))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        for i in 0..slots.max(1) {
            let file = File::create(dir.join(format!("{i}.lock")))
                .map_err(|e| GuestError::io("open a guest slot lock", e))?;
            // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Setup(
                "no free guest slot after 30 minutes".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_stripped(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\r', "")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_statuses() {
        let ok = "x\nOXIO-GUEST-END rc=0\n";
        assert_eq!(decode(3, ok, false), GuestResult::Passed);
        assert_eq!(decode(3, "no marker", false), GuestResult::QemuFailed(3));
        assert_eq!(
            decode(255, "OXIO-GUEST-END rc=200", false),
            GuestResult::Failed(200)
        );
        assert_eq!(
            decode(5, "OXIO-GUEST-END rc=1", false),
            GuestResult::Failed(1)
        );
        assert_eq!(decode(0, "", false), GuestResult::NoReport);
        assert_eq!(decode(1, ok, false), GuestResult::QemuFailed(1));
        assert_eq!(decode(124, "", true), GuestResult::TimedOut);
        assert_eq!(decode(137, "", true), GuestResult::TimedOut);
        assert_eq!(decode(137, "", false), GuestResult::QemuFailed(137));
    }
}
