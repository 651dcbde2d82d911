//! `memory`: a sparse RAM disk.
//!
//! Storage is a two-level table of 64 KiB chunks, allocated on first write and freed again
//! when a whole chunk is discarded or zeroed, so a 1 TiB export costs only what is written.
//! Each chunk has its own reader/writer lock: many connections and threads work in parallel
//! unless they touch the same 64 KiB. There is no cache, so every completed write is visible
//! to every queue at once (multi-conn safe) and flush has nothing to do.
//!
//! Requests complete inline in [`BlockQueue::submit`]: a memcpy is cheaper than any hand-off.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{
    BlockBackend, BlockError, BlockQueue, BlockSizes, Capabilities, Completion, DirectAccess,
    Extent, Notifier, Op, QueueFull, Request, Result, DIRECT_MAX_SLICES, MAX_IO_BYTES,
};

const CHUNK_SHIFT: u32 = 16;
const CHUNK: u64 = 1 << CHUNK_SHIFT;
const CHUNK_BYTES: usize = 1 << CHUNK_SHIFT;
const L2_LEN: u64 = 4096;
/// The largest memory backend (64 TiB): keeps the first-level table small.
pub const MAX_MEMORY_SIZE: u64 = 1 << 46;

type Chunk = RwLock<Option<Box<[u8]>>>;
type ChunkRead<'a> = RwLockReadGuard<'a, Option<Box<[u8]>>>;
type ChunkWrite<'a> = RwLockWriteGuard<'a, Option<Box<[u8]>>>;

/// What readers of never-written chunks are lent by [`DirectAccess::read_with`].
static ZEROES: [u8; CHUNK_BYTES] = [0; CHUNK_BYTES];

/// A sparse in-memory block device.
#[derive(Debug)]
pub struct MemoryBackend {
    store: Arc<Store>,
}

#[derive(Debug)]
struct Store {
    size: u64,
    l1: Box<[OnceLock<Box<[Chunk]>>]>,
    allocated_chunks: AtomicU64,
}

/// One piece of a request that falls within a single chunk.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    chunk: u64,
    within: usize,
    len: usize,
    pos: usize,
}

impl MemoryBackend {
    /// A zero-filled device of `size` bytes (at most [`MAX_MEMORY_SIZE`]).
    pub fn new(size: u64) -> Result<Self> {
        if size > MAX_MEMORY_SIZE {
            return Err(BlockError::Invalid("memory backends are limited to 64 TiB"));
        }
        let chunks = size.div_ceil(CHUNK);
        let l1_len = usize::try_from(chunks.div_ceil(L2_LEN))
            .map_err(|_| BlockError::Invalid("memory backend too large for this machine"))?;
        let l1 = (0..l1_len).map(|_| OnceLock::new()).collect();
        Ok(MemoryBackend {
            store: Arc::new(Store {
                size,
                l1,
                allocated_chunks: AtomicU64::new(0),
            }),
        })
    }

    /// Bytes of RAM currently holding data.
    pub fn allocated_bytes(&self) -> u64 {
        self.store.allocated_chunks.load(Ordering::Relaxed) * CHUNK
    }
}

impl Store {
    fn chunk(&self, index: u64) -> Option<&Chunk> {
        let l2 = self.l1.get(usize::try_from(index / L2_LEN).ok()?)?.get()?;
        l2.get(usize::try_from(index % L2_LEN).ok()?)
    }

    fn chunk_or_create(&self, index: u64) -> Option<&Chunk> {
        let slot = self.l1.get(usize::try_from(index / L2_LEN).ok()?)?;
        let l2 = slot.get_or_init(|| (0..L2_LEN).map(|_| RwLock::new(None)).collect());
        l2.get(usize::try_from(index % L2_LEN).ok()?)
    }

