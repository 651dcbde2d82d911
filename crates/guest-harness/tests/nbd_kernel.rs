//! oxio's kernel attach proven against the real Linux NBD driver inside a guest: a statically
//! linked `oxmem-nbd` attaches memory to `/dev/nbdN` by ioctl and by netlink, and the guest
//! puts a real ext4 filesystem on it.
//! Local memory and files are the backends here; tests/omnixtend_guest.rs puts the same
//! filesystem on OmniXtend memory served from the host.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ext4_round_trip, nbd_guest as guest, start_oxmem as start};

#[test]
fn oxmem_nbd_ioctl_attach_carries_ext4() {
    let script = start(
        "--backend memory --attach ioctl --size 128M --device /dev/nbd0",
        &["nbd0"],
    ) + &ext4_round_trip("nbd0", 8)
        // mlockall held, and every thread is an I/O flusher (PF_MEMALLOC_NOIO, 0x80000).
        + "grep -E '^VmLck:[[:space:]]+[1-9]' /proc/$OXMEM/status
           for t in /proc/$OXMEM/task/*; do
               awk '{ if (and($9, 524288) == 0) { print FILENAME \": no PF_MEMALLOC_NOIO\"; exit 1 } }' $t/stat
           done\n"
        // A second oxmem-nbd on the same device is refused and leaves the first one serving.
        + "! oxmem-nbd --backend memory --size 128M --device /dev/nbd0 2>/tmp/second.log
           cat /tmp/second.log; grep -q 'is in use' /tmp/second.log
           oxio-guest bench /dev/nbd0 read 4K 1M\n"
        // SIGUSR1 prints live statistics.
        + "kill -USR1 $OXMEM; i=0; until grep -q 'nbd0: connections 1 (1 active)' /tmp/oxmem.log; do i=$((i + 1)); [ $i -lt 100 ]; sleep 0.1; done\n"
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
         oxmem-nbd --status | tee /tmp/status
         grep -qx 'nbd1 connected' /tmp/status && grep -qx 'nbd2 connected' /tmp/status
         grep -qx 'nbd3 disconnected' /tmp/status
         oxio-guest fill /dev/nbd2 0 4M 22
"
        + &ext4_round_trip("nbd1", 8)
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
           # RECONFIGURE only replaces sockets the kernel has seen die
           i=0; until dmesg | grep -q 'nbd0: Receive control failed'; do i=$((i + 1)); [ $i -lt 100 ]; sleep 0.1; done
           sleep 0.2
" + &start(&format!("{args} --reconnect"), &["nbd0"])
        + "grep -q 'nbd0 reconnected' /tmp/oxmem.log
           # A second taker while this one lives is told the kernel kept nothing.
           ! oxmem-nbd --backend file:/tmp/backing --attach netlink --size 64M --device /dev/nbd0 \\
               --dead-conn-timeout 60 --reconnect 2>/tmp/third.log
           cat /tmp/third.log; grep -q 'did not take the new connections' /tmp/third.log
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

#[test]
fn oxmem_nbd_replaces_a_connection_the_kernel_declared_dead() {
    // SIGSTOP holds the server past the kernel's 3 s request timeout: the kernel shuts the
    // socket down ("Connection timed out") and holds I/O for up to --dead-conn-timeout. After
    // SIGCONT the serving thread sees the dead socket and ends; oxmem-nbd's monitor hands
    // the kernel a fresh socketpair with RECONFIGURE, and the held writes complete.
    let script = start(
        "--backend memory --attach netlink --size 64M --device /dev/nbd0 --timeout 3 \
         --dead-conn-timeout 60",
        &["nbd0"],
    ) + "mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0
         mount -t ext4 /dev/nbd0 /mnt
         dd if=/dev/urandom of=/mnt/before bs=1M count=4 2>/dev/null
         sync
         md5sum /mnt/before > /tmp/before.md5
         dd if=/dev/urandom of=/tmp/during bs=1M count=4 2>/dev/null
         timeouts=$(dmesg | grep -c 'nbd0: Connection timed out' || true)
         kill -STOP $OXMEM
         cp /tmp/during /mnt/during
         sync &
         SYNC=$!
         i=0; until [ \"$(dmesg | grep -c 'nbd0: Connection timed out')\" -gt \"$timeouts\" ]; do
             i=$((i + 1)); [ $i -lt 300 ]; sleep 0.1
         done
         kill -CONT $OXMEM
         i=0; until grep -q 'nbd0 reconnected 1 dead connection' /tmp/oxmem.log; do
             i=$((i + 1)); [ $i -lt 300 ]; sleep 0.1
         done
         wait $SYNC
         oxmem-nbd --status | grep -qx 'nbd0 connected'
         umount /mnt
         echo 3 > /proc/sys/vm/drop_caches
         mount -t ext4 /dev/nbd0 /mnt
         md5sum -c /tmp/before.md5
         cmp /tmp/during /mnt/during
         umount /mnt
         e2fsck -fn /dev/nbd0
         stop_oxmem
";
    let outcome = guest("nbd-oxmem-revive").script(&script).run().unwrap();
    outcome.expect_pass().unwrap();
    eprintln!("revive guest: {:.1} s", outcome.elapsed.as_secs_f64());
}

#[test]
fn sigterm_while_the_guest_writes_keeps_every_acknowledged_write() {
    // The writer prints `written END` after each O_DIRECT write the device acknowledged.
    // ioctl attach with two sockets (NBD_SET_SOCK twice): writes spread over both connections.
    let args = "--backend file:/tmp/backing --size 64M --device /dev/nbd0 --connections 2";
    let script = "dd if=/dev/zero of=/tmp/backing bs=1M count=64 2>/dev/null\n".to_string()
        + &start(args, &["nbd0"])
        + "oxio-guest fill-direct /dev/nbd0 0 48M 5 64K >/tmp/progress 2>&1 &
           WRITER=$!
           i=0; until [ \"$(wc -l </tmp/progress)\" -ge 40 ]; do i=$((i + 1)); [ $i -lt 300 ]; sleep 0.1; done
           stop_oxmem
           grep -q 'connections 2 (0 active)' /tmp/oxmem.log
           # The writer fails (the device is gone) or finished; it never hangs.
           wait $WRITER || true
           tail -n 2 /tmp/progress
           acked=$(grep '^written' /tmp/progress | tail -n 1 | cut -d' ' -f2)
           echo \"acknowledged: $acked bytes\"
           [ \"$acked\" -ge $((40 * 65536)) ]
"
        + &start(args, &["nbd0"])
        + "oxio-guest check /dev/nbd0 0 $acked 5
           stop_oxmem
";
    let outcome = guest("nbd-oxmem-sigterm-drain")
        .script(&script)
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
}
