//! Benchmark (ignored by default; run by `benches/vhost-user-blk.sh`): fio inside a TCG guest
//! against `oxio vhost-user blk` and against qemu-storage-daemon's vhost-user-blk export, on
//! the same RAM-backed file, in one run. Prints a table with oxio's ratio to the peer. No
//! assertion on speed: the figures go to docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxio_guest_harness::{find_program, static_binary, Guest};

/// Workloads: name, fio arguments.
const WORKLOADS: &[(&str, &str)] = &[
    ("seq-write 1M QD8", "--rw=write --bs=1M --iodepth=8"),
    ("seq-read 1M QD8", "--rw=read --bs=1M --iodepth=8"),
    ("rand-write 4K QD32", "--rw=randwrite --bs=4k --iodepth=32"),
    ("rand-read 4K QD32", "--rw=randread --bs=4k --iodepth=32"),
];

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} not listening",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_oxio(sock: &Path, image: &Path) -> Peer {
    let child = Command::new(static_binary("oxio", "oxio").unwrap())
        .args(["vhost-user", "blk", "--socket"])
        .arg(sock)
        .arg("--backend")
        .arg(format!("file:{}", image.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(sock);
    Peer(child)
}

fn start_qsd(sock: &Path, image: &Path) -> Peer {
    let child = Command::new(find_program("qemu-storage-daemon").unwrap())
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=disk,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(sock);
    Peer(child)
}

/// The workloads to run: all, or those whose name contains `OXIO_BENCH_ONLY`.
fn workloads() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("OXIO_BENCH_ONLY").unwrap_or_default();
    WORKLOADS
        .iter()
        .copied()
        .filter(|(w, _)| w.contains(only.as_str()))
        .collect()
}

/// One workload's result.
struct Figures {
    workload: String,
    mib_s: f64,
    iops: f64,
    /// Guest interrupts per request.
    irq_per_req: f64,
}

/// Runs every workload in a guest.
fn measure(name: &str, sock: &Path, seconds: u32) -> Vec<Figures> {
    let mut chardev = OsString::from("socket,id=vu0,path=");
    chardev.push(sock);
    // Besides throughput, count the guest's interrupts per completed request: a device that
    // interrupts less costs the guest less, whatever the host's load.
    let mut script = String::from(
        "wait_for /dev/vda\n\
         irqs() { awk '/virtio.*req/ { n += $2 } END { print n + 0 }' /proc/interrupts; }\n",
    );
    for (i, (_, args)) in workloads().iter().enumerate() {
        script.push_str(&format!(
            "before=$(irqs)\n\
             fio --minimal --name=w{i} --filename=/dev/vda --ioengine=libaio --direct=1 \
             --size=128M --time_based --runtime={seconds} {args} > /tmp/r\n\
             after=$(irqs)\n\
             awk -F';' -v irq=$((after - before)) \
             '{{print \"BENCH {i}\", $7 + $48, $8 + $49, $6 + $47, irq}}' /tmp/r\n"
        ));
    }
    let outcome = Guest::new(name)
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .host_program("fio")
        .qemu_args(["-chardev".into(), chardev])
        .qemu_args(["-device", "vhost-user-blk-pci,chardev=vu0"])
        .timeout(Duration::from_secs(u64::from(seconds) * 8 + 120))
        .script(&script)
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
    let log = &outcome.serial;
    workloads()
        .iter()
        .enumerate()
        .map(|(i, (w, _))| {
            let prefix = format!("BENCH {i} ");
            let line = log
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no result for {w} in the serial log"));
            let mut fields = line[prefix.len()..].split_whitespace();
            let mut next = || -> f64 { fields.next().unwrap().parse().unwrap() };
            let (kib_s, iops, kib, irqs) = (next(), next(), next(), next());
            let bytes_per_req = kib_s / iops.max(1.0);
            Figures {
                workload: (*w).to_string(),
                mib_s: kib_s / 1024.0,
                iops,
                irq_per_req: irqs / (kib / bytes_per_req).max(1.0),
            }
        })
        .collect()
}

#[test]
#[ignore = "benchmark: run benches/vhost-user-blk.sh"]
fn vhost_user_blk_guest_fio_oxio_vs_qemu_storage_daemon() {
    let seconds: u32 = std::env::var("OXIO_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let sock = dir.path().join("vu.sock");

    let peer = start_oxio(&sock, &image);
    let ours = measure("bench-vhost-user-blk-oxio", &sock, seconds);
    drop(peer);
    let _ = std::fs::remove_file(&sock);
    let peer = start_qsd(&sock, &image);
    let theirs = measure("bench-vhost-user-blk-qsd", &sock, seconds);
    drop(peer);

    println!(
        "| workload ({seconds} s each, guest fio libaio O_DIRECT) | oxio MiB/s | oxio IOPS | \
         oxio irq/req | qemu-storage-daemon MiB/s | IOPS | irq/req | ratio (IOPS) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (a, b) in ours.iter().zip(&theirs) {
        let ratio = if b.iops > 0.0 {
            a.iops / b.iops
        } else {
            f64::NAN
        };
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {:.2} | {ratio:.2} |",
            a.workload, a.mib_s, a.iops, a.irq_per_req, b.mib_s, b.iops, b.irq_per_req
        );
    }
}
