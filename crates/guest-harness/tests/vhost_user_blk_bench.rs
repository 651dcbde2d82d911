//! Benchmark (ignored by default; run by `benches/vhost-user-blk.sh`): fio inside a TCG guest
//! against `oxio vhost-user blk` and against qemu-storage-daemon's vhost-user-blk export, on
//! the same RAM-backed file (written in full first), in one run of several rounds that
//! alternate which daemon goes first. Prints medians, oxio's ratio to the peer, and two
//! figures that depend little on the machine's load: the guest's interrupts per request and
//! the daemon's CPU time per request. No assertion on speed: the figures go to
//! docs/performance.md.

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
    mib_s: f64,
    iops: f64,
    /// Guest interrupts per request.
    irq_per_req: f64,
    /// CPU time of the daemon process (all its threads) per request, in microseconds.
    cpu_us_per_req: f64,
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let field = |n: usize| -> f64 {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (field(14) + field(15)) / hz
}

/// Runs every workload in a guest; `pid` is the daemon, whose CPU time is sampled around
/// each workload. `None` when the guest stopped making progress (its I/O hung): the guest is
/// killed and the round is reported as hung instead of ending the whole run, because such
/// hangs were seen with both daemons (see docs/performance.md).
fn measure(name: &str, sock: &Path, seconds: u32, pid: u32) -> Option<Vec<Figures>> {
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
            "mark start{i}\n\
             before=$(irqs)\n\
             fio --minimal --name=w{i} --filename=/dev/vda --ioengine=libaio --direct=1 \
             --size=128M --time_based --runtime={seconds} {args} > /tmp/r\n\
             after=$(irqs)\n\
             awk -F';' -v irq=$((after - before)) \
             '{{print \"BENCH {i}\", $7 + $48, $8 + $49, $6 + $47, irq}}' /tmp/r\n"
        ));
    }
    let mut running = Guest::new(name)
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .host_program("fio")
        .qemu_args(["-chardev".into(), chardev])
        .qemu_args(["-device", "vhost-user-blk-pci,chardev=vu0"])
        .timeout(Duration::from_secs(u64::from(seconds) * 8 + 120))
        .script(&script)
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(u64::from(seconds) * 4 + 120);
    let mut cpu = Vec::new();
    for (i, (w, _)) in workloads().iter().enumerate() {
        let started = running.wait_for_serial(&format!("OXIO-MARK start{i}\n"), limit);
        let before = cpu_seconds(pid);
        let done = started.and_then(|()| running.wait_for_serial(&format!("BENCH {i} "), limit));
        if let Err(e) = done {
            eprintln!("{name}: HUNG in {w}: no result within {limit:?}; guest killed ({e:?})");
            return None;
        }
        cpu.push(cpu_seconds(pid) - before);
    }
    let outcome = running.wait().unwrap();
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
            let requests = (kib / bytes_per_req).max(1.0);
            Figures {
                mib_s: kib_s / 1024.0,
                iops,
                irq_per_req: irqs / requests,
                cpu_us_per_req: cpu[i] * 1e6 / requests,
            }
        })
        .collect::<Vec<_>>()
        .into()
}

/// Median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[test]
#[ignore = "benchmark: run benches/vhost-user-blk.sh"]
fn vhost_user_blk_guest_fio_oxio_vs_qemu_storage_daemon() {
    let env = |name: &str, default: u32| -> u32 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env("OXIO_BENCH_SECONDS", 5);
    let rounds = env("OXIO_BENCH_ROUNDS", 2).max(1);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = dir.path().join("disk.img");
    // Written in full first, so neither daemon pays for allocating the file's pages.
    std::fs::write(&image, vec![0xa5u8; 256 << 20]).unwrap();
    let sock = dir.path().join("vu.sock");

    // Rounds alternate which daemon goes first (ABBA...), so drift in the machine's load
    // over the run does not favour either.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for oxio in order {
            let _ = std::fs::remove_file(&sock);
            if oxio {
                let peer = start_oxio(&sock, &image);
                ours.push(measure(
                    "bench-vhost-user-blk-oxio",
                    &sock,
                    seconds,
                    peer.0.id(),
                ));
                drop(peer);
            } else {
                let peer = start_qsd(&sock, &image);
                theirs.push(measure(
                    "bench-vhost-user-blk-qsd",
                    &sock,
                    seconds,
                    peer.0.id(),
                ));
                drop(peer);
            }
        }
    }

    println!(
        "| workload ({seconds} s each, guest fio libaio O_DIRECT; median of {rounds} rounds) | \
         oxio MiB/s | oxio IOPS | oxio irq/req | oxio CPU µs/req | qemu-storage-daemon MiB/s | \
         IOPS | irq/req | CPU µs/req | ratio (IOPS) | ratio per round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (w, (name, _)) in workloads().iter().enumerate() {
        // Medians over the rounds that completed; a hung round has no figures.
        let col = |runs: &[Option<Vec<Figures>>], f: fn(&Figures) -> f64| {
            median(runs.iter().flatten().map(|r| f(&r[w])).collect())
        };
        let (a_iops, b_iops) = (col(&ours, |f| f.iops), col(&theirs, |f| f.iops));
        let per_round: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => format!("{:.2}", a[w].iops / b[w].iops.max(1.0)),
                (None, _) => "oxio-hung".into(),
                (_, None) => "qsd-hung".into(),
            })
            .collect();
        println!(
            "| {name} | {:.1} | {a_iops:.0} | {:.2} | {:.1} | {:.1} | {b_iops:.0} | {:.2} | {:.1} \
             | {:.2} | {} |",
            col(&ours, |f| f.mib_s),
            col(&ours, |f| f.irq_per_req),
            col(&ours, |f| f.cpu_us_per_req),
            col(&theirs, |f| f.mib_s),
            col(&theirs, |f| f.irq_per_req),
            col(&theirs, |f| f.cpu_us_per_req),
            a_iops / b_iops.max(1.0),
            per_round.join(" "),
        );
    }
    let hung = |runs: &[Option<Vec<Figures>>]| runs.iter().filter(|r| r.is_none()).count();
    println!(
        "\nguest runs that hung (no result within the limit, excluded from the medians): \
         oxio {} of {rounds}, qemu-storage-daemon {} of {rounds}",
        hung(&ours),
        hung(&theirs)
    );
}
