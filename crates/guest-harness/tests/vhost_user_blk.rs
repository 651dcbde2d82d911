//! `oxio vhost-user blk` proven by the Linux `virtio_blk` driver: QEMU's vhost-user-blk-pci
//! in a TCG guest talks to our daemon on the host, which serves a file the host then checks.
//!
//! - a pattern written by the host reads back in the guest, a pattern written by the guest
//!   reads back on the host;
//! - ext4: mkfs, mount, write, umount in the guest, then `e2fsck -fn` clean on the host;
//! - `blkdiscard` and `blkdiscard -z` leave zeros (checked on the host image);
//! - a `--read-only` export: the guest sees a read-only disk and its writes fail;
//! - two queues used by two vCPUs; the packed ring; EVENT_IDX off; the memory backend;
//! - a guest disk on OmniXtend remote memory: `oxio memory-node` over UDP with a file behind
//!   it, which the host checks after the guest's ext4 round trip;
//! - SIGTERM on the daemon exits cleanly after the guest is gone;
//! - restart: the daemon is killed (SIGKILL), or stopped with SIGTERM (it drains and exits 0),
//!   while the guest writes; a new one takes the socket, QEMU reconnects (`reconnect-ms`), the
//!   guest carries on and every write it saw acknowledged is on the disk;
//! - inflight tracking (INFLIGHT_SHMFD), split and packed: SIGKILL with 32 verified writes in
//!   flight on a backend that completes out of order; the restarted daemon resubmits them and
//!   fio reads back every block without an I/O error.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxio_guest_harness::{find_program, pattern, static_binary, wait_for_socket, Guest};

const SEED_HOST: u64 = 0x5eed_0001;
const SEED_GUEST: u64 = 0x5eed_0002;
const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;

