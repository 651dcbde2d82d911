//! The transmission phase driven exactly as the Linux kernel drives a socketpair-attached
//! server: no handshake, 28-byte requests with `(counter << 32) | tag` cookies, up to 128
//! requests in flight, requests up to 32 MiB, simple replies only, a separate thread
//! receiving replies (the kernel's recv worker), then `NBD_CMD_DISC`.
//!
//! Runs against the memory backend (inline completions) and the file backend (io_uring
//! completions signalled through the eventfd).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // Test helpers: a panic is a failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use oxio_block::file::{FileBackend, FileOptions};
use oxio_block::memory::MemoryBackend;
use oxio_block::SharedBackend;
use oxio_nbd::server::{serve_transmission_blocking, Export, Shutdown, TransmissionMode};
use oxio_nbd::wire::{cflags, tflags, Command, RequestHeader, SimpleReply};

const SIZE: u64 = 256 << 20;
const TAGS: u64 = 128;

struct Kernel {
    tx: UnixStream,
    rx: UnixStream,
    counter: u64,
}

/// A reply as the kernel's recv worker sees it.
#[derive(Debug)]
struct Reply {
    error: u32,
    data: Vec<u8>,
}

impl Kernel {
    fn cookie(&mut self, tag: u64) -> u64 {
        self.counter += 1;
        (self.counter << 32) | tag
    }

    fn send(
        &mut self,
        cmd: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) {
        let mut buf = Vec::with_capacity(28 + payload.len());
        RequestHeader {
            flags,
            command: cmd,
            cookie,
            offset,
            length,
        }
        .emit(&mut buf, false);
        buf.extend_from_slice(payload);
        self.tx.write_all(&buf).unwrap();
    }

    /// Receives `n` replies; `read_len` says how much data follows a successful reply.
    fn receive(
        rx: &mut UnixStream,
        n: usize,
        read_len: &HashMap<u64, usize>,
    ) -> HashMap<u64, Reply> {
        let mut replies = HashMap::new();
        for _ in 0..n {
            let mut hdr = [0u8; 16];
            rx.read_exact(&mut hdr).unwrap();
            let r = SimpleReply::parse(&hdr).expect("only simple replies reach the kernel");
            let mut data = vec![
                0u8;
                if r.error == 0 {
                    read_len.get(&r.cookie).copied().unwrap_or(0)
                } else {
                    0
                }
            ];
            rx.read_exact(&mut data).unwrap();
            let dup = replies.insert(
                r.cookie,
                Reply {
                    error: r.error,
                    data,
                },
            );
            assert!(dup.is_none(), "cookie {:#x} answered twice", r.cookie);
        }
        replies
    }

    /// Sends every request from a writer thread while this thread collects the replies.
    fn round(&mut self, reqs: Vec<(Command, u16, u64, u64, Vec<u8>)>) -> Vec<(u64, Reply)> {
        let mut cookies = Vec::new();
        let mut read_len = HashMap::new();
        let mut wire = Vec::new();
        for (i, (cmd, flags, offset, length, payload)) in reqs.into_iter().enumerate() {
            let cookie = self.cookie(i as u64 % TAGS);
            if cmd == Command::Read {
                read_len.insert(cookie, length as usize);
            }
            cookies.push(cookie);
            wire.push((cmd, flags, cookie, offset, length, payload));
        }
        let mut tx = self.tx.try_clone().unwrap();
        let writer = thread::spawn(move || {
            for (cmd, flags, cookie, offset, length, payload) in wire {
                let mut buf = Vec::new();
                RequestHeader {
                    flags,
                    command: cmd,
                    cookie,
                    offset,
                    length,
                }
                .emit(&mut buf, false);
                buf.extend_from_slice(&payload);
                tx.write_all(&buf).unwrap();
            }
        });
        let mut replies = Self::receive(&mut self.rx, cookies.len(), &read_len);
        writer.join().unwrap();
        cookies
            .into_iter()
            .map(|c| (c, replies.remove(&c).expect("every cookie is answered")))
            .collect()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect()
}

type Served = thread::JoinHandle<Result<oxio_nbd::server::ConnStats, String>>;

fn attach(backend: SharedBackend) -> (Kernel, Served, u16) {
    let export = Arc::new(Export::new("", backend));
    let flags = export.transmission_flags(&TransmissionMode::simple());
    let (kernel_end, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        serve_transmission_blocking(
            server_end,
            export,
            TransmissionMode::simple(),
            Shutdown::never(),
        )
        .map_err(|e| e.to_string())
    });
    let rx = kernel_end.try_clone().unwrap();
    (
        Kernel {
            tx: kernel_end,
            rx,
            counter: 0,
        },
        server,
        flags,
    )
}

