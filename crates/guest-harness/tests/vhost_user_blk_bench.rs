//! Benchmark (ignored by default; run by `benches/vhost-user-blk.sh`): fio inside a TCG guest
//! against `oxio vhost-user blk` and against qemu-storage-daemon's vhost-user-blk export, on
//! the same RAM-backed file (written in full first), in one run of several rounds that
//! alternate which daemon goes first. Prints medians, oxio's ratio to the peer, and two
//! figures that depend little on the machine's load: the guest's interrupts per request and
//! the daemon's CPU time per request. No assertion on speed: the figures go to
//! docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use oxio_guest_harness::Guest;

mod vhost_bench;

use vhost_bench::{
    cpu_seconds, cpu_seconds_at, env_u32, median, oxio_binary, peer_name, start_oxio, start_peer,
    workloads,
};

/// One workload's result.
struct Figures {
    mib_s: f64,
    iops: f64,
    /// Guest interrupts per request.
    irq_per_req: f64,
    /// CPU time of the daemon process (all its threads) per request, in microseconds.
    cpu_us_per_req: f64,
    /// Write syscalls of QEMU's vCPU thread per request: under TCG these are the guest's
    /// kicks (ioeventfd writes), each one a TB exit and a syscall on the guest's only CPU.
    kicks_per_req: f64,
    /// Host CPU time of QEMU's vCPU thread per request, in microseconds: what the guest
    /// costs per request on its only CPU, without the time other processes took from it.
    vcpu_us_per_req: f64,
    /// Host CPU time of QEMU's main loop per request (interrupt injection), in microseconds.
    main_us_per_req: f64,
    /// The guest's busy CPU time per request (from its /proc/stat), in microseconds.
    guest_us_per_req: f64,
    /// Share of the guest's CPU time spent idle (waiting for the device).
    guest_idle: f64,
}

/// The QEMU process whose command line names `sock` (its chardev), if any.
fn qemu_pid(sock: &Path) -> Option<u32> {
    let needle = format!("path={}", sock.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        // argv[0] is QEMU itself (not the `timeout` that runs it).
        let argv0 = cmd.split('\0').next().unwrap_or_default();
        (argv0.contains("qemu-system") && cmd.contains(&needle)).then_some(pid)
    })
}

/// Counters of QEMU process `pid` so far: write syscalls and CPU seconds of its threads other
/// than the main loop (the vCPU thread, which has no name of its own without `-name
/// debug-threads=on`, and the idle RCU thread), and the main loop's CPU seconds (under TCG it
/// reads the call eventfds and injects the interrupts).
#[derive(Clone, Copy, Default)]
struct QemuCounters {
    vcpu_writes: f64,
    vcpu_cpu: f64,
    main_cpu: f64,
}