    /// Splits `[offset, offset+len)` into per-chunk segments. The caller has range-checked.
    #[allow(clippy::cast_possible_truncation)] // Documented below: every cast value < 64 KiB.
    fn segments(offset: u64, len: u64) -> impl Iterator<Item = Segment> {
        let end = offset + len;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let chunk = at >> CHUNK_SHIFT;
            let within = at & (CHUNK - 1);
            let seg = (CHUNK - within).min(end - at);
            // Casts: `within` and `seg` are < CHUNK (64 KiB); `at - offset` is bounded by a
            // buffer length, which is a usize, for reads and writes (callers of `pos`).
            let s = Segment {
                chunk,
                within: within as usize,
                len: seg as usize,
                pos: usize::try_from(at - offset).unwrap_or(usize::MAX),
            };
            at += seg;
            Some(s)
        })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        for s in Self::segments(offset, buf.len() as u64) {
            let dst = &mut buf[s.pos..s.pos + s.len];
            let guard = self
                .chunk(s.chunk)
                .map(|c| c.read().unwrap_or_else(|p| p.into_inner()));
            match guard.as_deref() {
                Some(Some(data)) => dst.copy_from_slice(&data[s.within..s.within + s.len]),
                _ => dst.fill(0),
            }
        }
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        for s in Self::segments(offset, buf.len() as u64) {
            let chunk = self
                .chunk_or_create(s.chunk)
                .ok_or(BlockError::Invalid("bad chunk"))?;
            let mut guard = chunk.write().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(Self::alloc_chunk()?);
                self.allocated_chunks.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(data) = guard.as_mut() {
                data[s.within..s.within + s.len].copy_from_slice(&buf[s.pos..s.pos + s.len]);
            }
        }
        Ok(())
    }

    fn alloc_chunk() -> Result<Box<[u8]>> {
        let mut v = Vec::new();
        v.try_reserve_exact(CHUNK_BYTES)
            .map_err(|_| BlockError::NoSpace)?;
        v.resize(CHUNK_BYTES, 0);
        Ok(v.into_boxed_slice())
    }

    /// Zeroes the range, freeing chunks it covers entirely.
    fn zero(&self, offset: u64, len: u64) {
        for s in Self::segments(offset, len) {
            let Some(chunk) = self.chunk(s.chunk) else {
                continue;
            };
            let mut guard = chunk.write().unwrap_or_else(|p| p.into_inner());
            if s.len as u64 == CHUNK {
                if guard.take().is_some() {
                    self.allocated_chunks.fetch_sub(1, Ordering::Relaxed);
                }
            } else if let Some(data) = guard.as_mut() {
                data[s.within..s.within + s.len].fill(0);
            }
        }
    }

    fn is_allocated(&self, chunk: u64) -> bool {
        self.chunk(chunk)
            .map(|c| c.read().unwrap_or_else(|p| p.into_inner()).is_some())
            .unwrap_or(false)
    }

    fn execute(&self, op: &mut Op) -> Result<()> {
        match op {
            Op::Read { offset, buf } => self.read(*offset, buf),
            Op::Write { offset, buf, .. } => self.write(*offset, buf)?,
            Op::Discard { offset, len } | Op::WriteZeroes { offset, len, .. } => {
                self.zero(*offset, *len);
            }
            Op::Flush | Op::Cache { .. } => {}
        }
        Ok(())
    }
}

impl DirectAccess for Store {
    fn read_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut guards: [Option<ChunkRead<'_>>; DIRECT_MAX_SLICES] = std::array::from_fn(|_| None);
        let mut segs = [Segment::default(); DIRECT_MAX_SLICES];
        let mut n = 0;
        for (s, (guard, seg)) in Self::segments(offset, len).zip(guards.iter_mut().zip(&mut segs)) {
            *guard = self
                .chunk(s.chunk)
                .map(|c| c.read().unwrap_or_else(|p| p.into_inner()));
            *seg = s;
            n += 1;
        }
        let mut iov = [IoSlice::new(&[]); DIRECT_MAX_SLICES];
        for ((slot, guard), s) in iov.iter_mut().zip(&guards).zip(&segs).take(n) {
            *slot = IoSlice::new(match guard.as_deref() {
                Some(Some(data)) => &data[s.within..s.within + s.len],
                _ => &ZEROES[..s.len],
            });
        }
        f(&iov[..n])
    }