fn drive(backend: SharedBackend) {
    let (mut k, server, flags) = attach(backend);
    assert_ne!(flags & tflags::HAS_FLAGS, 0);
    assert_ne!(flags & tflags::SEND_FLUSH, 0);
    assert_eq!(
        flags & tflags::SEND_DF,
        0,
        "DF needs structured replies, which the kernel lacks"
    );

    // 128 writes of 64 KiB in flight at once, some with FUA, then a flush.
    let writes: Vec<_> = (0..TAGS)
        .map(|i| {
            let fua = if i % 7 == 0 { cflags::FUA } else { 0 };
            (Command::Write, fua, i * 65536, 65536, pattern(i, 65536))
        })
        .collect();
    assert!(k.round(writes).iter().all(|(_, r)| r.error == 0));
    assert!(k
        .round(vec![(Command::Flush, 0, 0, 0, vec![])])
        .iter()
        .all(|(_, r)| r.error == 0));

    // 128 reads in flight; every cookie answered once with the right data.
    let reads: Vec<_> = (0..TAGS)
        .rev()
        .map(|i| (Command::Read, 0, i * 65536, 65536, vec![]))
        .collect();
    for (n, (_, r)) in k.round(reads).into_iter().enumerate() {
        let i = TAGS - 1 - n as u64;
        assert_eq!(r.error, 0);
        assert_eq!(r.data, pattern(i, 65536), "read {i}");
    }

    // The kernel's largest requests: 32 MiB each way.
    let big = pattern(99, 32 << 20);
    let r = k.round(vec![(Command::Write, 0, 64 << 20, 32 << 20, big.clone())]);
    assert_eq!(r[0].1.error, 0);
    let r = k.round(vec![(Command::Read, 0, 64 << 20, 32 << 20, vec![])]);
    assert_eq!(r[0].1.error, 0);
    assert!(r[0].1.data == big, "32 MiB read-back differs");

    // Discard and write-zeroes (NO_HOLE, as 6.12+ kernels send for REQ_NOUNMAP), then errors:
    // the stream stays in sync after each.
    let r = k.round(vec![
        (Command::Trim, 0, 0, 65536, vec![]),
        (Command::WriteZeroes, cflags::NO_HOLE, 65536, 65536, vec![]),
        (Command::Read, 0, SIZE - 512, 1024, vec![]),
        (Command::Write, 0, SIZE, 512, vec![1; 512]),
        (Command::Unknown(42), 0, 0, 0, vec![]),
        (Command::Read, 0, 0, 131072, vec![]),
    ]);
    let errors: Vec<u32> = r.iter().map(|(_, r)| r.error).collect();
    assert_eq!(errors, vec![0, 0, 22, 28, 22, 0]);
    assert!(
        r[5].1.data.iter().all(|&b| b == 0),
        "trimmed and zeroed ranges read as zero"
    );

    // Disconnect: the server drains and returns.
    let c = k.cookie(0);
    k.send(Command::Disc, 0, c, 0, 0, &[]);
    let stats = server.join().unwrap().unwrap();
    assert!(stats.clean_disconnect);
    assert_eq!(stats.requests, 2 * TAGS + 1 + 2 + 6);
    let mut rest = Vec::new();
    k.rx.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no reply to DISC");
}

#[test]
fn kernel_style_transmission_on_memory() {
    drive(Arc::new(MemoryBackend::new(SIZE).unwrap()));
}

#[test]
fn kernel_style_transmission_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    drive(Arc::new(
        FileBackend::open(&path, FileOptions::default()).unwrap(),
    ));
}

#[test]
fn in_flight_requests_are_answered_when_the_kernel_disconnects() {
    let (mut k, server, _) = attach(Arc::new(MemoryBackend::new(SIZE).unwrap()));
    // Writes and a DISC sent back to back: every write is answered before the close.
    for i in 0..TAGS {
        let c = k.cookie(i);
        k.send(Command::Write, 0, c, i * 4096, 4096, &pattern(i, 4096));
    }
    let c = k.cookie(0);
    k.send(Command::Disc, 0, c, 0, 0, &[]);
    let replies = Kernel::receive(&mut k.rx, TAGS as usize, &HashMap::new());
    assert!(replies.values().all(|r| r.error == 0));
    assert!(server.join().unwrap().unwrap().clean_disconnect);
}

#[test]
fn a_corrupt_header_closes_the_connection() {
    let (mut k, server, _) = attach(Arc::new(MemoryBackend::new(SIZE).unwrap()));
    k.tx.write_all(&[0xff; 28]).unwrap();
    let mut rest = Vec::new();
    k.rx.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // The server ends with an error naming the bad magic (it must not panic or hang).
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("Malformed"), "{err}");
}
