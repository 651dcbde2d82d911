//! Smoke tests of the guest harness itself: a real guest boots, loads modules, sees a virtio
//! disk the host prepared, writes to it, and reports through isa-debug-exit; a failing script
//! is reported as a failure, not a pass.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use oxio_guest_harness::{pattern, Guest, GuestResult};

const SEED_HOST: u64 = 0x5eed;
const SEED_GUEST: u64 = 0x9e57;
const DISK: u64 = 8 << 20;

#[test]
fn guest_boots_reads_host_pattern_and_writes_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mut image = vec![0u8; usize::try_from(DISK).unwrap()];
    pattern::fill(&mut image[..1 << 20], 0, SEED_HOST);
    std::fs::write(&disk, &image).unwrap();

    let mut drive = std::ffi::OsString::from("format=raw,if=none,id=d0,cache=unsafe,file=");
    drive.push(&disk);
    let outcome = Guest::new("smoke-virtio-blk")
        .modules(["virtio_pci", "virtio_blk"])
        .qemu_args(["-drive".into(), drive])
        .qemu_args(["-device", "virtio-blk-pci,drive=d0"])
        .script(&format!(
            "grep -q '^virtio_blk ' /proc/modules
             wait_for /dev/vda
             [ \"$(cat /sys/block/vda/size)\" = {sectors} ]
             oxio-guest check /dev/vda 0 1M {SEED_HOST}
             ! oxio-guest check /dev/vda 0 1M {wrong}
             oxio-guest fill /dev/vda 4M 1M {SEED_GUEST}",
            sectors = DISK / 512,
            wrong = SEED_HOST + 1,
        ))
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
    assert!(outcome.serial.contains("OXIO-GUEST-BOOTED"));
    eprintln!(
        "smoke guest: boot to exit in {:.2} s",
        outcome.elapsed.as_secs_f64()
    );

    let image = std::fs::read(&disk).unwrap();
    let written = &image[4 << 20..5 << 20];
    assert_eq!(pattern::first_mismatch(written, 4 << 20, SEED_GUEST), None);
}

#[test]
fn a_failing_script_is_reported_with_its_status() {
    let outcome = Guest::new("smoke-fail")
        .script("echo about to fail; exit 7")
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap();
    assert_eq!(outcome.result, GuestResult::Failed(7), "{}", outcome.serial);
    assert!(outcome.expect_pass().is_err());
    assert!(outcome.serial.contains("about to fail"));
}

#[test]
fn a_host_waits_for_a_mark_while_the_guest_runs() {
    let mut guest = Guest::new("smoke-mark")
        .script("mark ready; sleep 1; mark done")
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap();
    guest
        .wait_for_serial("OXIO-MARK ready", Duration::from_secs(100))
        .unwrap();
    let outcome = guest.wait().unwrap();
    outcome.expect_pass().unwrap();
    assert!(outcome.serial.contains("OXIO-MARK done"));
}

#[test]
fn host_programs_run_with_their_shared_libraries() {
    // mkfs.ext4 and e2fsck are dynamically linked: the harness copies what ldd lists.
    let outcome = Guest::new("smoke-host-programs")
        .module("loop")
        .host_program("mkfs.ext4")
        .host_program("e2fsck")
        .script(
            "dd if=/dev/zero of=/tmp/disk bs=1M count=32 2>/dev/null
             losetup /dev/loop0 /tmp/disk
             mkfs.ext4 -q -F /dev/loop0
             mount -t ext4 /dev/loop0 /mnt
             echo hello > /mnt/file
             umount /mnt
             e2fsck -fn /dev/loop0
             losetup -d /dev/loop0",
        )
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
}

#[test]
fn a_hung_guest_is_killed_at_its_timeout() {
    let outcome = Guest::new("smoke-timeout")
        .script("sleep 600")
        .timeout(Duration::from_secs(8))
        .run()
        .unwrap();
    assert_eq!(outcome.result, GuestResult::TimedOut, "{}", outcome.serial);
    assert!(outcome.elapsed < Duration::from_secs(30));
}

/// The vhost-user pattern every device test follows, proven with QEMU's own reference
/// backend: shared guest RAM, a backend listening before QEMU starts, a chardev socket.
#[test]
fn vhost_user_blk_with_the_reference_backend() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mut image = vec![0u8; 16 << 20];
    pattern::fill(&mut image[..2 << 20], 0, SEED_HOST);
    std::fs::write(&disk, &image).unwrap();
    let sock = dir.path().join("vhost.sock");
    let qsd = oxio_guest_harness::find_program("qemu-storage-daemon").unwrap();
    let daemon = std::process::Command::new(qsd)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=disk,filename={}", disk.display()))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues=2",
            sock.display()
        ))
        .spawn()
        .unwrap();
    let _daemon = KillOnDrop(daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = Guest::new("smoke-vhost-user-blk")
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .qemu_args(["-chardev".into(), {
            let mut arg = std::ffi::OsString::from("socket,id=vu0,path=");
            arg.push(&sock);
            arg
        }])
        .qemu_args(["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=2"])
        .script(&format!(
            "wait_for /dev/vda
             oxio-guest check /dev/vda 0 2M {SEED_HOST}
             oxio-guest fill /dev/vda 8M 1M {SEED_GUEST}"
        ))
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(
        pattern::first_mismatch(&image[8 << 20..9 << 20], 8 << 20, SEED_GUEST),
        None
    );
}

/// A host process killed when the test ends, pass or panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
