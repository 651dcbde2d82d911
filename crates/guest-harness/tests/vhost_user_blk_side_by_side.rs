//! Benchmark (ignored by default; run by `benches/vhost-user-blk.sh`): one TCG guest with two
//! vhost-user-blk disks, one served by `oxio vhost-user blk` and one by qemu-storage-daemon,
//! each on its own RAM-backed file, and fio running the same workload on both disks at once,
//! as two jobs sharing the guest's only vCPU.
//!
//! Why a second benchmark: under TCG the guest's CPU is the bottleneck, and the sequential
//! benchmark's rounds swing by ±40 % with whatever else the host runs, more than the
//! difference between the daemons. Here both daemons see the same host load at the same
//! moment and both jobs share one guest CPU, so the ratio of the jobs' IOPS is the inverse
//! ratio of what a request costs the guest with each daemon (and any latency a daemon adds
//! shows too: its job then waits while the other runs). Rounds swap which disk comes first on
//! the PCI bus. No assertion on speed: the figures go to docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use oxio_guest_harness::Guest;

mod vhost_bench;

use vhost_bench::{
    cpu_seconds, env_u32, median, oxio_binary, peer_name, start_oxio, start_peer, workloads,
};

/// Image sizes in MiB: different, so the guest can tell which disk is which daemon's.
const OXIO_MIB: usize = 256;
const PEER_MIB: usize = 264;

/// One workload's figures in one round, for one daemon.
#[derive(Clone, Copy, Default)]
struct Side {
    iops: f64,
    cpu_us_per_req: f64,
}

/// The guest's `-chardev` and `-device` arguments for a vhost-user-blk disk on `sock`.
fn disk_args(id: &str, sock: &Path) -> Vec<OsString> {
    let mut chardev = OsString::from(format!("socket,id={id},path="));
    chardev.push(sock);
    vec![
        "-chardev".into(),
        chardev,
        "-device".into(),
        format!("vhost-user-blk-pci,chardev={id}").into(),
    ]
}

/// The guest script: names each disk by its size, then runs every workload on both disks at
/// once (one fio, two jobs) and prints each job's IOPS.
fn script(seconds: u32) -> String {
    let mut s = String::from(
        "wait_for /dev/vda\nwait_for /dev/vdb\n\
         for d in vda vdb; do echo \"DISK $d $(cat /sys/block/$d/size)\"; done\n",
    );
    for (i, (_, args)) in workloads().iter().enumerate() {
        // If a disk stops completing requests (see "hung" in docs/performance.md), the
        // guest says which one before the host gives up on it.
        s.push_str(&format!(
            "mark start{i}\n\
             ( sleep {late}; for d in vda vdb; do \
             echo \"STUCK {i} $d inflight $(cat /sys/block/$d/inflight)\"; done ) &\n\
             watch=$!\n\
             fio --minimal --ioengine=libaio --direct=1 --size=128M --time_based \
             --runtime={seconds} {args} --name=vda --filename=/dev/vda \
             --name=vdb --filename=/dev/vdb > /tmp/r\n\
             awk -F';' '{{print \"BENCH {i}\", $3, $8 + $49, $6 + $47, $7 + $48}}' /tmp/r\n\
             kill $watch 2>/dev/null; mark done{i}\n",
            late = seconds + 30,
        ));
    }
    s
}

/// Runs one round: `oxio_first` puts oxio's disk first on the PCI bus. Returns, per workload,
/// (oxio, peer) figures, or `None` if the guest hung.
fn round(dir: &Path, seconds: u32, oxio_first: bool) -> Option<Vec<(Side, Side)>> {
    let (oxio_sock, peer_sock) = (dir.join("oxio.sock"), dir.join("peer.sock"));
    let _ = std::fs::remove_file(&oxio_sock);
    let _ = std::fs::remove_file(&peer_sock);
    let oxio = start_oxio(&oxio_sock, &dir.join("oxio.img"), &oxio_binary());
    let peer = start_peer(&peer_sock, &dir.join("peer.img"));
    let (first, second) = if oxio_first {
        (disk_args("a", &oxio_sock), disk_args("b", &peer_sock))
    } else {
        (disk_args("a", &peer_sock), disk_args("b", &oxio_sock))
    };
    let mut running = Guest::new("bench-vhost-user-blk-side-by-side")
        .shared_memory()
        .modules(["virtio_pci", "virtio_blk"])
        .host_program("fio")
        .qemu_args(first)
        .qemu_args(second)
        .timeout(Duration::from_secs(u64::from(seconds) * 8 + 120))
        .script(&script(seconds))
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(u64::from(seconds) * 4 + 120);
    let mut cpu = Vec::new();
    for i in 0..workloads().len() {
        if let Err(e) = running.wait_for_serial(&format!("OXIO-MARK start{i}\n"), limit) {
            eprintln!("side by side: HUNG before workload {i} ({e:?})");
            return None;
        }
        let before = (cpu_seconds(oxio.0.id()), cpu_seconds(peer.0.id()));
        if let Err(e) = running.wait_for_serial(&format!("OXIO-MARK done{i}\n"), limit) {
            eprintln!("side by side: HUNG in workload {i}: guest killed ({e:?})");
            return None;
        }
        cpu.push((
            cpu_seconds(oxio.0.id()) - before.0,
            cpu_seconds(peer.0.id()) - before.1,
        ));
    }
    let outcome = running.wait().unwrap();
    outcome.expect_pass().unwrap();
    Some(parse(&outcome.serial, &cpu))
}

