//! Shared pieces of the NBD and OmniXtend guest tests.

// Each test binary uses a subset; helpers may unwrap (a panic there is a test failure).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxio_guest_harness::{static_binary, Guest, HostTap};

/// Starts oxmem-nbd in the background, waits for its devices, and defines `stop_oxmem`, which
/// sends SIGTERM and checks a clean exit.
pub fn start_oxmem(args: &str, devices: &[&str]) -> String {
    let mut s = format!(
        "oxmem-nbd {args} >/tmp/oxmem.log 2>&1 &
         OXMEM=$!
         stop_oxmem() {{
             trap - EXIT
             kill -TERM $OXMEM
             rc=0; wait $OXMEM || rc=$?
             cat /tmp/oxmem.log
             [ $rc = 0 ] || {{ echo \"oxmem-nbd exited $rc\"; return 1; }}
             grep -q detached /tmp/oxmem.log
         }}
         trap 'cat /tmp/oxmem.log' EXIT
"
    );
    for dev in devices {
        // oxmem-nbd prints "/dev/nbdN attached" (or "reconnected") once the kernel has it.
        s.push_str(&format!(
            "i=0
             until grep -Eq '/dev/{dev} (attached|reconnected)' /tmp/oxmem.log; do
                 i=$((i + 1)); [ $i -lt 300 ] || exit 1
                 kill -0 $OXMEM || exit 1
                 sleep 0.1
             done
"
        ));
    }
    s
}

/// mkfs, mount, write `random_mib` MiB of random data and copy `/lib`, remount after dropping
/// caches, verify, umount, fsck.
pub fn ext4_round_trip(dev: &str, random_mib: u32) -> String {
    format!(
        "oxio-guest fill /dev/{dev} 1M 2M 11
         oxio-guest check /dev/{dev} 1M 2M 11
         mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/{dev}
         mount -t ext4 /dev/{dev} /mnt
         dd if=/dev/urandom of=/mnt/random bs=1M count={random_mib} 2>/dev/null
         mkdir /mnt/tree && cp -a /lib /mnt/tree/
         md5sum /mnt/random > /tmp/random.md5
         (cd /mnt/tree && find . -type f | sort | xargs md5sum) > /tmp/tree.md5
         umount /mnt
         echo 3 > /proc/sys/vm/drop_caches
         mount -t ext4 /dev/{dev} /mnt
         md5sum -c /tmp/random.md5
         (cd /mnt/tree && md5sum -c -s /tmp/tree.md5)
         umount /mnt
         e2fsck -fn /dev/{dev}
"
    )
}

/// A guest with the nbd module, mkfs.ext4, e2fsck and a static oxmem-nbd.
pub fn nbd_guest(name: &str) -> Guest {
    Guest::new(name)
        .module_with_params("nbd", "nbds_max=4")
        .host_program("mkfs.ext4")
        .host_program("e2fsck")
        .static_binary("oxio", "oxmem-nbd")
        .memory_mib(768)
        .timeout(Duration::from_secs(300))
}

/// A host process killed when the test ends, pass or panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `oxio memory-node` serving `size` bytes on the TAP (raw Ethernet); its MAC is the TAP's.
pub fn memory_node(tap: &HostTap, size: &str, log: &Path) -> KillOnDrop {
    let oxio = static_binary("oxio", "oxio").unwrap();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(oxio)
        .args([
            "memory-node",
            "--netdev",
            tap.name(),
            "--size",
            size,
            "--stats-interval",
            "0",
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    // The node is ready once its packet socket is bound; give it a moment and check it lives.
    std::thread::sleep(Duration::from_millis(500));
    let mut node = KillOnDrop(child);
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "oxio memory-node exited at start"
    );
    node
}