/// `oxio vhost-user blk` on the host; SIGKILLed on drop if a test fails before `stop`.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(sock: &Path, image: &Path, extra: &[&str]) -> Daemon {
        Self::start_spec(sock, &format!("file:{}", image.display()), extra)
    }

    fn start_spec(sock: &Path, backend: &str, extra: &[&str]) -> Daemon {
        let oxio = static_binary("oxio", "oxio").unwrap();
        let log = sock.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(oxio)
            .args(["vhost-user", "blk", "--socket"])
            .arg(sock)
            .args(["--backend", backend])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("OXIO_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        assert!(
            wait_for_socket(sock, Duration::from_secs(20)),
            "daemon did not listen on {}",
            sock.display()
        );
        Daemon {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no draining, no goodbye (a crash).
    fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: the daemon drains, flushes and exits 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "daemon exited with {status}\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn image_with_host_pattern(dir: &Path) -> PathBuf {
    let image = dir.join("disk.img");
    let mut data = vec![0u8; usize::try_from(DISK).unwrap()];
    // Host pattern at 40 MiB (read by the guest), junk at 56 MiB (to be discarded).
    pattern::fill(&mut data[40 << 20..42 << 20], 40 * MIB, SEED_HOST);
    pattern::fill(&mut data[56 << 20..60 << 20], 56 * MIB, SEED_HOST ^ 1);
    std::fs::write(&image, &data).unwrap();
    image
}

fn chardev(sock: &Path, extra: &str) -> [OsString; 2] {
    let mut arg = OsString::from("socket,id=vu0,path=");
    arg.push(sock);
    arg.push(extra);
    ["-chardev".into(), arg]
}

/// A guest with our disk as /dev/vda.
fn guest(name: &str, sock: &Path, device: &str) -> Guest {
    Guest::new(name)
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .qemu_args(chardev(sock, ""))
        .qemu_args([
            "-device",
            &format!("vhost-user-blk-pci,chardev=vu0{device}"),
        ])
}

fn run(guest: Guest, daemon: &Daemon) {
    let outcome = guest.run().unwrap();
    if let Err(e) = outcome.expect_pass() {
        panic!("{e}\n--- daemon log ---\n{}", daemon.log());
    }
}

/// The feature bit string the guest negotiated, as `/sys/bus/virtio/devices/*/features`.
const FEATURES: &str = "f=$(cat /sys/block/vda/device/features); echo \"features $f\"";

#[test]
fn guest_reads_writes_formats_and_discards_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, &[]);
    let blkdiscard = find_program("blkdiscard").unwrap();
    let g = guest("vhost-user-blk-file", &sock, "")
        .host_program("mkfs.ext4")
        .program_at(&blkdiscard, "/usr/bin/blkdiscard")
        .script(&format!(
            "wait_for /dev/vda
             test \"$(cat /sys/block/vda/size)\" = {sectors}
             test \"$(cat /sys/block/vda/ro)\" = 0
             {FEATURES}
             oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}
             oxio-guest fill /dev/vda {guest_off} 1M {SEED_GUEST}
             /usr/bin/blkdiscard -o {d1} -l 2M /dev/vda
             /usr/bin/blkdiscard -z -o {d2} -l 2M /dev/vda
             mkfs.ext4 -q -F /dev/vda 32M
             mount -t ext4 /dev/vda /mnt
             mkdir /mnt/dir
             touch /mnt/dir/file
             oxio-guest fill /mnt/dir/file 0 3M {SEED_GUEST}
             sync
             umount /mnt
             mount -t ext4 -o ro /dev/vda /mnt
             oxio-guest check /mnt/dir/file 0 3M {SEED_GUEST}
             umount /mnt",
            sectors = DISK / 512,
            host_off = 40 * MIB,
            guest_off = 48 * MIB,
            d1 = 56 * MIB,
            d2 = 58 * MIB,
        ));
    run(g, &daemon);
    daemon.stop();

    let data = std::fs::read(&image).unwrap();
    let at = |mib: u64, len: u64| {
        &data[usize::try_from(mib * MIB).unwrap()..][..usize::try_from(len * MIB).unwrap()]
    };
    assert_eq!(
        pattern::first_mismatch(at(48, 1), 48 * MIB, SEED_GUEST),
        None
    );
    assert_eq!(
        pattern::first_mismatch(at(40, 2), 40 * MIB, SEED_HOST),
        None,
        "host pattern untouched"
    );
    assert!(
        at(56, 4).iter().all(|&b| b == 0),
        "discarded and zeroed ranges read as zeros"
    );
    let e2fsck = find_program("e2fsck").unwrap();
    let out = Command::new(e2fsck)
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn read_only_export_refuses_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let before = std::fs::read(&image).unwrap();
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, &["--read-only"]);
    let g = guest("vhost-user-blk-ro", &sock, "").script(&format!(
        "wait_for /dev/vda
         test \"$(cat /sys/block/vda/ro)\" = 1
         oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}
         if oxio-guest fill /dev/vda 0 1M {SEED_GUEST}; then echo 'write succeeded'; exit 1; fi
         # The kernel refuses these itself (EPERM) because the device says read-only; the
         # device's own refusal of OUT requests is covered by the blk device tests.
         blockdev --setrw /dev/vda
         if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct conv=fsync; then
             echo 'direct write succeeded'; exit 1
         fi",
        host_off = 40 * MIB,
    ));
    run(g, &daemon);
    daemon.stop();
    assert!(
        std::fs::read(&image).unwrap() == before,
        "a read-only image changed"
    );
}

#[test]
fn two_queues_serve_two_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, &["--num-queues", "2"]);
    // One writer pinned to each vCPU, so blk-mq submits on both hardware queues.
    let g = guest("vhost-user-blk-mq", &sock, ",num-queues=2")
        .smp(2)
        .script(&format!(
            "wait_for /dev/vda
             test \"$(ls /sys/block/vda/mq | wc -l)\" = 2
             taskset 1 oxio-guest fill /dev/vda 0 4M {SEED_GUEST} &
             a=$!
             taskset 2 oxio-guest fill /dev/vda 4M 4M {SEED_GUEST} &
             b=$!
             wait $a; wait $b
             echo 3 > /proc/sys/vm/drop_caches
             taskset 2 oxio-guest check /dev/vda 0 4M {SEED_GUEST}
             taskset 1 oxio-guest check /dev/vda 4M 4M {SEED_GUEST}
             oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}",
            host_off = 40 * MIB,
        ));
    run(g, &daemon);
    let log = daemon.log();
    daemon.stop();
    assert!(log.contains("queues=[0, 1]"), "both queues started:\n{log}");
    let data = std::fs::read(&image).unwrap();
    assert_eq!(
        pattern::first_mismatch(&data[..8 << 20], 0, SEED_GUEST),
        None
    );
}

