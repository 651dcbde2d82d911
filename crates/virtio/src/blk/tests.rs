//! virtio-blk through the mock driver, with the device on its worker threads and the real
//! memory backend behind it.

// Test patterns truncate integers to bytes on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxio_block::memory::MemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::device::{ActiveQueue, VirtioDevice};
use crate::interrupt::EventFdInterrupt;
use crate::mock::{Buf, MockDriver, Placement};
use crate::queue::RingFeatures;

const DISK: u64 = 4 << 20;

struct Rig {
    dev: Block,
    drivers: Vec<MockDriver>,
    kicks: Vec<EventFd>,
    irq: Arc<EventFdInterrupt>,
}

fn rig_with(cfg: BlockConfig, packed: bool) -> Rig {
    rig_on(Arc::new(MemoryBackend::new(DISK).unwrap()), cfg, packed)
}

fn rig_on(backend: Arc<dyn oxio_block::BlockBackend>, cfg: BlockConfig, packed: bool) -> Rig {
    let mut dev = Block::new(backend, cfg.clone());
    let offered = dev.device_features();
    dev.set_features(offered).unwrap();
    let f = RingFeatures {
        packed,
        indirect: true,
        event_idx: true,
        in_order: false,
    };
    let irq = Arc::new(EventFdInterrupt::with_new_eventfds(usize::from(cfg.num_queues)).unwrap());
    let mem = crate::GuestMemory::anonymous(&[(0, 64 << 20)]).unwrap();
    let mut drivers = Vec::new();
    let mut kicks = Vec::new();
    let mut queues = Vec::new();
    for i in 0..cfg.num_queues {
        let base = u64::from(i) * (32 << 20);
        let layout = crate::mock::MockLayout::new(base + 0x1000, cfg.queue_size, base + (32 << 20));
        let d = MockDriver::new(mem.clone(), cfg.queue_size, f, layout);
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        kicks.push(kick.try_clone().unwrap());
        queues.push(ActiveQueue {
            index: i,
            queue: d.device_queue(),
            kick,
        });
        drivers.push(d);
    }
    dev.activate(mem, irq.clone(), queues).unwrap();
    Rig {
        dev,
        drivers,
        kicks,
        irq,
    }
}

fn rig() -> Rig {
    rig_with(BlockConfig::default(), false)
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend(0u32.to_le_bytes());
    h.extend(sector.to_le_bytes());
    h
}

impl Rig {
    /// Submits one request (readable bytes, writable data length) and waits for it.
    /// Returns (status, used length, data read back).
    fn request_on(
        &mut self,
        q: usize,
        readable: &[u8],
        data_len: u32,
        placement: Placement,
    ) -> (u8, u32, Vec<u8>) {
        let d = &mut self.drivers[q];
        d.reset_alloc();
        let r = d
            .alloc(u32::try_from(readable.len()).unwrap().max(1))
            .unwrap();
        d.write(r, readable);
        let w = d.alloc(data_len.max(1)).unwrap();
        let st = d.alloc(1).unwrap();
        d.write(st, &[0xff]);
        let mut bufs = vec![];
        // Split the readable part in two descriptors, as Linux does (header, then data).
        let rl = u32::try_from(readable.len()).unwrap();
        if rl > 16 {
            bufs.push(Buf::r(r, 16));
            bufs.push(Buf::r(r + 16, rl - 16));
        } else if rl > 0 {
            bufs.push(Buf::r(r, rl));
        }
        if data_len > 0 {
            bufs.push(Buf::w(w, data_len));
        }
        bufs.push(Buf::w(st, 1));
        let id = d.add_chain(&bufs, placement).unwrap();
        d.publish();
        if d.kick_needed() {
            self.kicks[q].write(1).unwrap();
        }
        let used = self.wait_used(q, 1);
        assert_eq!(used[0].0, id);
        let d = &self.drivers[q];
        let mut s = [0u8];
        d.read(st, &mut s);
        let mut out = vec![0u8; data_len as usize];
        d.read(w, &mut out);
        (s[0], used[0].1, out)
    }

