//! Shared pieces of the vhost-user-blk guest benchmarks: starting the daemons under test and
//! reading CPU time from `/proc`.

// Each benchmark uses a subset; helpers may unwrap (a panic there is a benchmark failure).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxio_guest_harness::{find_program, static_binary, wait_for_socket};

/// A daemon under test, killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `sock`.
pub fn wait_listening(sock: &Path) {
    assert!(
        wait_for_socket(sock, Duration::from_secs(20)),
        "{} not listening",
        sock.display()
    );
}

/// The oxio binary under test: `OXIO_BENCH_OXIO`, or built from this tree.
pub fn oxio_binary() -> PathBuf {
    std::env::var_os("OXIO_BENCH_OXIO")
        .map(Into::into)
        .unwrap_or_else(|| static_binary("oxio", "oxio").unwrap())
}

/// The daemon the bench compares oxio with, from `OXIO_BENCH_PEER`.
pub enum PeerKind {
    /// Unset: qemu-storage-daemon's vhost-user-blk export of the same kind of file.
    Qsd,
    /// `qsd-null`: qemu-storage-daemon serving a `null-co` disk of the image's size, which
    /// completes every request without doing any I/O (`read-zeroes=off`). Not a daemon anyone
    /// would deploy: it shows the guest's own ceiling, what no backend can beat.
    QsdNull,
    /// A path: another oxio binary (e.g. an older build, or a wrapper adding flags), for A/B
    /// runs of a change.
    Oxio(PathBuf),
}

/// `OXIO_BENCH_PEER`, see [`PeerKind`].
pub fn peer_kind() -> PeerKind {
    match std::env::var_os("OXIO_BENCH_PEER") {
        None => PeerKind::Qsd,
        Some(v) if v == "qsd-null" => PeerKind::QsdNull,
        Some(v) => PeerKind::Oxio(v.into()),
    }
}

/// The peer's name for the tables.
pub fn peer_name() -> String {
    match peer_kind() {
        PeerKind::Qsd => "qemu-storage-daemon".to_string(),
        PeerKind::QsdNull => "qemu-storage-daemon null-co".to_string(),
        PeerKind::Oxio(p) => format!("peer oxio ({})", p.display()),
    }
}

/// Starts `oxio vhost-user blk` (binary `binary`) on `sock`, serving `image`.
pub fn start_oxio(sock: &Path, image: &Path, binary: &Path) -> Peer {
    let child = Command::new(binary)
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

/// Starts qemu-storage-daemon's vhost-user-blk export of `image` on `sock`.
pub fn start_qsd(sock: &Path, image: &Path) -> Peer {
    start_qsd_blockdev(
        sock,
        &format!("driver=file,node-name=disk,filename={}", image.display()),
    )
}

/// Starts qemu-storage-daemon exporting a `null-co` disk as large as `image` on `sock` (the
/// guest tells the disks apart by size).
pub fn start_qsd_null(sock: &Path, image: &Path) -> Peer {
    let size = std::fs::metadata(image).unwrap().len();
    start_qsd_blockdev(
        sock,
        &format!("driver=null-co,node-name=disk,size={size},read-zeroes=off"),
    )
}

fn start_qsd_blockdev(sock: &Path, blockdev: &str) -> Peer {
    let child = Command::new(find_program("qemu-storage-daemon").unwrap())
        .arg("--blockdev")
        .arg(blockdev)
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

/// Starts the peer that `OXIO_BENCH_PEER` names.
pub fn start_peer(sock: &Path, image: &Path) -> Peer {
    match peer_kind() {
        PeerKind::Qsd => start_qsd(sock, image),
        PeerKind::QsdNull => start_qsd_null(sock, image),
        PeerKind::Oxio(b) => start_oxio(sock, image, &b),
    }
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) from a `/proc/.../stat` file, in seconds.
pub fn cpu_seconds_at(path: &Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
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

/// Median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `name` from the environment as a number, or `default`.
pub fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Workloads: name, fio arguments.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("seq-write 1M QD8", "--rw=write --bs=1M --iodepth=8"),
    ("seq-read 1M QD8", "--rw=read --bs=1M --iodepth=8"),
    ("rand-write 4K QD32", "--rw=randwrite --bs=4k --iodepth=32"),
    ("rand-read 4K QD32", "--rw=randread --bs=4k --iodepth=32"),
];

/// The workloads to run: all, or those whose name contains `OXIO_BENCH_ONLY`.
pub fn workloads() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("OXIO_BENCH_ONLY").unwrap_or_default();
    WORKLOADS
        .iter()
        .copied()
        .filter(|(w, _)| w.contains(only.as_str()))
        .collect()
}