#[test]
fn two_queues_offered_one_vcpu_uses_one() {
    // Linux uses min(num_queues, CPUs) queues: QEMU enables vring 1 but never sets it up, and
    // the daemon must run vring 0 alone.
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, &["--num-queues", "2"]);
    let g = guest("vhost-user-blk-mq-1cpu", &sock, ",num-queues=2").script(&format!(
        "wait_for /dev/vda
         test \"$(ls /sys/block/vda/mq | wc -l)\" = 1
         oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}
         oxio-guest fill /dev/vda 0 4M {SEED_GUEST}",
        host_off = 40 * MIB,
    ));
    run(g, &daemon);
    let log = daemon.log();
    daemon.stop();
    assert!(
        !log.contains("queues=[0, 1]"),
        "vring 1 was never set up:\n{log}"
    );
    let data = std::fs::read(&image).unwrap();
    assert_eq!(
        pattern::first_mismatch(&data[..4 << 20], 0, SEED_GUEST),
        None
    );
}

/// Pattern both ways on a device variant, and the negotiated feature bit checked.
fn variant(name: &str, device: &str, bit: usize, want: char) {
    variant_with(name, device, bit, want, &[]);
}

/// [`variant`] with extra daemon arguments.
fn variant_with(name: &str, device: &str, bit: usize, want: char, daemon_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, daemon_args);
    let g = guest(name, &sock, device).script(&format!(
        "wait_for /dev/vda
         {FEATURES}
         test \"$(echo $f | cut -c{pos})\" = {want}
         oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}
         oxio-guest fill /dev/vda 0 8M {SEED_GUEST}
         echo 3 > /proc/sys/vm/drop_caches
         oxio-guest check /dev/vda 0 8M {SEED_GUEST}",
        pos = bit + 1,
        host_off = 40 * MIB,
    ));
    run(g, &daemon);
    daemon.stop();
    let data = std::fs::read(&image).unwrap();
    assert_eq!(
        pattern::first_mismatch(&data[..8 << 20], 0, SEED_GUEST),
        None
    );
}

#[test]
fn packed_ring() {
    variant("vhost-user-blk-packed", ",packed=on", 34, '1');
}

#[test]
fn event_idx_off() {
    variant("vhost-user-blk-no-event-idx", ",event_idx=off", 29, '0');
}

/// Polling (notifications off while the worker polls) and completion coalescing, on the
/// split ring without EVENT_IDX (VRING_USED_F_NO_NOTIFY) and on the packed ring.
#[test]
fn polling_and_coalescing_split_no_event_idx_and_packed() {
    let args = ["--poll-max-us", "200", "--coalesce-us", "100"];
    variant_with(
        "vhost-user-blk-poll-split",
        ",event_idx=off",
        29,
        '0',
        &args,
    );
    variant_with("vhost-user-blk-poll-packed", ",packed=on", 34, '1', &args);
}

#[test]
fn daemon_killed_while_the_guest_writes_is_restarted_and_nothing_acknowledged_is_lost() {
    restart_mid_write("vhost-user-blk-restart", false);
}

#[test]
fn daemon_stopped_by_sigterm_while_the_guest_writes_drains_and_a_new_one_resumes() {
    restart_mid_write("vhost-user-blk-sigterm", true);
}

