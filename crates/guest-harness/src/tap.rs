//! A TAP device on the host for a guest's NIC (`-netdev tap`), so host programs see the
//! guest's raw Ethernet frames on an interface (OmniXtend over raw Ethernet, virtio-net
//! tests). Needs root. Deleted on drop, whatever happens to the test.

use std::ffi::OsString;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::env::find_program;
use crate::GuestError;

/// A persistent TAP interface, up, with no address; removed on drop.
#[derive(Debug)]
pub struct HostTap {
    name: String,
}

impl HostTap {
    /// Creates `oxt<pid>-<n>` (unique per process and call) and brings it up.
    pub fn create() -> Result<Self, GuestError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // IFNAMSIZ is 16 including the NUL: keep the name short.
        let name = format!("oxt{}x{n}", std::process::id() % 100_000);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = HostTap { name };
        ip(&["link", "set", "dev", &tap.name, "up"])?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's MAC address, e.g. `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self) -> Result<String, GuestError> {
        let path = format!("/sys/class/net/{}/address", self.name);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| GuestError::io(format!("read {path}"), e))
    }

    /// QEMU arguments giving the guest a virtio-net NIC (MAC `guest_mac`) on this TAP.
    pub fn qemu_args(&self, guest_mac: &str) -> Vec<OsString> {
        let id = format!("tap-{}", self.name);
        [
            "-netdev".to_string(),
            format!(
                "tap,id={id},ifname={},script=no,downscript=no,vhost=off",
                self.name
            ),
            "-device".to_string(),
            format!("virtio-net-pci,netdev={id},mac={guest_mac}"),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), GuestError> {
    let output = Command::new(find_program("ip")?)
        .args(args)
        .output()
        .map_err(|e| GuestError::io("run ip", e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(GuestError::Setup(format!(
            "`ip {}` failed (root needed): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