/// Reads the guest's DISK and BENCH lines into (oxio, peer) figures per workload.
fn parse(log: &str, cpu: &[(f64, f64)]) -> Vec<(Side, Side)> {
    let sectors = |mib: usize| (mib << 20) as u64 / 512;
    let disk_of = |name: &str| -> bool {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("DISK {name} ")))
            .unwrap_or_else(|| panic!("the guest did not report /dev/{name}"));
        let size: u64 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
        assert!(size == sectors(OXIO_MIB) || size == sectors(PEER_MIB));
        size == sectors(OXIO_MIB)
    };
    let vda_is_oxio = disk_of("vda");
    assert_ne!(
        vda_is_oxio,
        disk_of("vdb"),
        "both disks are the same daemon's"
    );
    (0..workloads().len())
        .map(|i| {
            let prefix = format!("BENCH {i} ");
            let mut sides = [Side::default(); 2];
            for line in log.lines().filter(|l| l.starts_with(&prefix)) {
                let f: Vec<&str> = line[prefix.len()..].split_whitespace().collect();
                let (iops, kib, kib_s): (f64, f64, f64) = (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                );
                let requests = (kib / (kib_s / iops.max(1.0)).max(1e-9)).max(1.0);
                let oxio = (f[0] == "vda") == vda_is_oxio;
                let daemon_cpu = if oxio { cpu[i].0 } else { cpu[i].1 };
                sides[usize::from(!oxio)] = Side {
                    iops,
                    cpu_us_per_req: daemon_cpu * 1e6 / requests,
                };
            }
            (sides[0], sides[1])
        })
        .collect()
}

#[test]
#[ignore = "benchmark: run benches/vhost-user-blk.sh"]
fn vhost_user_blk_side_by_side_oxio_and_qemu_storage_daemon_in_one_guest() {
    let seconds = env_u32("OXIO_BENCH_SECONDS", 5);
    let rounds = env_u32("OXIO_BENCH_ROUNDS", 2).max(1);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    // Written in full first, so neither daemon pays for allocating the file's pages.
    std::fs::write(dir.path().join("oxio.img"), vec![0xa5u8; OXIO_MIB << 20]).unwrap();
    std::fs::write(dir.path().join("peer.img"), vec![0xa5u8; PEER_MIB << 20]).unwrap();
    let runs: Vec<Option<Vec<(Side, Side)>>> = (0..rounds)
        .map(|r| round(dir.path(), seconds, r % 2 == 0))
        .collect();

    let peer = peer_name();
    println!(
        "| workload (both disks at once, {seconds} s, guest fio libaio O_DIRECT; median of \
         {rounds} rounds) | oxio IOPS | {peer} IOPS | ratio (median of rounds) | ratio per round \
         | oxio CPU µs/req | peer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (w, (name, _)) in workloads().iter().enumerate() {
        let done: Vec<&(Side, Side)> = runs.iter().flatten().map(|r| &r[w]).collect();
        let col = |f: fn(&(Side, Side)) -> f64| median(done.iter().map(|s| f(s)).collect());
        let ratios: Vec<f64> = done.iter().map(|(a, b)| a.iops / b.iops.max(1.0)).collect();
        let per_round: Vec<String> = runs
            .iter()
            .map(|r| match r {
                Some(r) => format!("{:.2}", r[w].0.iops / r[w].1.iops.max(1.0)),
                None => "hung".into(),
            })
            .collect();
        println!(
            "| {name} | {:.0} | {:.0} | **{:.2}** | {} | {:.1} | {:.1} |",
            col(|s| s.0.iops),
            col(|s| s.1.iops),
            median(ratios),
            per_round.join(" "),
            col(|s| s.0.cpu_us_per_req),
            col(|s| s.1.cpu_us_per_req),
        );
    }
    let hung = runs.iter().filter(|r| r.is_none()).count();
    println!("\nrounds that hung (excluded): {hung} of {rounds}");
}