/// Stops the daemon (SIGTERM if `graceful`, else SIGKILL) while the guest writes, starts a
/// new one on the same socket, and checks that the guest finished and nothing was lost.
fn restart_mid_write(name: &str, graceful: bool) {
    const CHUNKS: u64 = 256;
    const CHUNK: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_host_pattern(dir.path());
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start(&sock, &image, &[]);
    // Each chunk is written and fsynced by its own process: once `oxio-guest fill` returns,
    // the device has acknowledged the chunk.
    let mut running = Guest::new(name)
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .qemu_args(chardev(&sock, ",reconnect-ms=200"))
        .qemu_args(["-device", "vhost-user-blk-pci,chardev=vu0"])
        .timeout(Duration::from_secs(300))
        .script(&format!(
            "wait_for /dev/vda
             mark ready
             i=0
             while [ $i -lt {CHUNKS} ]; do
                 oxio-guest fill /dev/vda $((i * {CHUNK})) {CHUNK} {SEED_GUEST}
                 i=$((i + 1))
             done
             mark written
             echo 3 > /proc/sys/vm/drop_caches
             oxio-guest check /dev/vda 0 {total} {SEED_GUEST}
             oxio-guest check /dev/vda {host_off} 2M {SEED_HOST}",
            total = CHUNKS * CHUNK,
            host_off = 40 * MIB,
        ))
        .spawn()
        .unwrap();
    running
        .wait_for_serial("OXIO-MARK ready", Duration::from_secs(120))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    if graceful {
        daemon.stop(); // asserts a clean exit after draining
    } else {
        daemon.kill();
    }
    let serial = running.serial();
    let started = serial.matches("oxio-guest fill").count();
    eprintln!("daemon stopped while the guest was on chunk {started} of {CHUNKS}");
    assert!(
        started > 0 && !serial.contains("OXIO-MARK written"),
        "the daemon was not stopped during the writes: the test proved nothing"
    );
    std::thread::sleep(Duration::from_millis(300));
    let daemon = Daemon::start(&sock, &image, &[]);
    let outcome = running.wait().unwrap();
    if let Err(e) = outcome.expect_pass() {
        panic!("{e}\n--- restarted daemon log ---\n{}", daemon.log());
    }
    let log = daemon.log();
    daemon.stop();
    assert!(
        log.contains("device started"),
        "the guest resumed on the new daemon:\n{log}"
    );
    let data = std::fs::read(&image).unwrap();
    let total = usize::try_from(CHUNKS * CHUNK).unwrap();
    assert_eq!(pattern::first_mismatch(&data[..total], 0, SEED_GUEST), None);
}

#[test]
fn daemon_killed_with_many_writes_in_flight_resubmits_them_split_ring() {
    killed_with_writes_in_flight("vhost-user-blk-inflight-split", false);
}

#[test]
fn daemon_killed_with_many_writes_in_flight_resubmits_them_packed_ring() {
    killed_with_writes_in_flight("vhost-user-blk-inflight-packed", true);
}

/// Reads queue 0's inflight region (vhost-user "Inflight I/O tracking" layout) through the
/// daemon's fd of it: how many requests are in flight, and how many requests popped after the
/// oldest of those have already completed (out-of-order completion).
fn inflight_now(region: &std::fs::File, packed: bool) -> (usize, usize) {
    use std::os::unix::fs::FileExt;
    let (header, entry) = if packed { (32, 32) } else { (16, 16) };
    let mut buf = vec![0u8; header + entry * 1024];
    let n = region.read_at(&mut buf, 0).unwrap_or(0);
    if n < header {
        return (0, 0);
    }
    let desc_num = usize::from(u16::from_le_bytes([buf[10], buf[11]])).min((n - header) / entry);
    let (mut live, mut done) = (Vec::new(), Vec::new());
    for i in 0..desc_num {
        let e = &buf[header + entry * i..header + entry * (i + 1)];
        let counter = u64::from_le_bytes(e[8..16].try_into().unwrap());
        if e[0] == 1 {
            live.push(counter)
        } else {
            done.push(counter)
        }
    }
    let oldest = live.iter().min().copied().unwrap_or(u64::MAX);
    (live.len(), done.iter().filter(|&&c| c > oldest).count())
}

/// The daemon's inflight memfd, opened (read-only) through its mapping in /proc (the daemon
/// keeps the mapping, not the fd; needs root, as the guest tests do).
fn inflight_file(pid: u32) -> Option<std::fs::File> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/map_files")).ok()?;
    dir.flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().contains("oxio-vhost-inflight"))
        })
        .and_then(|e| std::fs::File::open(e.path()).ok())
}