fn qemu_counters(pid: u32) -> QemuCounters {
    let mut c = QemuCounters::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return c;
    };
    for t in tasks.flatten() {
        let cpu = cpu_seconds_at(&t.path().join("stat"));
        if t.file_name().to_str() == Some(pid.to_string().as_str()) {
            c.main_cpu += cpu;
            continue;
        }
        c.vcpu_cpu += cpu;
        let io = std::fs::read_to_string(t.path().join("io")).unwrap_or_default();
        c.vcpu_writes += io
            .lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    c
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
         irqs() { awk '/virtio.*req/ { n += $2 } END { print n + 0 }' /proc/interrupts; }\n\
         busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }\n\
         idle() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }\n",
    );
    for (i, (_, args)) in workloads().iter().enumerate() {
        script.push_str(&format!(
            "mark start{i}\n\
             before=$(irqs); b0=$(busy); i0=$(idle)\n\
             fio --minimal --name=w{i} --filename=/dev/vda --ioengine=libaio --direct=1 \
             --size=128M --time_based --runtime={seconds} {args} > /tmp/r\n\
             after=$(irqs); b1=$(busy); i1=$(idle)\n\
             awk -F';' -v irq=$((after - before)) -v busy=$((b1 - b0)) -v idle=$((i1 - i0)) \
             '{{print \"BENCH {i}\", $7 + $48, $8 + $49, $6 + $47, irq, busy, idle}}' /tmp/r\n"
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
    let mut kicks: Vec<QemuCounters> = Vec::new();
    let mut qemu = None;
    for (i, (w, _)) in workloads().iter().enumerate() {
        let started = running.wait_for_serial(&format!("OXIO-MARK start{i}\n"), limit);
        let qemu = *qemu.get_or_insert_with(|| qemu_pid(sock).unwrap_or(0));
        let before = cpu_seconds(pid);
        let q0 = qemu_counters(qemu);
        let done = started.and_then(|()| running.wait_for_serial(&format!("BENCH {i} "), limit));
        if let Err(e) = done {
            eprintln!("{name}: HUNG in {w}: no result within {limit:?}; guest killed ({e:?})");
            let serial = running.serial();
            let tail: Vec<&str> = serial.lines().rev().take(15).collect();
            eprintln!(
                "  serial tail:\n    {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            );
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let f = |n: &str| std::fs::read_to_string(t.path().join(n)).unwrap_or_default();
                eprintln!(
                    "  daemon thread {}: {} in {}",
                    f("comm").trim(),
                    f("stat").split(' ').nth(2).unwrap_or("?"),
                    f("wchan")
                );
            }
            return None;
        }
        cpu.push(cpu_seconds(pid) - before);
        let q1 = qemu_counters(qemu);
        kicks.push(QemuCounters {
            vcpu_writes: q1.vcpu_writes - q0.vcpu_writes,
            vcpu_cpu: q1.vcpu_cpu - q0.vcpu_cpu,
            main_cpu: q1.main_cpu - q0.main_cpu,
        });
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
            // Guest jiffies are in USER_HZ (100 per second).
            let (busy, idle) = (next() * 1e4, next() * 1e4);
            let bytes_per_req = kib_s / iops.max(1.0);
            let requests = (kib / bytes_per_req).max(1.0);
            Figures {
                mib_s: kib_s / 1024.0,
                iops,
                irq_per_req: irqs / requests,
                cpu_us_per_req: cpu[i] * 1e6 / requests,
                kicks_per_req: kicks[i].vcpu_writes / requests,
                vcpu_us_per_req: kicks[i].vcpu_cpu * 1e6 / requests,
                main_us_per_req: kicks[i].main_cpu * 1e6 / requests,
                guest_us_per_req: busy / requests,
                guest_idle: idle / (busy + idle).max(1.0),
            }
        })
        .collect::<Vec<_>>()
        .into()
}

#[test]
#[ignore = "benchmark: run benches/vhost-user-blk.sh"]
fn vhost_user_blk_guest_fio_oxio_vs_qemu_storage_daemon() {
    let seconds = env_u32("OXIO_BENCH_SECONDS", 5);
    let rounds = env_u32("OXIO_BENCH_ROUNDS", 2).max(1);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = dir.path().join("disk.img");
    // Written in full first, so neither daemon pays for allocating the file's pages.
    std::fs::write(&image, vec![0xa5u8; 256 << 20]).unwrap();
    let sock = dir.path().join("vu.sock");
    let binary = oxio_binary();
    let peer_name = peer_name();

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
                let peer = start_oxio(&sock, &image, &binary);
                ours.push(measure(
                    "bench-vhost-user-blk-oxio",
                    &sock,
                    seconds,
                    peer.0.id(),
                ));
                drop(peer);
            } else {
                let peer = start_peer(&sock, &image);
                theirs.push(measure(
                    "bench-vhost-user-blk-peer",
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
         oxio MiB/s | oxio IOPS | oxio irq/req | oxio CPU µs/req | {peer_name} MiB/s | \
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
                (_, None) => "peer-hung".into(),
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
    println!(
        "\nPer-request costs in the guest (medians; kicks = writes of QEMU's vCPU thread, \
         guest µs = busy CPU time in the guest's /proc/stat):\n\n\
         | workload | oxio irq/req | kicks/req | vCPU µs/req | QEMU main µs/req | guest µs/req | \
         guest idle | peer irq/req | kicks/req | vCPU µs/req | QEMU main µs/req | guest µs/req | \
         guest idle |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (w, (name, _)) in workloads().iter().enumerate() {
        let col = |runs: &[Option<Vec<Figures>>], f: fn(&Figures) -> f64| {
            median(runs.iter().flatten().map(|r| f(&r[w])).collect())
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.2} | {:.2} | {:.0} \
             | {:.0} | {:.0} | {:.0} % |",
            col(&ours, |f| f.irq_per_req),
            col(&ours, |f| f.kicks_per_req),
            col(&ours, |f| f.vcpu_us_per_req),
            col(&ours, |f| f.main_us_per_req),
            col(&ours, |f| f.guest_us_per_req),
            col(&ours, |f| f.guest_idle * 100.0),
            col(&theirs, |f| f.irq_per_req),
            col(&theirs, |f| f.kicks_per_req),
            col(&theirs, |f| f.vcpu_us_per_req),
            col(&theirs, |f| f.main_us_per_req),
            col(&theirs, |f| f.guest_us_per_req),
            col(&theirs, |f| f.guest_idle * 100.0),
        );
    }
    let hung = |runs: &[Option<Vec<Figures>>]| runs.iter().filter(|r| r.is_none()).count();
    println!(
        "\nguest runs that hung (no result within the limit, excluded from the medians): \
         oxio {} of {rounds}, {peer_name} {} of {rounds}",
        hung(&ours),
        hung(&theirs)
    );
}