    fn write_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    ) -> Result<io::Result<usize>> {
        let mut guards: [Option<ChunkWrite<'_>>; DIRECT_MAX_SLICES] = std::array::from_fn(|_| None);
        let mut segs = [Segment::default(); DIRECT_MAX_SLICES];
        let mut n = 0;
        for (s, (slot, seg)) in Self::segments(offset, len).zip(guards.iter_mut().zip(&mut segs)) {
            let chunk = self
                .chunk_or_create(s.chunk)
                .ok_or(BlockError::Invalid("bad chunk"))?;
            let mut guard = chunk.write().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(Self::alloc_chunk()?);
                self.allocated_chunks.fetch_add(1, Ordering::Relaxed);
            }
            *slot = Some(guard);
            *seg = s;
            n += 1;
        }
        let mut iov: [IoSliceMut<'_>; DIRECT_MAX_SLICES] =
            std::array::from_fn(|_| IoSliceMut::new(&mut []));
        for ((slot, guard), s) in iov.iter_mut().zip(guards.iter_mut()).zip(&segs).take(n) {
            if let Some(Some(data)) = guard.as_deref_mut() {
                *slot = IoSliceMut::new(&mut data[s.within..s.within + s.len]);
            }
        }
        Ok(f(&mut iov[..n]))
    }

    // The plain copies skip the slice tables (small requests are most of the traffic).
    fn read_into(&self, offset: u64, dst: &mut [u8]) {
        self.read(offset, dst);
    }

    fn write_from(&self, offset: u64, src: &[u8]) -> Result<()> {
        self.write(offset, src)
    }
}

impl BlockBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            size: self.store.size,
            read_only: false,
            flush: true,
            fua: true,
            discard: true,
            write_zeroes: true,
            fast_zero: true,
            cache: true,
            multi_conn: true,
            extents: true,
            rotational: false,
            block_size: BlockSizes {
                min: 1,
                preferred: 4096,
                max: MAX_IO_BYTES,
            },
        }
    }

    fn open_queue(&self, depth: usize) -> Result<Box<dyn BlockQueue>> {
        Ok(Box::new(MemoryQueue {
            store: Arc::clone(&self.store),
            caps: self.capabilities(),
            done: Vec::with_capacity(depth),
            depth: depth.max(1),
            notifier: Notifier::new()?,
            offload: None,
            offloaded: 0,
        }))
    }

    fn extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        self.capabilities().check_range(offset, len)?;
        for s in Store::segments(offset, len) {
            let hole = !self.store.is_allocated(s.chunk);
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += s.len as u64,
                _ => out.push(Extent {
                    len: s.len as u64,
                    hole,
                    zero: hole,
                }),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("memory ({} bytes, sparse)", self.store.size)
    }

    fn direct(&self) -> Option<&dyn DirectAccess> {
        Some(&*self.store)
    }
}

/// Reads and writes at least this large are copied on worker threads, so one connection
/// can use several cores for bulk transfers while its own thread keeps the socket busy.
const OFFLOAD_MIN: usize = 256 << 10;
/// Worker threads per queue for large copies.
const OFFLOAD_WORKERS: usize = 2;

/// A queue on a [`MemoryBackend`]. Small requests complete inside `submit`; large reads and
/// writes go to two worker threads and complete through the notifier.
#[derive(Debug)]
struct MemoryQueue {
    store: Arc<Store>,
    caps: Capabilities,
    done: Vec<Completion>,
    depth: usize,
    notifier: Notifier,
    offload: Option<Offload>,
    offloaded: usize,
}

/// Worker threads for large copies, started on first use.
#[derive(Debug)]
struct Offload {
    tx: Option<mpsc::Sender<Request>>,
    done: Arc<Mutex<Vec<Completion>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Offload {
    fn start(store: &Arc<Store>, caps: Capabilities, notifier: &Notifier) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for i in 0..OFFLOAD_WORKERS {
            let (store, rx, done, notifier) = (
                Arc::clone(store),
                Arc::clone(&rx),
                Arc::clone(&done),
                notifier.try_clone()?,
            );
            let worker = move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(mut req) = next else { return };
                let result = caps
                    .check(&req.op)
                    .and_then(|()| store.execute(&mut req.op));
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Completion::new(req, result));
                notifier.signal();
            };
            let handle = std::thread::Builder::new()
                .name(format!("oxio-mem-{i}"))
                .spawn(worker)
                .map_err(|e| BlockError::io("start a copy worker thread", e))?;
            workers.push(handle);
        }
        Ok(Offload {
            tx: Some(tx),
            done,
            workers,
        })
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl MemoryQueue {
    fn is_large(op: &Op) -> bool {
        matches!(op, Op::Read { buf, .. } | Op::Write { buf, .. } if buf.len() >= OFFLOAD_MIN)
    }

    /// Hands a large request to the workers; gives it back if they cannot be started.
    fn offload(&mut self, req: Request) -> std::result::Result<(), Request> {
        if self.offload.is_none() {
            match Offload::start(&self.store, self.caps, &self.notifier) {
                Ok(o) => self.offload = Some(o),
                Err(_) => return Err(req),
            }
        }
        let Some(tx) = self.offload.as_ref().and_then(|o| o.tx.as_ref()) else {
            return Err(req);
        };
        tx.send(req).map_err(|mpsc::SendError(req)| req)?;
        self.offloaded += 1;
        Ok(())
    }
}