    /// One request with the readable bytes cut at `r_cuts` and a writable part of
    /// `data_len` bytes plus the status byte cut at `w_cuts` (offsets into each part), so
    /// segments start and end anywhere. Returns (status, used length, data).
    fn request_cut(
        &mut self,
        readable: &[u8],
        r_cuts: &[u32],
        data_len: u32,
        w_cuts: &[u32],
    ) -> (u8, u32, Vec<u8>) {
        let d = &mut self.drivers[0];
        d.reset_alloc();
        let rl = u32::try_from(readable.len()).unwrap();
        let r = d.alloc(rl).unwrap();
        d.write(r, readable);
        let w = d.alloc(data_len + 1).unwrap();
        d.write(w + u64::from(data_len), &[0xff]);
        let mut bufs = Vec::new();
        let pieces = |cuts: &[u32], len: u32| {
            let mut at = [0].iter().chain(cuts).copied().collect::<Vec<u32>>();
            at.push(len);
            at.windows(2)
                .map(|p| (p[0], p[1] - p[0]))
                .collect::<Vec<_>>()
        };
        for (off, len) in pieces(r_cuts, rl) {
            bufs.push(Buf::r(r + u64::from(off), len));
        }
        for (off, len) in pieces(w_cuts, data_len + 1) {
            bufs.push(Buf::w(w + u64::from(off), len));
        }
        d.add_chain(&bufs, Placement::Direct).unwrap();
        d.publish();
        if d.kick_needed() {
            self.kicks[0].write(1).unwrap();
        }
        let used = self.wait_used(0, 1);
        let d = &self.drivers[0];
        let mut out = vec![0u8; data_len as usize + 1];
        d.read(w, &mut out);
        let st = out.pop().unwrap();
        (st, used[0].1, out)
    }

    fn request(&mut self, readable: &[u8], data_len: u32) -> (u8, u32, Vec<u8>) {
        self.request_on(0, readable, data_len, Placement::Direct)
    }

    fn wait_used(&mut self, q: usize, n: usize) -> Vec<(u16, u32)> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.drivers[q].used());
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "request never completed"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        got
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let mut req = header(types::OUT, sector);
        req.extend(data);
        self.request(&req, 0).0
    }

    fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        let (s, used, data) = self.request(&header(types::IN, sector), len);
        assert_eq!(used, len + 1, "used length counts data and status");
        (s, data)
    }

    fn ranges(&mut self, kind: u32, ranges: &[(u64, u32, u32)]) -> u8 {
        let mut req = header(kind, 0);
        for &(sector, n, flags) in ranges {
            req.extend(sector.to_le_bytes());
            req.extend(n.to_le_bytes());
            req.extend(flags.to_le_bytes());
        }
        self.request(&req, 0).0
    }
}

