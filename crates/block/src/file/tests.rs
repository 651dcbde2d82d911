//! File backend tests, run against both engines and with and without `O_DIRECT`.
#![allow(clippy::cast_possible_truncation)] // Test tags and sizes are small.

use std::path::Path;

use rand::{Rng, SeedableRng};

use super::*;
use crate::{BlockingQueue, Completion, IoBuf, Op, Request};

const SIZE: u64 = 8 << 20;

fn backing(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

fn configs() -> Vec<FileOptions> {
    let mut v = Vec::new();
    for engine in [Engine::IoUring, Engine::ThreadPool] {
        for direct in [false, true] {
            v.push(FileOptions {
                read_only: false,
                direct,
                engine,
            });
        }
    }
    v
}

fn open(dir: &Path, options: FileOptions) -> Option<FileBackend> {
    let path = backing(dir, SIZE);
    match FileBackend::open(&path, options.clone()) {
        Ok(b) => Some(b),
        // io_uring or O_DIRECT may be unavailable where the tests run; the other
        // configurations still cover the code.
        Err(e) => {
            eprintln!("skipping {options:?}: {e}");
            None
        }
    }
}

/// Waits for `n` completions on `q`.
fn wait_all(q: &mut dyn crate::BlockQueue, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        if q.reap(&mut out) == 0 {
            let mut pfd = libc::pollfd {
                fd: q.notifier().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: valid pollfd array of length 1.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
    }
    out
}

#[test]
fn reads_and_writes_round_trip_at_any_alignment() {
    for options in configs() {
        let dir = tempfile::tempdir().unwrap();
        let Some(b) = open(dir.path(), options.clone()) else {
            continue;
        };
        let mut q = BlockingQueue::new(b.open_queue(8).unwrap());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (off, len) in [
            (0u64, 4096usize),
            (4096 * 3, 1 << 20),
            (7, 13),
            (SIZE - 5000, 5000),
        ] {
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            q.write_at(off, &data, off == 7).unwrap();
            assert_eq!(
                &*q.read_at(off, len).unwrap(),
                &data[..],
                "{options:?} {off}+{len}"
            );
        }
        q.flush().unwrap();
        assert_eq!(q.read_at(SIZE - 1, 2).unwrap_err().errno(), libc::EINVAL);
    }
}

#[test]
fn many_requests_in_flight_complete_by_tag() {
    for options in configs() {
        let dir = tempfile::tempdir().unwrap();
        let Some(b) = open(dir.path(), options) else {
            continue;
        };
        let mut q = b.open_queue(64).unwrap();
        for tag in 0..64u64 {
            let buf = IoBuf::from_slice(&[tag as u8; 4096]);
            q.submit(Request {
                tag,
                op: Op::Write {
                    offset: tag * 4096,
                    buf,
                    fua: false,
                },
            })
            .unwrap();
        }
        assert!(q
            .submit(Request {
                tag: 99,
                op: Op::Flush
            })
            .is_err());
        q.commit().unwrap();
        let done = wait_all(&mut *q, 64);
        let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..64).collect::<Vec<_>>());
        assert!(done.iter().all(|c| c.result.is_ok() && c.buf.is_some()));
        for tag in 0..64u64 {
            q.submit(Request {
                tag,
                op: Op::Read {
                    offset: tag * 4096,
                    buf: IoBuf::zeroed(4096),
                },
            })
            .unwrap();
        }
        q.commit().unwrap();
        for c in wait_all(&mut *q, 64) {
            assert!(c.buf.unwrap().iter().all(|&x| x == c.tag as u8));
        }
        assert_eq!(q.in_flight(), 0);
    }
}

#[test]
fn discard_and_zeroing_punch_holes_and_read_zero() {
    for options in configs() {
        let dir = tempfile::tempdir().unwrap();
        let Some(b) = open(dir.path(), options) else {
            continue;
        };
        let mut q = BlockingQueue::new(b.open_queue(4).unwrap());
        q.write_at(0, &vec![0xaa; 4 << 20], false).unwrap();
        q.flush().unwrap();
        q.discard(1 << 20, 1 << 20).unwrap();
        q.write_zeroes(2 << 20, 1 << 20, false, false).unwrap();
        q.write_zeroes(100, 50, true, false).unwrap();
        let got = q.read_at(0, 4 << 20).unwrap();
        assert!(got[..100].iter().all(|&x| x == 0xaa));
        assert!(got[100..150].iter().all(|&x| x == 0));
        assert!(got[150..1 << 20].iter().all(|&x| x == 0xaa));
        assert!(got[1 << 20..3 << 20].iter().all(|&x| x == 0));
        assert!(got[3 << 20..].iter().all(|&x| x == 0xaa));
        let mut ext = Vec::new();
        b.extents(0, SIZE, &mut ext).unwrap();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), SIZE);
        assert!(!ext[0].hole);
        assert!(ext.iter().any(|e| e.hole), "{ext:?}");
        assert!(
            ext.last().unwrap().hole,
            "the unwritten tail is a hole: {ext:?}"
        );
    }
}

#[test]
fn read_only_backends_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = backing(dir.path(), SIZE);
    let b = FileBackend::open(
        &path,
        FileOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(b.capabilities().read_only);
    let mut q = BlockingQueue::new(b.open_queue(2).unwrap());
    assert_eq!(q.write_at(0, b"x", false).unwrap_err().errno(), libc::EPERM);
    assert_eq!(q.discard(0, 4096).unwrap_err().errno(), libc::EPERM);
    assert_eq!(q.read_at(0, 4).unwrap().len(), 4);
}

#[test]
fn opening_a_directory_or_missing_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileBackend::open(dir.path(), FileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("neither"), "{err}");
    assert!(FileBackend::open(&dir.path().join("missing"), FileOptions::default()).is_err());
}

#[test]
fn auto_engine_uses_the_thread_pool_for_buffered_files_in_ram_only() {
    let engine_of = |dir: &Path, direct: bool, engine: Engine| -> Option<Engine> {
        let options = FileOptions {
            read_only: false,
            direct,
            engine,
        };
        FileBackend::open(&backing(dir, SIZE), options)
            .ok()
            .map(|b| b.inner.engine)
    };
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    assert_eq!(
        engine_of(shm.path(), false, Engine::Auto),
        Some(Engine::ThreadPool)
    );
    // What the user chose is kept, and O_DIRECT (when tmpfs allows it) stays with Auto.
    assert_eq!(
        engine_of(shm.path(), false, Engine::IoUring),
        Some(Engine::IoUring)
    );
    if let Some(e) = engine_of(shm.path(), true, Engine::Auto) {
        assert_eq!(e, Engine::Auto);
    }
    // A disk filesystem (the build directory is on one here and in CI) keeps Auto.
    let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    if !on_ram_filesystem(&std::fs::File::open(disk.path()).unwrap()) {
        assert_eq!(
            engine_of(disk.path(), false, Engine::Auto),
            Some(Engine::Auto)
        );
    }
}
