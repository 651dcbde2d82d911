//! oxio's kernel attach proven against the real Linux NBD driver inside a guest: a statically
//! linked `oxmem-nbd` attaches memory to `/dev/nbdN` by ioctl and by netlink, and the guest
//! puts a real ext4 filesystem on it.
//!
//! The memory backend stands in for OmniXtend until the OmniXtend block backend lands (then
//! the same test runs with `--backend omnixtend` over a tap to a memory node on the host).

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use oxio_guest_harness::Guest;

/// Starts oxmem-nbd in the background, waits for its devices, and defines `stop_oxmem`, which
/// sends SIGTERM and checks a clean exit.
fn start(args: &str, devices: &[&str]) -> String {
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

/// mkfs, mount, write files, remount after dropping caches, verify, umount, fsck.
fn ext4_round_trip(dev: &str) -> String {
    format!(
        "oxio-guest fill /dev/{dev} 1M 2M 11
         oxio-guest check /dev/{dev} 1M 2M 11
         mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/{dev}
         mount -t ext4 /dev/{dev} /mnt
         dd if=/dev/urandom of=/mnt/random bs=1M count=8 2>/dev/null
         mkdir /mnt/tree && cp -a /bin /lib /mnt/tree/
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

fn guest(name: &str) -> Guest {
    Guest::new(name)
        .module_with_params("nbd", "nbds_max=4")
        .host_program("mkfs.ext4")
        .host_program("e2fsck")
        .static_binary("oxio", "oxmem-nbd")
        .memory_mib(768)
        .timeout(Duration::from_secs(300))
}

#[test]
fn oxmem_nbd_ioctl_attach_carries_ext4() {
    let script = start(
        "--backend memory --attach ioctl --size 128M --device /dev/nbd0",
        &["nbd0"],
    ) + &ext4_round_trip("nbd0")
        // SIGUSR1 prints live statistics.
        + "kill -USR1 $OXMEM; sleep 0.5; grep -q 'nbd0: connections 1 (1 active)' /tmp/oxmem.log\n"
        + "stop_oxmem\n";
    let outcome = guest("nbd-oxmem-ioctl").script(&script).run().unwrap();
    outcome.expect_pass().unwrap();
    eprintln!("ioctl attach guest: {:.1} s", outcome.elapsed.as_secs_f64());
}

#[test]
fn oxmem_nbd_netlink_attach_two_devices_two_connections() {
    let script = start(
        "--backend memory --attach netlink --size 256M --num 2 --connections 2 --device /dev/nbd1 --dead-conn-timeout 5",
        &["nbd1", "nbd2"],
    ) + "[ \"$(cat /sys/block/nbd1/size)\" = 262144 ] && [ \"$(cat /sys/block/nbd2/size)\" = 262144 ]
         cat /sys/block/nbd1/backend | grep -q oxmem-nbd
         oxio-guest fill /dev/nbd2 0 4M 22
"
        + &ext4_round_trip("nbd1")
        + "oxio-guest check /dev/nbd2 0 4M 22\n"
        + "stop_oxmem\n";
    let outcome = guest("nbd-oxmem-netlink").script(&script).run().unwrap();
    outcome.expect_pass().unwrap();
    eprintln!(
        "netlink attach guest: {:.1} s",
        outcome.elapsed.as_secs_f64()
    );
}

#[test]
fn oxmem_nbd_restarted_after_kill_takes_over_its_netlink_device() {
    // A file in the guest's tmpfs outlives the process, as OmniXtend memory outlives it.
    let args = "--backend file:/tmp/backing --attach netlink --size 64M --device /dev/nbd0 \
                --dead-conn-timeout 60";
    let script = "dd if=/dev/zero of=/tmp/backing bs=1M count=64 2>/dev/null\n".to_string()
        + &start(args, &["nbd0"])
        + "mkfs.ext4 -q -F /dev/nbd0
           mount -t ext4 /dev/nbd0 /mnt
           dd if=/dev/urandom of=/mnt/before bs=1M count=4 2>/dev/null
           sync
           md5sum /mnt/before > /tmp/before.md5
           kill -KILL $OXMEM; wait $OXMEM || true
           sleep 1
" + &start(&format!("{args} --reconnect"), &["nbd0"])
        + "grep -q 'nbd0 reconnected' /tmp/oxmem.log
           dd if=/dev/urandom of=/mnt/after bs=1M count=4 conv=fsync 2>/dev/null
           md5sum -c /tmp/before.md5
           umount /mnt
           e2fsck -fn /dev/nbd0
           stop_oxmem
           grep -Eq 'writes [1-9]' /tmp/oxmem.log  # the restarted process served the writes
";
    let outcome = guest("nbd-oxmem-restart").script(&script).run().unwrap();
    outcome.expect_pass().unwrap();
}
