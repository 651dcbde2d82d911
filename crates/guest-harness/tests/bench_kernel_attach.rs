//! Benchmark (ignored by default; run with `--ignored --nocapture`): the kernel NBD client in
//! one guest, served two ways in the same run — oxmem-nbd (memory backend, socketpair) and
//! nbd-client + nbdkit's memory plugin (Unix socket) — with sequential O_DIRECT I/O at queue
//! depth 1. Under TCG every instruction is slow, so the ratio compares the CPU each server
//! spends per request; absolute numbers mean little. Rounds alternate to spread noise.
//!
//! `cargo test -p oxio-guest-harness --test bench_kernel_attach -- --ignored --nocapture`

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

mod common;

use common::{nbd_guest, start_oxmem};

const PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-memory-plugin.so";

#[test]
#[ignore = "benchmark: run explicitly with --ignored"]
fn kernel_attach_oxmem_nbd_versus_nbdkit_memory() {
    let mut script = start_oxmem("--backend memory --size 256M --device /dev/nbd0", &["nbd0"]);
    script.push_str(
        "nbdkit -f -U /tmp/nbdkit.sock memory 256M &
         wait_for /tmp/nbdkit.sock
         nbd-client -u /tmp/nbdkit.sock /dev/nbd1 -N '' -b 4096
         for round in 1 2; do
             for dev in nbd0 nbd1; do
                 oxio-guest bench /dev/$dev write 4K 16M | sed \"s|^|$dev |\"
                 oxio-guest bench /dev/$dev read 4K 16M | sed \"s|^|$dev |\"
                 oxio-guest bench /dev/$dev write 1M 64M | sed \"s|^|$dev |\"
                 oxio-guest bench /dev/$dev read 1M 64M | sed \"s|^|$dev |\"
             done
         done
         nbd-client -d /dev/nbd1
         stop_oxmem
",
    );
    let outcome = nbd_guest("bench-kernel-attach")
        .host_program("nbdkit")
        .host_program("nbd-client")
        .program_at(Path::new(PLUGIN), PLUGIN)
        .trace(false)
        .timeout(Duration::from_secs(900))
        .script(&script)
        .run()
        .unwrap();
    outcome.expect_pass().unwrap();
    let lines: Vec<&str> = outcome
        .serial
        .lines()
        .filter(|l| l.contains(" bench "))
        .collect();
    for line in &lines {
        println!("{line}");
    }
    for (op, bs) in [
        ("write", "4096"),
        ("read", "4096"),
        ("write", "1048576"),
        ("read", "1048576"),
    ] {
        let rate = |dev: &str| -> f64 {
            let values: Vec<f64> = lines
                .iter()
                .filter(|l| l.starts_with(dev) && l.contains(&format!("bench {op} bs={bs} ")))
                .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let (ours, peer) = (rate("nbd0"), rate("nbd1"));
        println!(
            "{op} bs={bs}: oxmem-nbd {ours:.1} MB/s, nbdkit memory {peer:.1} MB/s, ratio {:.2}",
            ours / peer
        );
    }
}
