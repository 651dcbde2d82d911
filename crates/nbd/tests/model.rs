//! Randomized model check of the transmission phase: seeded batches of pipelined writes,
//! reads, trims, zeroes and flushes (non-overlapping within a batch, so any completion order
//! is correct) against the memory backend (inline and worker-thread completions) and the
//! io_uring file backend; every read must match a plain byte-array model.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // Test helpers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use oxio_block::file::{FileBackend, FileOptions};
use oxio_block::memory::MemoryBackend;
use oxio_block::SharedBackend;
use oxio_nbd::server::{
    serve_transmission_blocking, ConnStats, Export, Shutdown, TransmissionMode,
};
use oxio_nbd::wire::{cflags, Command, RequestHeader, SimpleReply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 8 << 20;

enum Op {
    Write(usize, Vec<u8>),
    Read(usize, usize),
    Trim(usize, usize),
    Zero(usize, usize),
    Flush,
}

/// A batch of operations on pairwise disjoint ranges.
fn batch(rng: &mut ChaCha8Rng) -> Vec<Op> {
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..rng.random_range(1..48) {
        let len = if rng.random_bool(0.1) {
            rng.random_range(256 << 10..1 << 20)
        } else {
            rng.random_range(1..20_000)
        };
        let off = rng.random_range(0..SIZE - len);
        if taken.iter().any(|&(o, l)| off < o + l && o < off + len) {
            continue;
        }
        taken.push((off, len));
        ops.push(match rng.random_range(0..10) {
            0..=3 => {
                let mut data = vec![0u8; len];
                rng.fill(&mut data[..]);
                Op::Write(off, data)
            }
            4..=6 => Op::Read(off, len),
            7 => Op::Trim(off, len),
            8 => Op::Zero(off, len),
            _ => Op::Flush,
        });
    }
    ops
}

fn run(backend: SharedBackend, seed: u64) {
    run_polling(backend, seed, Duration::ZERO);
}

/// Runs the model with busy-polling of up to `poll` per wait; returns the connection's
/// statistics.
fn run_polling(backend: SharedBackend, seed: u64, poll: Duration) -> ConnStats {
    let export = Arc::new(Export::new("", backend).busy_poll(poll));
    let (mut client, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        serve_transmission_blocking(
            server_end,
            export,
            TransmissionMode::simple(),
            Shutdown::never(),
        )
        .unwrap()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = vec![0u8; SIZE];
    let mut cookie = 0u64;
    for _ in 0..30 {
        let ops = batch(&mut rng);
        let mut wire = Vec::new();
        let mut reads = HashMap::new();
        for op in &ops {
            cookie += 1;
            let (command, flags, offset, length) = match op {
                Op::Write(o, d) => (
                    Command::Write,
                    if cookie % 5 == 0 { cflags::FUA } else { 0 },
                    *o,
                    d.len(),
                ),
                Op::Read(o, l) => {
                    reads.insert(cookie, (*o, *l));
                    (Command::Read, 0, *o, *l)
                }
                Op::Trim(o, l) => (Command::Trim, 0, *o, *l),
                Op::Zero(o, l) => (
                    Command::WriteZeroes,
                    if cookie % 2 == 0 { cflags::NO_HOLE } else { 0 },
                    *o,
                    *l,
                ),
                Op::Flush => (Command::Flush, 0, 0, 0),
            };
            RequestHeader {
                flags,
                command,
                cookie,
                offset: offset as u64,
                length: length as u64,
            }
            .emit(&mut wire, false);
            if let Op::Write(_, d) = op {
                wire.extend_from_slice(d);
            }
        }
        let mut tx = client.try_clone().unwrap();
        let writer = thread::spawn(move || tx.write_all(&wire).unwrap());
        for _ in 0..ops.len() {
            let mut h = [0u8; 16];
            client.read_exact(&mut h).unwrap();
            let r = SimpleReply::parse(&h).unwrap();
            assert_eq!(r.error, 0, "seed {seed} cookie {}", r.cookie);
            if let Some((o, l)) = reads.remove(&r.cookie) {
                let mut data = vec![0u8; l];
                client.read_exact(&mut data).unwrap();
                assert!(
                    data == model[o..o + l],
                    "seed {seed}: read {o}+{l} differs from the model"
                );
            }
        }
        assert!(reads.is_empty(), "every read answered once");
        writer.join().unwrap();
        for op in ops {
            match op {
                Op::Write(o, d) => model[o..o + d.len()].copy_from_slice(&d),
                Op::Trim(o, l) | Op::Zero(o, l) => model[o..o + l].fill(0),
                Op::Read(..) | Op::Flush => {}
            }
        }
    }
    let mut disc = Vec::new();
    RequestHeader {
        flags: 0,
        command: Command::Disc,
        cookie: 0,
        offset: 0,
        length: 0,
    }
    .emit(&mut disc, false);
    client.write_all(&disc).unwrap();
    let stats = server.join().unwrap();
    assert!(stats.clean_disconnect);
    stats
}

#[test]
fn memory_backend_matches_the_model() {
    for seed in 0..3 {
        run(Arc::new(MemoryBackend::new(SIZE as u64).unwrap()), seed);
    }
}

#[test]
fn file_backend_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 10..12 {
        let path = dir.path().join(format!("disk{seed}"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(SIZE as u64)
            .unwrap();
        run(
            Arc::new(FileBackend::open(&path, FileOptions::default()).unwrap()),
            seed,
        );
    }
}

/// The same model with busy-polling on: every read goes through the polling path first
/// (non-blocking `readv`, then the adaptive window), on inline and asynchronous backends.
#[test]
fn busy_polling_connections_match_the_model() {
    let poll = Duration::from_micros(200);
    let mut waits = 0;
    for seed in 20..22 {
        let s = run_polling(
            Arc::new(MemoryBackend::new(SIZE as u64).unwrap()),
            seed,
            poll,
        );
        waits += s.poll_hits + s.poll_sleeps;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(SIZE as u64)
        .unwrap();
    let file = FileBackend::open(&path, FileOptions::default()).unwrap();
    let s = run_polling(Arc::new(file), 22, poll);
    waits += s.poll_hits + s.poll_sleeps;
    assert!(waits > 0, "the connections waited through the polling path");
}