/// `resubmit=N overtaken=M` from a restarted daemon's log line, if it resubmitted anything.
fn resubmitted(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.contains("resubmitting requests"))?;
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some((field("resubmit="), field("overtaken=")))
}

/// INFLIGHT_SHMFD: fio submits verified random writes (16-256 KiB) 32 at a time, keeping up
/// to 32 in flight, while the daemon,
/// whose thread-pool file engine completes them out of order, is SIGKILLed and restarted
/// several times. Each restarted daemon must resubmit what its predecessor left in flight
/// (the log says how many, and how many later requests had overtaken them: proof that an
/// in-order replay from the rings could not have recovered), fio must see no I/O error and
/// read back every block it wrote, and the guest kernel must log no I/O error.
fn killed_with_writes_in_flight(name: &str, packed: bool) {
    // fio runs round after round for this long after `ready` (the kills take a few seconds
    // each), at least 4 rounds.
    const BUSY_SECONDS: u32 = 40;
    const KILLS: usize = 3;
    let device = if packed { ",packed=on" } else { "" };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(DISK)
        .unwrap();
    let sock = dir.path().join("vu.sock");
    // Four threads doing O_DIRECT writes to a file on a real disk: slow enough that requests
    // queue up in the daemon, and they finish out of order.
    let engine: &[&str] = &["--engine", "threads", "--direct"];
    let mut daemon = Daemon::start(&sock, &image, engine);
    let mut running = Guest::new(name)
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .host_program("fio")
        .qemu_args(chardev(&sock, ",reconnect-ms=100"))
        .qemu_args([
            "-device",
            &format!("vhost-user-blk-pci,chardev=vu0{device}"),
        ])
        .timeout(Duration::from_secs(400))
        .script(&format!(
            "wait_for /dev/vda
             mark ready
             r=0
             end=$(( $(cut -d. -f1 /proc/uptime) + {BUSY_SECONDS} ))
             while [ $r -lt 4 ] || [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
                 fio --name=r$r --filename=/dev/vda --ioengine=libaio --direct=1 \
                     --iodepth=32 --iodepth_batch_submit=32 --iodepth_batch_complete_min=8 \
                     --rw=randwrite --bsrange=16k-256k --offset=$(( (r % 4) * 16 ))M \
                     --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 \
                     --randseed=$r --output=/tmp/fio.out || {{ cat /tmp/fio.out; exit 1; }}
                 r=$((r + 1))
             done
             mark written
             if dmesg | grep -i -e 'I/O error' -e 'critical' -e 'blk_update'; then exit 1; fi"
        ))
        .spawn()
        .unwrap();
    running
        .wait_for_serial("OXIO-MARK ready", Duration::from_secs(120))
        .unwrap();
    let mut seen = Vec::new();
    for kill in 0..KILLS {
        // Kill when the region shows several requests in flight and at least one later
        // request already completed (the state an in-order replay would get wrong).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut region = None;
        let mut at_kill = (0, 0);
        while Instant::now() < deadline && !running.serial().contains("OXIO-MARK written") {
            if region.is_none() {
                region = inflight_file(daemon.pid());
            }
            if let Some(f) = &region {
                at_kill = inflight_now(f, packed);
                if at_kill.0 >= 4 && at_kill.1 >= 1 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        assert!(
            !running.serial().contains("OXIO-MARK written"),
            "the guest finished before kill {kill}: the test proved nothing"
        );
        daemon.kill();
        std::thread::sleep(Duration::from_millis(150));
        daemon = Daemon::start(&sock, &image, engine);
        // Wait until the new daemon has started the device (and logged what it resubmitted).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.log().contains("device started") {
            assert!(
                Instant::now() < deadline,
                "QEMU did not reconnect:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let r = resubmitted(&daemon.log());
        eprintln!(
            "kill {kill}: region showed (in flight, overtaken) = {at_kill:?}; \
             the new daemon resubmitted {r:?}"
        );
        seen.push(r);
        std::thread::sleep(Duration::from_millis(500));
    }
    let outcome = running.wait().unwrap();
    if let Err(e) = outcome.expect_pass() {
        panic!("{e}\n--- last daemon log ---\n{}", daemon.log());
    }
    daemon.stop();
    assert!(
        seen.iter().flatten().any(|&(n, o)| n > 0 && o > 0),
        "no kill caught requests in flight that had been overtaken: {seen:?}"
    );
}

#[test]
fn memory_backend_holds_an_ext4_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start_spec(&sock, "memory:64M", &["--serial", "ramdisk-1"]);
    let g = guest("vhost-user-blk-memory", &sock, "")
        .host_program("mkfs.ext4")
        .script(&format!(
            "wait_for /dev/vda
             test \"$(cat /sys/block/vda/size)\" = {sectors}
             test \"$(cat /sys/block/vda/serial)\" = ramdisk-1
             oxio-guest fill /dev/vda 48M 4M {SEED_GUEST}
             mkfs.ext4 -q -F /dev/vda 32M
             mount -t ext4 /dev/vda /mnt
             touch /mnt/file
             oxio-guest fill /mnt/file 0 2M {SEED_HOST}
             umount /mnt
             echo 3 > /proc/sys/vm/drop_caches
             mount -t ext4 -o ro /dev/vda /mnt
             oxio-guest check /mnt/file 0 2M {SEED_HOST}
             umount /mnt
             oxio-guest check /dev/vda 48M 4M {SEED_GUEST}",
            sectors = DISK / 512,
        ));
    run(g, &daemon);
    daemon.stop();
}

/// `oxio memory-node` over UDP on the host, backed by a file the test can read afterwards.
struct MemoryNode(Child);

impl Drop for MemoryNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guest_disk_on_omnixtend_remote_memory() {
    const NODE_MAC: &str = "04:00:00:00:00:01";
    let dir = tempfile::tempdir().unwrap();
    let memory = dir.path().join("remote-memory.img");
    std::fs::File::create(&memory)
        .unwrap()
        .set_len(DISK)
        .unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node_log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let _node = MemoryNode(
        Command::new(static_binary("oxio", "oxio").unwrap())
            .args(["memory-node", "--udp", &format!("127.0.0.1:{port}")])
            .args(["--mac", NODE_MAC, "--size", &DISK.to_string(), "--file"])
            .arg(&memory)
            .stdout(Stdio::from(node_log.try_clone().unwrap()))
            .stderr(Stdio::from(node_log))
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let sock = dir.path().join("vu.sock");
    let daemon = Daemon::start_spec(
        &sock,
        &format!("omnixtend:{NODE_MAC}@udp:127.0.0.1:{port}"),
        &["--size", &DISK.to_string()],
    );
    let g = guest("vhost-user-blk-omnixtend", &sock, "")
        .host_program("mkfs.ext4")
        .script(&format!(
            "wait_for /dev/vda
             test \"$(cat /sys/block/vda/size)\" = {sectors}
             oxio-guest fill /dev/vda 48M 2M {SEED_GUEST}
             mkfs.ext4 -q -F /dev/vda 32M
             mount -t ext4 /dev/vda /mnt
             touch /mnt/file
             oxio-guest fill /mnt/file 0 2M {SEED_HOST}
             umount /mnt
             echo 3 > /proc/sys/vm/drop_caches
             mount -t ext4 -o ro /dev/vda /mnt
             oxio-guest check /mnt/file 0 2M {SEED_HOST}
             umount /mnt
             oxio-guest check /dev/vda 48M 2M {SEED_GUEST}",
            sectors = DISK / 512,
        ));
    run(g, &daemon);
    daemon.stop();
    // The node's memory file now holds what the guest wrote, byte for byte.
    let data = std::fs::read(&memory).unwrap();
    assert_eq!(
        pattern::first_mismatch(&data[48 << 20..50 << 20], 48 * MIB, SEED_GUEST),
        None
    );
    let e2fsck = find_program("e2fsck").unwrap();
    let out = Command::new(e2fsck)
        .arg("-fn")
        .arg(&memory)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn on the remote memory: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