/// Adds (without publishing) a 4 KiB OUT request of `pattern(4096, seed)` at `sector`.
fn add_write_4k(d: &mut MockDriver, sector: u64, seed: u8) {
    let h = d.alloc(16).unwrap();
    let mut req = header(types::OUT, sector);
    req.truncate(16);
    d.write(h, &req);
    let data = d.alloc(4096).unwrap();
    d.write(data, &pattern(4096, seed));
    let st = d.alloc(1).unwrap();
    d.add_chain(
        &[Buf::r(h, 16), Buf::r(data, 4096), Buf::w(st, 1)],
        Placement::Direct,
    )
    .unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_read_flush_get_id() {
    for packed in [false, true] {
        let mut r = rig_with(BlockConfig::default(), packed);
        let data = pattern(8192, 7);
        assert_eq!(r.write(10, &data), status::OK);
        assert_eq!(r.read(10, 8192), (status::OK, data.clone()));
        assert_eq!(r.read(11, 512).1, data[512..1024]);
        assert_eq!(r.request(&header(types::FLUSH, 0), 0).0, status::OK);
        let (s, _, id) = r.request(&header(types::GET_ID, 0), 20);
        assert_eq!(s, status::OK);
        assert_eq!(&id[..4], b"oxio");
        let (_, _, small) = r.request(&header(types::GET_ID, 0), 2);
        assert_eq!(small, b"ox");
    }
}

#[test]
fn indirect_requests_work() {
    let mut r = rig();
    let mut req = header(types::OUT, 0);
    req.extend(pattern(4096, 1));
    assert_eq!(r.request_on(0, &req, 0, Placement::Indirect).0, status::OK);
    let (s, _, data) = r.request_on(0, &header(types::IN, 0), 4096, Placement::Indirect);
    assert_eq!((s, data), (status::OK, pattern(4096, 1)));
}

#[test]
fn capacity_and_sector_arithmetic_are_checked() {
    let mut r = rig();
    let last = DISK / SECTOR_SIZE - 1;
    assert_eq!(r.read(last, 512).0, status::OK);
    assert_eq!(r.read(last, 1024).0, status::IOERR, "runs past the end");
    assert_eq!(r.read(DISK / SECTOR_SIZE, 512).0, status::IOERR);
    assert_eq!(
        r.read(u64::MAX / 256, 512).0,
        status::IOERR,
        "sector * 512 overflows"
    );
    assert_eq!(r.read(0, 100).0, status::IOERR, "not whole sectors");
    assert_eq!(r.write(last + 1, &[0; 512]), status::IOERR);
    assert_eq!(r.write(0, &[0; 100]), status::IOERR);
}

#[test]
fn malformed_requests_fail_without_wedging_the_queue() {
    let mut r = rig();
    // Short header.
    assert_eq!(r.request(&[0u8; 8], 0).0, status::IOERR);
    // Unknown request type.
    assert_eq!(r.request(&header(99, 0), 0).0, status::UNSUPP);
    // Header in a device-writable buffer (wrong direction): no readable header.
    let (s, _, _) = r.request(&[], 16);
    assert_eq!(s, status::IOERR);
    // No writable byte at all: completed with length 0, nothing written.
    let d = &mut r.drivers[0];
    let h = d.alloc(16).unwrap();
    d.write(h, &header(types::IN, 0));
    let id = d.add_chain(&[Buf::r(h, 16)], Placement::Direct).unwrap();
    d.publish();
    r.kicks[0].write(1).unwrap();
    assert_eq!(r.wait_used(0, 1), vec![(id, 0)]);
    // A chain with more segments than the queue accepts (indirect, 2000 segments).
    let d = &mut r.drivers[0];
    let b = d.alloc(4).unwrap();
    let bufs: Vec<Buf> = (0..2000).map(|_| Buf::r(b, 1)).collect();
    let id = d.add_chain(&bufs, Placement::Indirect).unwrap();
    d.publish();
    r.kicks[0].write(1).unwrap();
    assert_eq!(r.wait_used(0, 1), vec![(id, 0)]);
    // A readable buffer outside guest memory.
    let d = &mut r.drivers[0];
    let st = d.alloc(1).unwrap();
    let id = d
        .add_chain(&[Buf::r(1 << 40, 16), Buf::w(st, 1)], Placement::Direct)
        .unwrap();
    d.publish();
    r.kicks[0].write(1).unwrap();
    assert_eq!(r.wait_used(0, 1), vec![(id, 0)]);
    // And the queue still serves.
    assert_eq!(r.write(0, &pattern(512, 3)), status::OK);
    assert_eq!(r.read(0, 512), (status::OK, pattern(512, 3)));
}

#[test]
fn discard_and_write_zeroes_really_zero() {
    let mut r = rig();
    r.write(0, &pattern(64 * 1024, 9));
    assert_eq!(
        r.ranges(types::DISCARD, &[(8, 8, 0), (32, 16, 0)]),
        status::OK
    );
    let (_, data) = r.read(0, 64 * 1024);
    let mut want = pattern(64 * 1024, 9);
    want[8 * 512..16 * 512].fill(0);
    want[32 * 512..48 * 512].fill(0);
    assert_eq!(data, want);
    assert_eq!(r.ranges(types::WRITE_ZEROES, &[(0, 4, 0)]), status::OK);
    assert_eq!(
        r.ranges(types::WRITE_ZEROES, &[(100, 4, DWZ_F_UNMAP)]),
        status::OK
    );
    want[..4 * 512].fill(0);
    want[100 * 512..104 * 512].fill(0);
    assert_eq!(r.read(0, 64 * 1024).1, want);
    // Unmap on a discard, and unknown flags, are unsupported (§5.2.6.2).
    assert_eq!(
        r.ranges(types::DISCARD, &[(0, 1, DWZ_F_UNMAP)]),
        status::UNSUPP
    );
    assert_eq!(r.ranges(types::WRITE_ZEROES, &[(0, 1, 4)]), status::UNSUPP);
    // Out of range, too many segments, or no segment: IOERR.
    assert_eq!(
        r.ranges(types::DISCARD, &[(DISK / 512, 1, 0)]),
        status::IOERR
    );
    let many: Vec<_> = (0..17).map(|i| (i, 1, 0)).collect();
    assert_eq!(r.ranges(types::DISCARD, &many), status::IOERR);
    assert_eq!(r.ranges(types::DISCARD, &[]), status::IOERR);
}

#[test]
fn read_only_refuses_writes() {
    let mut r = rig_with(
        BlockConfig {
            read_only: true,
            ..Default::default()
        },
        false,
    );
    assert_ne!(r.dev.device_features() & features::RO, 0);
    assert_eq!(
        r.dev.device_features() & (features::DISCARD | features::WRITE_ZEROES),
        0
    );
    assert_eq!(r.write(0, &[1; 512]), status::IOERR);
    assert_eq!(r.ranges(types::WRITE_ZEROES, &[(0, 1, 0)]), status::UNSUPP);
    assert_eq!(r.read(0, 512), (status::OK, vec![0; 512]));
}

#[test]
fn config_space_describes_the_device() {
    let r = rig_with(
        BlockConfig {
            num_queues: 2,
            ..Default::default()
        },
        false,
    );
    let mut b = [0u8; 60];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), DISK / 512);
    assert_eq!(
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
        254,
        "seg_max"
    );
    assert_eq!(
        u16::from_le_bytes(b[34..36].try_into().unwrap()),
        2,
        "num_queues"
    );
    assert_eq!(b[56], 1, "write_zeroes_may_unmap");
    let f = r.dev.device_features();
    for bit in [
        features::MQ,
        features::FLUSH,
        features::DISCARD,
        features::WRITE_ZEROES,
        features::BLK_SIZE,
    ] {
        assert_ne!(f & bit, 0);
    }
}