impl BlockQueue for MemoryQueue {
    fn submit(&mut self, mut req: Request) -> std::result::Result<(), QueueFull> {
        if self.in_flight() >= self.depth {
            return Err(QueueFull(req));
        }
        if Self::is_large(&req.op) {
            match self.offload(req) {
                Ok(()) => return Ok(()),
                Err(back) => req = back,
            }
        }
        let result = self
            .caps
            .check(&req.op)
            .and_then(|()| self.store.execute(&mut req.op));
        self.done.push(Completion::new(req, result));
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = self.done.len();
        out.append(&mut self.done);
        if let (Some(o), true) = (&self.offload, self.offloaded > 0) {
            self.notifier.clear();
            let mut done = o.done.lock().unwrap_or_else(|p| p.into_inner());
            n += done.len();
            self.offloaded -= done.len();
            out.append(&mut done);
        }
        n
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notifier.fd()
    }

    fn in_flight(&self) -> usize {
        self.done.len() + self.offloaded
    }

    fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // Test sizes are small constants.
mod tests {
    use super::*;
    use crate::{BlockingQueue, IoBuf};

    fn queue(size: u64) -> (MemoryBackend, BlockingQueue) {
        let b = MemoryBackend::new(size).unwrap();
        let q = BlockingQueue::new(b.open_queue(4).unwrap());
        (b, q)
    }

    #[test]
    fn unwritten_reads_zero_and_writes_read_back_across_chunks() {
        let (b, mut q) = queue(1 << 20);
        assert!(q.read_at(0, 4096).unwrap().iter().all(|&x| x == 0));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        q.write_at(CHUNK - 100, &data, false).unwrap();
        assert_eq!(&*q.read_at(CHUNK - 100, data.len()).unwrap(), &data[..]);
        assert_eq!(b.allocated_bytes(), 5 * CHUNK);
    }

