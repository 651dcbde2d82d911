//! Several connections hammer one RAM export at once with pipelined, overlapping READs,
//! WRITEs and TRIMs of every size (4 KiB to 5 MiB, so direct transfers span more than one
//! slice table). The memory backend lends its chunks to the sockets under per-chunk locks:
//! this checks that nothing deadlocks, every request succeeds, a READ only ever returns words
//! some WRITE stored (or zeroes), and that the export is exact once the dust settles.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // Test helpers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use oxio_block::memory::MemoryBackend;
use oxio_nbd::server::{serve_transmission_blocking, Export, Shutdown, TransmissionMode};
use oxio_nbd::wire::{Command, RequestHeader, SimpleReply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 16 << 20;
const CONNECTIONS: u64 = 4;

/// A word no writer of this test stores: every stored word has a writer id below CONNECTIONS
/// in its top half.
fn valid_word(w: u64) -> bool {
    w == 0 || (w >> 32) < CONNECTIONS
}

fn header(command: Command, cookie: u64, offset: usize, length: usize) -> RequestHeader {
    RequestHeader {
        flags: 0,
        command,
        cookie,
        offset: offset as u64,
        length: length as u64,
    }
}

fn connect(export: &Arc<Export>) -> (UnixStream, thread::JoinHandle<bool>) {
    let (client, server_end) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let export = Arc::clone(export);
    let server = thread::spawn(move || {
        serve_transmission_blocking(
            server_end,
            export,
            TransmissionMode::simple(),
            Shutdown::never(),
        )
        .unwrap()
        .clean_disconnect
    });
    (client, server)
}

/// Sends `reqs` (header and payload bytes) from a helper thread and reads every reply,
/// returning the READ payloads by cookie.
fn round_trip(
    client: &mut UnixStream,
    wire: Vec<u8>,
    count: usize,
    read_len: impl Fn(u64) -> Option<usize>,
) -> Vec<(u64, Vec<u8>)> {
    let mut tx = client.try_clone().unwrap();
    let writer = thread::spawn(move || tx.write_all(&wire).unwrap());
    let mut reads = Vec::new();
    for _ in 0..count {
        let mut h = [0u8; 16];
        client.read_exact(&mut h).unwrap();
        let r = SimpleReply::parse(&h).unwrap();
        assert_eq!(r.error, 0, "cookie {}", r.cookie);
        if let Some(len) = read_len(r.cookie) {
            let mut data = vec![0u8; len];
            client.read_exact(&mut data).unwrap();
            reads.push((r.cookie, data));
        }
    }
    writer.join().unwrap();
    reads
}

fn hammer(id: u64, export: Arc<Export>) {
    let (mut client, server) = connect(&export);
    let mut rng = ChaCha8Rng::seed_from_u64(id);
    let mut seq = 0u64;
    for _ in 0..12 {
        let mut wire = Vec::new();
        let mut lens = std::collections::HashMap::new();
        let n = rng.random_range(1..24);
        for i in 0..n {
            let len = match rng.random_range(0..10) {
                0 => 5 << 20,
                1..=3 => 1 << 20,
                _ => 4096 * rng.random_range(1..8),
            };
            let offset = 4096 * rng.random_range(0..(SIZE - len) / 4096);
            let cookie = (id << 32) | i;
            match rng.random_range(0..10) {
                0..=3 => {
                    seq += 1;
                    header(Command::Write, cookie, offset, len).emit(&mut wire, false);
                    let word = ((id << 32) | seq).to_le_bytes();
                    wire.extend(word.iter().cycle().take(len));
                }
                4..=8 => {
                    header(Command::Read, cookie, offset, len).emit(&mut wire, false);
                    lens.insert(cookie, len);
                }
                _ => header(Command::Trim, cookie, offset, len).emit(&mut wire, false),
            }
        }
        for (_, data) in round_trip(&mut client, wire, n as usize, |c| lens.get(&c).copied()) {
            assert!(
                data.chunks_exact(8)
                    .all(|w| valid_word(u64::from_le_bytes(w.try_into().unwrap()))),
                "a read returned bytes no writer stored"
            );
        }
    }
    let mut disc = Vec::new();
    header(Command::Disc, 0, 0, 0).emit(&mut disc, false);
    client.write_all(&disc).unwrap();
    assert!(server.join().unwrap());
}

#[test]
fn overlapping_requests_on_several_connections() {
    let export = Arc::new(Export::new(
        "",
        Arc::new(MemoryBackend::new(SIZE as u64).unwrap()),
    ));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|id| {
            let export = Arc::clone(&export);
            thread::spawn(move || hammer(id, export))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Quiet again: one write of the whole export reads back exactly, across every chunk.
    let (mut client, server) = connect(&export);
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    header(Command::Write, 1, 0, SIZE).emit(&mut wire, false);
    wire.extend_from_slice(&data);
    header(Command::Read, 2, 0, SIZE).emit(&mut wire, false);
    let reads = round_trip(&mut client, wire, 2, |c| (c == 2).then_some(SIZE));
    assert!(reads[0].1 == data, "the export reads back what was written");
    let mut disc = Vec::new();
    header(Command::Disc, 0, 0, 0).emit(&mut disc, false);
    client.write_all(&disc).unwrap();
    assert!(server.join().unwrap());
}