#[test]
fn queues_are_served_in_parallel_and_reset_drains() {
    let mut r = rig_with(
        BlockConfig {
            num_queues: 2,
            ..Default::default()
        },
        false,
    );
    // Many requests in flight on both queues at once.
    for q in 0..2 {
        let d = &mut r.drivers[q];
        for i in 0..64u64 {
            add_write_4k(d, i * 8 + q as u64 * 1024, i as u8);
        }
        d.publish();
        r.kicks[q].write(1).unwrap();
    }
    for q in 0..2 {
        assert_eq!(r.wait_used(q, 64).len(), 64);
    }
    for (q, i) in [(0usize, 5u64), (1, 63)] {
        assert_eq!(
            r.read(i * 8 + q as u64 * 1024, 4096).1,
            pattern(4096, i as u8)
        );
    }
    let states = r.dev.reset();
    assert_eq!(states.len(), 2);
    for (_, s) in states {
        assert_eq!(s.next_avail, s.next_used);
        assert!(s.next_avail >= 64);
    }
}

/// With the file backend on io_uring, reads and writes go straight between guest memory and
/// the file (`BlockQueue::submit_vectored`), however the driver cut the buffers: segments
/// sharing the header or the status byte, and odd sizes. The file is checked directly.
#[test]
fn file_backend_moves_data_in_place_whatever_the_segments() {
    use oxio_block::file::{Engine, FileBackend, FileOptions};
    use std::os::unix::fs::FileExt;
    let path = std::env::temp_dir().join(format!("oxio-blk-inplace-{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(DISK).unwrap();
    for engine in [Engine::IoUring, Engine::ThreadPool] {
        for packed in [false, true] {
            let opts = FileOptions {
                engine,
                ..FileOptions::default()
            };
            let backend = Arc::new(FileBackend::open(&path, opts).unwrap());
            let mut r = rig_on(backend, BlockConfig::default(), packed);
            let data = pattern(12288, u8::from(packed) + 9);
            let req = [header(types::OUT, 24), data.clone()].concat();
            // The header shares a segment with 100 data bytes; then 1000, 5000, the rest.
            let (st, used, _) = r.request_cut(&req, &[116, 1116, 6116], 0, &[]);
            assert_eq!((st, used), (status::OK, 1));
            let mut on_disk = vec![0u8; data.len()];
            let file = std::fs::File::open(&path).unwrap();
            file.read_exact_at(&mut on_disk, 24 * 512).unwrap();
            assert!(
                on_disk == data,
                "{engine:?} packed={packed}: not written in place"
            );
            // Read it back into 700 + 3000 + 8588 bytes, the last sharing the status byte.
            let (st, used, back) = r.request_cut(&header(types::IN, 24), &[], 12288, &[700, 3700]);
            assert_eq!((st, used), (status::OK, 12289));
            assert!(
                back == data,
                "{engine:?} packed={packed}: not read in place"
            );
            // Past the end: refused, nothing moved.
            let last = DISK / SECTOR_SIZE - 1;
            let (st, _, _) = r.request_cut(&header(types::IN, last), &[], 1024, &[512]);
            assert_eq!(st, status::IOERR);
        }
    }
    std::fs::remove_file(&path).unwrap();
}

/// With polling and coalescing on (long windows, so the worker is often polling with
/// notifications off when the driver adds a request), a driver that kicks only when the
/// device asks for it (`kick_needed`, EVENT_IDX or NO_NOTIFY) still gets every request
/// served: no notification is lost. Submissions are spaced so that they land before,
/// inside and after the polling windows. The worker's watchdog would serve a request left
/// without a notification after 2 s, so each batch must complete well before that.
#[test]
fn polling_and_coalescing_lose_no_notification() {
    use oxio_block::file::{Engine, FileBackend, FileOptions};
    let path = std::env::temp_dir().join(format!("oxio-blk-poll-{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(DISK).unwrap();
    for packed in [false, true] {
        let opts = FileOptions {
            engine: Engine::IoUring,
            ..FileOptions::default()
        };
        let backend = Arc::new(FileBackend::open(&path, opts).unwrap());
        let cfg = BlockConfig {
            poll_max_ns: 300_000,
            coalesce_ns: 200_000,
            ..BlockConfig::default()
        };
        let mut r = rig_on(backend, cfg, packed);
        let gaps = [0u64, 0, 20, 0, 150, 700, 0, 3000];
        let mut outstanding = 0usize;
        let mut done = 0usize;
        for i in 0..240u64 {
            let d = &mut r.drivers[0];
            add_write_4k(d, i * 8, i as u8);
            d.publish();
            if d.kick_needed() {
                r.kicks[0].write(1).unwrap();
            }
            outstanding += 1;
            std::thread::sleep(Duration::from_micros(gaps[i as usize % gaps.len()]));
            done += r.drivers[0].used().len();
            if i % 16 == 15 {
                let start = Instant::now();
                while done < outstanding {
                    done += r.drivers[0].used().len();
                    assert!(
                        start.elapsed() < Duration::from_millis(1500),
                        "packed={packed}: {} requests left without service",
                        outstanding - done
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        assert_eq!(done, outstanding);
        for i in [0u64, 77, 239] {
            assert_eq!(r.read(i * 8, 4096), (status::OK, pattern(4096, i as u8)));
        }
    }
    std::fs::remove_file(&path).unwrap();
}

/// A driver still behind the used index when the worker goes idle (its interrupt lost on
/// the way, every request it has in flight stalled) is interrupted again after the short
/// first tick (20 ms), not after the 0.5 s it took before: under QEMU TCG such a stall cost a
/// benchmark round a tenth of its time.
#[test]
fn watchdog_interrupts_a_driver_left_behind_after_a_short_first_tick() {
    let mut r = rig();
    assert_eq!(r.write(8, &pattern(512, 1)), status::OK);
    let irq = r.irq.clone();
    let irq = irq.queue_eventfd(0).unwrap();
    // Ask for an interrupt only after index 0xffff: publishing index 2 does not interrupt, and
    // the driver is then behind (as if it had missed that interrupt).
    r.drivers[0].set_used_event(0xffff);
    let _ = irq.read();
    assert_eq!(r.write(16, &pattern(512, 2)), status::OK);
    expect_short_tick_reinterrupt(irq, "the used_event");
}

/// The same on a packed ring, where the driver says how far it has consumed through the
/// DESC event mode (`off_wrap`): a driver up to date is left alone; one whose event position
/// stays behind the used position is interrupted again after the short first tick. (A QEMU
/// guest on a packed ring hung this way under TCG after a daemon restart: every request
/// completed and published, the guest waiting for an interrupt that never came.)
#[test]
fn watchdog_interrupts_a_packed_driver_left_behind() {
    let mut r = rig_with(BlockConfig::default(), true);
    assert_eq!(r.write(8, &pattern(512, 1)), status::OK);
    let irq = r.irq.clone();
    let irq = irq.queue_eventfd(0).unwrap();
    // Up to date: asks for an event at the position it has consumed up to.
    r.drivers[0].set_interrupts(true);
    let _ = irq.read();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        irq.read().is_err(),
        "interrupted a driver that is up to date"
    );
    // Asks for an event at the ring's first slot of this lap (wrap counter 1): the next
    // publish does not cross it, and the driver is then behind.
    r.drivers[0].set_driver_event(0x8000, crate::queue::RING_EVENT_FLAGS_DESC);
    assert_eq!(r.write(16, &pattern(512, 2)), status::OK);
    expect_short_tick_reinterrupt(irq, "the event position");
}

/// The driver left behind is interrupted again on the worker's short first idle tick: after
/// publish time (which `asked_by`, the driver's event position, did not ask for) and before
/// the normal 250 ms watchdog tick.
fn expect_short_tick_reinterrupt(irq: &EventFd, asked_by: &str) {
    let took = wait_for_interrupt(
        irq,
        Duration::from_millis(240),
        Duration::from_millis(1),
        "not interrupted again before the normal 250 ms watchdog tick",
    );
    assert!(
        took >= Duration::from_millis(10),
        "interrupted at publish time, which {asked_by} did not ask for"
    );
}

/// Polls `irq` every `every` until it has fired; fails with `msg` once `limit` has passed.
/// Returns how long it took.
fn wait_for_interrupt(irq: &EventFd, limit: Duration, every: Duration, msg: &str) -> Duration {
    let start = Instant::now();
    while irq.read().is_err() {
        assert!(start.elapsed() < limit, "{msg}");
        std::thread::sleep(every);
    }
    start.elapsed()
}

/// A driver that never takes a completion it was interrupted for (its `used_event` stays
/// behind the used index, as when the interrupt is lost on the way) is interrupted again by
/// the worker's watchdog; one that took everything is left alone.
#[test]
fn watchdog_interrupts_again_when_the_driver_leaves_completions_behind() {
    let mut r = rig();
    assert_eq!(r.write(8, &pattern(512, 1)), status::OK);
    let irq = r.irq.queue_eventfd(0).unwrap();
    // The driver took everything and asked for the next completion: no new interrupt.
    r.drivers[0].set_used_event(1);
    let _ = irq.read();
    std::thread::sleep(Duration::from_millis(2600));
    assert!(
        irq.read().is_err(),
        "interrupted a driver that is up to date"
    );
    // As if the driver had never seen the completion: interrupted again within a watchdog
    // period or two.
    r.drivers[0].set_used_event(0xffff);
    wait_for_interrupt(
        irq,
        Duration::from_secs(6),
        Duration::from_millis(50),
        "never interrupted again",
    );
}