    #[test]
    fn zeroing_frees_whole_chunks_and_reports_holes() {
        let (b, mut q) = queue(4 * CHUNK);
        q.write_at(0, &vec![1u8; (4 * CHUNK) as usize], false)
            .unwrap();
        q.write_zeroes(10, 2 * CHUNK, true, false).unwrap();
        assert_eq!(b.allocated_bytes(), 3 * CHUNK);
        let got = q.read_at(0, (4 * CHUNK) as usize).unwrap();
        assert!(got[..10].iter().all(|&x| x == 1));
        assert!(got[10..(2 * CHUNK + 10) as usize].iter().all(|&x| x == 0));
        assert!(got[(2 * CHUNK + 10) as usize..].iter().all(|&x| x == 1));
        let mut ext = Vec::new();
        b.extents(0, 4 * CHUNK, &mut ext).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    len: CHUNK,
                    hole: false,
                    zero: false
                },
                Extent {
                    len: CHUNK,
                    hole: true,
                    zero: true
                },
                Extent {
                    len: 2 * CHUNK,
                    hole: false,
                    zero: false
                },
            ]
        );
        q.discard(0, 4 * CHUNK).unwrap();
        assert_eq!(b.allocated_bytes(), 0);
    }

    #[test]
    fn out_of_range_requests_fail_without_side_effects() {
        let (b, mut q) = queue(8192);
        let err = q.write_at(8000, &[1u8; 500], false).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        assert!(q.read_at(u64::MAX - 10, 100).is_err());
        assert_eq!(b.allocated_bytes(), 0);
        assert!(b.extents(8192, 1, &mut Vec::new()).is_err());
        assert!(MemoryBackend::new(MAX_MEMORY_SIZE + 1).is_err());
    }

    #[test]
    fn large_requests_complete_on_workers_through_the_notifier() {
        let b = MemoryBackend::new(8 << 20).unwrap();
        let mut q = b.open_queue(8).unwrap();
        for tag in 0..4u64 {
            let buf = IoBuf::from_slice(&vec![tag as u8 + 1; OFFLOAD_MIN]);
            let op = Op::Write {
                offset: tag * OFFLOAD_MIN as u64,
                buf,
                fua: false,
            };
            q.submit(Request { tag, op }).unwrap();
        }
        q.submit(Request {
            tag: 9,
            op: Op::Flush,
        })
        .unwrap();
        assert_eq!(q.in_flight(), 5);
        let mut out = Vec::new();
        while out.len() < 5 {
            if q.reap(&mut out) == 0 {
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&q.notifier()),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: valid pollfd array of length 1.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
        }
        assert!(out.iter().all(|c| c.result.is_ok()));
        assert_eq!(q.in_flight(), 0);
        let mut bq = BlockingQueue::new(q);
        let got = bq.read_at(0, 4 * OFFLOAD_MIN).unwrap();
        for tag in 0..4usize {
            assert!(got[tag * OFFLOAD_MIN..(tag + 1) * OFFLOAD_MIN]
                .iter()
                .all(|&x| x == tag as u8 + 1));
        }
    }

    #[test]
    fn direct_access_lends_storage_and_zeroes() {
        let b = MemoryBackend::new(8 << 20).unwrap();
        let d = b.direct().unwrap();
        // A never-written range is lent as zero slices, one per chunk, and allocates nothing.
        let n = d
            .read_with(CHUNK - 10, 20, &mut |s| {
                assert_eq!(s.iter().map(|s| s.len()).collect::<Vec<_>>(), [10, 10]);
                assert!(s.iter().all(|s| s.iter().all(|&x| x == 0)));
                Ok(20)
            })
            .unwrap();
        assert_eq!((n, b.allocated_bytes()), (20, 0));
        // More than DIRECT_MAX_SLICES chunks: offered in several calls, stored in full.
        let data: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 253) as u8).collect();
        let mut first = 0;
        d.write_with(100, data.len() as u64, &mut |s| {
            first = s.iter().map(|s| s.len()).sum();
            assert_eq!(s.len(), DIRECT_MAX_SLICES);
            Ok(0)
        })
        .unwrap()
        .unwrap();
        assert_eq!(first, DIRECT_MAX_SLICES * CHUNK_BYTES - 100);
        d.write_from(100, &data).unwrap();
        let mut back = vec![0u8; data.len() + 200];
        d.read_into(0, &mut back);
        assert!(back[..100].iter().all(|&x| x == 0));
        assert_eq!(&back[100..100 + data.len()], &data[..]);
        assert!(back[100 + data.len()..].iter().all(|&x| x == 0));
        // The queue path sees what direct access stored.
        let mut q = BlockingQueue::new(b.open_queue(1).unwrap());
        assert_eq!(&*q.read_at(100, 4096).unwrap(), &data[..4096]);
    }

    #[test]
    fn queue_depth_is_enforced_until_reaped() {
        let b = MemoryBackend::new(1 << 20).unwrap();
        let mut q = b.open_queue(2).unwrap();
        for tag in 0..2 {
            q.submit(Request { tag, op: Op::Flush }).unwrap();
        }
        assert!(q
            .submit(Request {
                tag: 9,
                op: Op::Flush
            })
            .is_err());
        let mut out = Vec::new();
        assert_eq!(q.reap(&mut out), 2);
        assert_eq!(q.in_flight(), 0);
        let read = Op::Read {
            offset: 0,
            buf: IoBuf::zeroed(16),
        };
        q.submit(Request { tag: 3, op: read }).unwrap();
        q.reap(&mut out);
        assert_eq!(out[2].tag, 3);
        assert_eq!(out[2].buf.as_ref().map(|b| b.len()), Some(16));
    }
}
