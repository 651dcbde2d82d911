//! The server end to end over a Unix socket, driven byte by byte by a minimal client:
//! option haggling (every option and its error paths), structured and extended replies,
//! metadata contexts, EXPORT_NAME, and draining on shutdown.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // Test helpers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use oxio_block::memory::MemoryBackend;
use oxio_nbd::server::{
    Export, ExportSet, Listener, Server, ShardRuntimes, Shutdown, ShutdownTrigger,
};
use oxio_nbd::wire::{
    cflags, chunk, info, opt, rep, ChunkHeader, Command, OptionHeader, OptionReply, RequestHeader,
    SimpleReply,
};

const SIZE: u64 = 1 << 20;

struct Running {
    path: PathBuf,
    trigger: ShutdownTrigger,
    done: thread::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start() -> Running {
    start_with_shards(0)
}

/// A server whose connections run on `shards` single-threaded runtimes (none: on the
/// runtime that accepts them).
fn start_with_shards(shards: usize) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mk = |name: &str| {
        Arc::new(Export::new(name, Arc::new(MemoryBackend::new(SIZE).unwrap())).description("desc"))
    };
    let exports = ExportSet::new(vec![mk("a"), mk("b")]);
    let (trigger, shutdown) = Shutdown::new();
    let done = serve_in_thread(&path, exports, shutdown, shards, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    });
    Running {
        path,
        trigger,
        done,
        _dir: dir,
    }
}

/// Serves `exports` on a Unix socket at `path` from a new thread, on the runtime `rt` builds,
/// with connections on `shards` single-threaded runtimes (none: on that runtime); returns once
/// the socket listens. The thread ends when `shutdown` has drained the server.
fn serve_in_thread(
    path: &Path,
    exports: ExportSet,
    shutdown: Shutdown,
    shards: usize,
    rt: impl FnOnce() -> std::io::Result<tokio::runtime::Runtime> + Send + 'static,
) -> thread::JoinHandle<()> {
    let p = path.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let done = thread::spawn(move || {
        let rt = rt().unwrap();
        let runtimes = (shards > 0).then(|| ShardRuntimes::start(shards, "test-conn").unwrap());
        let handles = runtimes.as_ref().map(ShardRuntimes::handles);
        rt.block_on(async move {
            let l = Listener::unix(&p).unwrap();
            ready_tx.send(()).unwrap();
            Server::new(exports)
                .shards(handles.unwrap_or_default())
                .run(vec![l], shutdown)
                .await
                .unwrap();
        });
        drop(runtimes);
    });
    ready_rx.recv().unwrap();
    done
}

struct Client {
    s: UnixStream,
}

impl Client {
    fn connect(r: &Running, flags: u32) -> Self {
        let mut s = UnixStream::connect(&r.path).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([greeting[16], greeting[17]]),
            3,
            "FIXED_NEWSTYLE | NO_ZEROES"
        );
        s.write_all(&flags.to_be_bytes()).unwrap();
        Client { s }
    }

    fn send_option(&mut self, o: u32, data: &[u8]) {
        let mut m = Vec::new();
        OptionHeader {
            option: o,
            length: data.len() as u32,
        }
        .emit(&mut m);
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    fn reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; OptionReply::LEN];
        self.s.read_exact(&mut h).unwrap();
        let r = OptionReply::parse(&h).unwrap();
        let mut data = vec![0; r.length as usize];
        self.s.read_exact(&mut data).unwrap();
        (r.kind, data)
    }

    /// Sends an option and collects replies up to the final ACK or error.
    fn option(&mut self, o: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_option(o, data);
        let mut all = Vec::new();
        loop {
            let r = self.reply();
            let last = r.0 == rep::ACK || r.0 & 0x8000_0000 != 0;
            all.push(r);
            if last {
                return all;
            }
        }
    }

    fn request(
        &mut self,
        command: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u64,
        ext: bool,
    ) {
        let mut m = Vec::new();
        RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .emit(&mut m, ext);
        self.s.write_all(&m).unwrap();
    }

    fn chunk(&mut self, ext: bool) -> (ChunkHeader, Vec<u8>) {
        let mut h = vec![0u8; if ext { 32 } else { 20 }];
        self.s.read_exact(&mut h).unwrap();
        let h = ChunkHeader::parse(&h, ext).unwrap();
        let mut p = vec![0; h.length as usize];
        self.s.read_exact(&mut p).unwrap();
        (h, p)
    }

    fn simple(&mut self) -> SimpleReply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        SimpleReply::parse(&h).unwrap()
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn name_and_infos(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

fn stop(r: Running) {
    r.trigger.fire();
    r.done.join().unwrap();
}

#[test]
fn option_haggling_covers_every_option_and_error() {
    let r = start();
    let mut c = Client::connect(&r, 3);
    let list = c.option(opt::LIST, &[]);
    assert_eq!(list.len(), 3);
    assert_eq!(&list[0].1[4..5], b"a");
    assert_eq!(&list[1].1[4..], b"bdesc");
    assert_eq!(c.option(opt::LIST, b"x")[0].0, rep::ERR_INVALID);
    assert_eq!(c.option(99, b"ignored")[0].0, rep::ERR_UNSUP);
    assert_eq!(c.option(opt::STARTTLS, &[])[0].0, rep::ERR_UNSUP);
    assert_eq!(
        c.option(opt::INFO, &name_and_infos("zz", &[]))[0].0,
        rep::ERR_UNKNOWN
    );
    assert_eq!(c.option(opt::INFO, b"\0\0\0\x09a")[0].0, rep::ERR_INVALID);
    let infos = c.option(
        opt::INFO,
        &name_and_infos("b", &[info::NAME, info::DESCRIPTION, 77]),
    );
    let kinds: Vec<u16> = infos
        .iter()
        .filter(|r| r.0 == rep::INFO)
        .map(|r| u16::from_be_bytes([r.1[0], r.1[1]]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            info::EXPORT,
            info::BLOCK_SIZE,
            info::NAME,
            info::DESCRIPTION
        ]
    );
    assert_eq!(&infos[0].1[2..10], &SIZE.to_be_bytes());
    assert_eq!(infos.last().unwrap().0, rep::ACK);
    assert_eq!(
        c.option(opt::SET_META_CONTEXT, &meta("b", &["base:allocation"]))[0].0,
        rep::ERR_INVALID
    );
    let listed = c.option(opt::LIST_META_CONTEXT, &meta("b", &[]));
    assert_eq!(&listed[0].1[4..], b"base:allocation");
    assert_eq!(
        c.option(opt::LIST_META_CONTEXT, &meta("b", &["qemu:x"]))
            .len(),
        1,
        "unknown namespaces are ignored"
    );
    assert_eq!(c.option(opt::STRUCTURED_REPLY, &[])[0].0, rep::ACK);
    assert_eq!(c.option(opt::STRUCTURED_REPLY, &[])[0].0, rep::ERR_INVALID);
    let set = c.option(
        opt::SET_META_CONTEXT,
        &meta("b", &["base:allocation", "base:nope"]),
    );
    assert_eq!((set.len(), set[0].0), (2, rep::META_CONTEXT));
    let id = u32::from_be_bytes(set[0].1[..4].try_into().unwrap());
    assert_eq!(
        c.option(opt::GO, &name_and_infos("b", &[]))[1..]
            .last()
            .unwrap()
            .0,
        rep::ACK
    );

    // Transmission with structured replies and base:allocation.
    c.request(Command::Write, 0, 1, 0, 4096, false);
    c.s.write_all(&[7; 4096]).unwrap();
    assert_eq!(c.simple().error, 0);
    c.request(Command::Read, cflags::DF, 2, 0, 8192, false);
    let (h, p) = c.chunk(false);
    assert_eq!(
        (h.kind, h.flags, h.cookie),
        (chunk::OFFSET_DATA, chunk::FLAG_DONE, 2)
    );
    assert_eq!(&p[..8], &0u64.to_be_bytes());
    assert!(p[8..4104].iter().all(|&b| b == 7) && p[4104..].iter().all(|&b| b == 0));
    c.request(Command::BlockStatus, 0, 3, 0, SIZE, false);
    let (h, p) = c.chunk(false);
    assert_eq!(h.kind, chunk::BLOCK_STATUS);
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), id);
    assert_eq!(
        u32::from_be_bytes(p[4..8].try_into().unwrap()),
        65536,
        "first 64 KiB chunk holds data"
    );
    c.request(Command::Read, 0, 4, SIZE, 512, false);
    let (h, p) = c.chunk(false);
    assert_eq!(
        (h.kind, u32::from_be_bytes(p[..4].try_into().unwrap())),
        (chunk::ERROR, 22)
    );
    assert!(String::from_utf8_lossy(&p[6..]).contains("beyond the end"));
    c.request(Command::Disc, 0, 5, 0, 0, false);
    assert!(c.closed());
    stop(r);
}

#[test]
fn extended_headers_carry_64_bit_lengths() {
    let r = start();
    let mut c = Client::connect(&r, 3);
    assert_eq!(c.option(opt::EXTENDED_HEADERS, &[])[0].0, rep::ACK);
    assert_eq!(
        c.option(opt::SET_META_CONTEXT, &meta("", &["base:allocation"]))[0].0,
        rep::META_CONTEXT
    );
    c.option(opt::GO, &name_and_infos("", &[]));
    c.request(Command::Write, cflags::PAYLOAD_LEN, 1, 512, 512, true);
    c.s.write_all(&[9; 512]).unwrap();
    let (h, _) = c.chunk(true);
    assert_eq!(
        (h.kind, h.flags, h.offset),
        (chunk::NONE, chunk::FLAG_DONE, 512)
    );
    c.request(Command::Read, 0, 2, 512, 512, true);
    let (h, p) = c.chunk(true);
    assert_eq!((h.kind, h.length, p[8]), (chunk::OFFSET_DATA, 520, 9));
    c.request(Command::WriteZeroes, 0, 3, 0, 5 << 32, true);
    let (h, p) = c.chunk(true);
    assert_eq!(
        (h.kind, u32::from_be_bytes(p[..4].try_into().unwrap())),
        (chunk::ERROR, 28)
    );
    c.request(Command::BlockStatus, 0, 4, 0, SIZE, true);
    let (h, p) = c.chunk(true);
    assert_eq!(h.kind, chunk::BLOCK_STATUS_EXT);
    assert_eq!(
        u32::from_be_bytes(p[4..8].try_into().unwrap()) as usize,
        (p.len() - 8) / 16
    );
    c.request(Command::Disc, 0, 5, 0, 0, true);
    assert!(c.closed());
    stop(r);
}

#[test]
fn export_name_padding_and_hard_disconnects() {
    let r = start();
    for (flags, len) in [(1u32, 134usize), (3, 10)] {
        let mut c = Client::connect(&r, flags);
        c.send_option(opt::EXPORT_NAME, b"b");
        let mut reply = vec![0u8; len];
        c.s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..8], &SIZE.to_be_bytes());
        c.request(Command::Flush, 0, 1, 0, 0, false);
        assert_eq!(c.simple().error, 0, "simple replies after EXPORT_NAME");
    }
    let mut c = Client::connect(&r, 3);
    c.send_option(opt::EXPORT_NAME, b"missing");
    assert!(c.closed(), "an unknown EXPORT_NAME has no error path");
    let mut c = Client::connect(&r, 1 << 7);
    assert!(c.closed(), "unknown client flags");
    let mut c = Client::connect(&r, 3);
    c.s.write_all(b"NOTMAGIC\0\0\0\x03\0\0\0\0").unwrap();
    assert!(c.closed(), "bad option magic");
    let mut c = Client::connect(&r, 3);
    assert_eq!(c.option(opt::ABORT, &[])[0].0, rep::ACK);
    assert!(c.closed());
    stop(r);
}

#[test]
fn shutdown_answers_in_flight_requests_then_closes() {
    let r = start();
    let mut c = Client::connect(&r, 3);
    c.option(opt::GO, &name_and_infos("a", &[]));
    let mut burst = Vec::new();
    for i in 0..64u64 {
        RequestHeader {
            flags: cflags::FUA,
            command: Command::Write,
            cookie: i,
            offset: i * 4096,
            length: 4096,
        }
        .emit(&mut burst, false);
        burst.extend_from_slice(&[i as u8; 4096]);
    }
    c.s.write_all(&burst).unwrap();
    // Make sure the server has read the burst before asking it to stop.
    c.request(Command::Flush, 0, 999, 0, 0, false);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 65 {
        let rep = c.simple();
        assert_eq!(rep.error, 0);
        assert!(seen.insert(rep.cookie));
    }
    r.trigger.fire();
    assert!(c.closed(), "the server closes idle connections on shutdown");
    r.done.join().unwrap();
    assert!(!r.path.exists(), "the socket file is removed");
}

/// A backend whose requests wait at a gate the test opens, completing on a thread through the
/// notifier, so requests are provably in flight when shutdown fires.
mod slow {
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use oxio_block::memory::MemoryBackend;
    use oxio_block::{
        BlockBackend, BlockQueue, BlockingQueue, Capabilities, Completion, Notifier, QueueFull,
        Request, Result,
    };

    /// Counts submitted requests and holds them until opened.
    #[derive(Debug, Default)]
    pub struct Gate {
        pub submitted: AtomicUsize,
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        pub fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
        fn wait(&self) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }
    }

    #[derive(Debug)]
    pub struct Slow(pub MemoryBackend, pub Arc<Gate>);

    #[derive(Debug)]
    struct SlowQueue {
        inner: Arc<Mutex<BlockingQueue>>,
        done: Arc<Mutex<Vec<Completion>>>,
        notifier: Notifier,
        gate: Arc<Gate>,
        in_flight: usize,
    }

    impl BlockBackend for Slow {
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn open_queue(&self, _depth: usize) -> Result<Box<dyn BlockQueue>> {
            let inner = Arc::new(Mutex::new(BlockingQueue::new(self.0.open_queue(1)?)));
            let (done, notifier, gate) = (Arc::default(), Notifier::new()?, self.1.clone());
            Ok(Box::new(SlowQueue {
                inner,
                done,
                notifier,
                gate,
                in_flight: 0,
            }))
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }

    impl BlockQueue for SlowQueue {
        fn submit(&mut self, req: Request) -> std::result::Result<(), QueueFull> {
            let (inner, done) = (self.inner.clone(), self.done.clone());
            let (n, gate) = (self.notifier.try_clone().unwrap(), self.gate.clone());
            self.in_flight += 1;
            gate.submitted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                gate.wait();
                let Request { tag, op } = req;
                let (result, buf) = match inner.lock().unwrap().run(op) {
                    Ok(buf) => (Ok(()), buf),
                    Err(e) => (Err(e), None),
                };
                done.lock().unwrap().push(Completion { tag, result, buf });
                n.signal();
            });
            Ok(())
        }
        fn commit(&mut self) -> Result<()> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
            self.notifier.clear();
            let mut d = self.done.lock().unwrap();
            let n = d.len();
            self.in_flight -= n;
            out.append(&mut d);
            n
        }
        fn notifier(&self) -> BorrowedFd<'_> {
            self.notifier.fd()
        }
        fn in_flight(&self) -> usize {
            self.in_flight
        }
        fn depth(&self) -> usize {
            usize::MAX
        }
    }
}

#[test]
fn shutdown_drains_requests_still_in_the_backend() {
    // On shard runtimes, as `oxio serve` runs connections (the other tests use the
    // accepting runtime): the drain must reach requests on another runtime's thread.
    let shards = 2;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.sock");
    let gate = Arc::new(slow::Gate::default());
    let backend = Arc::new(slow::Slow(MemoryBackend::new(SIZE).unwrap(), gate.clone()));
    let exports = ExportSet::new(vec![Arc::new(Export::new("", backend))]);
    let (trigger, shutdown) = Shutdown::new();
    let done = serve_in_thread(&path, exports, shutdown, shards, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    });
    let r = Running {
        path,
        trigger,
        done,
        _dir: dir,
    };
    let mut c = Client::connect(&r, 3);
    c.option(opt::GO, &name_and_infos("", &[]));
    let mut burst = Vec::new();
    for i in 0..32u64 {
        RequestHeader {
            flags: 0,
            command: Command::Write,
            cookie: i,
            offset: i * 512,
            length: 512,
        }
        .emit(&mut burst, false);
        burst.extend_from_slice(&[1; 512]);
    }
    c.s.write_all(&burst).unwrap();
    // All 32 are in the backend, held at the gate, when shutdown fires.
    while gate.submitted.load(std::sync::atomic::Ordering::SeqCst) < 32 {
        thread::sleep(std::time::Duration::from_millis(1));
    }
    r.trigger.fire();
    thread::sleep(std::time::Duration::from_millis(20));
    gate.open();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let rep = c.simple();
        assert_eq!(rep.error, 0, "in-flight writes complete normally");
        seen.insert(rep.cookie);
    }
    assert_eq!(seen.len(), 32);
    assert!(c.closed());
    r.done.join().unwrap();
}

#[test]
fn a_live_servers_socket_is_not_stolen_but_a_stale_one_is_replaced() {
    let r = start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = Listener::unix(&r.path).unwrap_err().to_string();
        assert!(err.contains("Cannot listen"), "{err}");
    });
    let stale = r.path.with_file_name("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    rt.block_on(async { Listener::unix(&stale).unwrap() });
    stop(r);
}

#[test]
fn writes_on_one_connection_are_seen_by_another_after_flush() {
    writes_seen_across_connections(start());
}

#[test]
fn connections_spread_over_shard_runtimes_share_data_and_drain() {
    // Three connections on two shards: two of them live on the same shard's thread.
    let r = start_with_shards(2);
    let mut idle = Client::connect(&r, 3);
    idle.option(opt::GO, &name_and_infos("b", &[]));
    writes_seen_across_connections(r);
}

/// Two clients each write and flush, then read what the other wrote (CAN_MULTI_CONN); the
/// server then stops, which must wait for every connection wherever it runs.
fn writes_seen_across_connections(r: Running) {
    let mut a = Client::connect(&r, 3);
    let mut b = Client::connect(&r, 3);
    a.option(opt::GO, &name_and_infos("a", &[]));
    b.option(opt::GO, &name_and_infos("a", &[]));
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        let offset = 8192 * i as u64;
        c.request(Command::Write, 0, 1, offset, 4096, false);
        c.s.write_all(&[0x40 + i as u8; 4096]).unwrap();
        assert_eq!(c.simple().error, 0);
        c.request(Command::Flush, 0, 2, 0, 0, false);
        assert_eq!(c.simple().error, 0);
    }
    // Each connection reads what the other wrote (CAN_MULTI_CONN).
    for (c, offset, byte) in [(&mut a, 8192u64, 0x41u8), (&mut b, 0, 0x40)] {
        c.request(Command::Read, 0, 3, offset, 4096, false);
        assert_eq!(c.simple().error, 0);
        let mut data = vec![0u8; 4096];
        c.s.read_exact(&mut data).unwrap();
        assert!(data.iter().all(|&x| x == byte));
    }
    stop(r);
}

#[test]
fn shutdown_does_not_wait_for_clients_still_negotiating() {
    let r = start();
    let mut c = Client::connect(&r, 3); // greeting read, flags sent, no option yet
    r.trigger.fire();
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 1];
    // Closed at once (EOF, or a reset if the flags were still unread), not after the 60 s
    // handshake timeout: a read timeout here is the failure.
    match c.s.read(&mut b) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    r.done.join().unwrap();
}

#[test]
fn clients_beyond_the_connection_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limit.sock");
    let exports = ExportSet::new(vec![Arc::new(Export::new(
        "",
        Arc::new(MemoryBackend::new(SIZE).unwrap()),
    ))]);
    let (trigger, shutdown) = Shutdown::new();
    let p = path.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let done = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = Listener::unix(&p).unwrap();
            ready_tx.send(()).unwrap();
            Server::new(exports)
                .max_connections(1)
                .run(vec![l], shutdown)
                .await
                .unwrap();
        });
    });
    ready_rx.recv().unwrap();
    let r = Running {
        path,
        trigger,
        done,
        _dir: dir,
    };
    let mut first = Client::connect(&r, 3);
    first.option(opt::GO, &name_and_infos("", &[]));
    let mut second = UnixStream::connect(&r.path).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(second.read(&mut b), Ok(0) | Err(_)),
        "the second client is closed"
    );
    first.request(Command::Flush, 0, 1, 0, 0, false);
    assert_eq!(first.simple().error, 0, "the first is still served");
    first.request(Command::Disc, 0, 2, 0, 0, false);
    assert!(first.closed());
    // Its slot is freed once the connection's task has ended: retry until a client is served.
    let served = (0..500).any(|_| {
        let mut s = UnixStream::connect(&r.path).unwrap();
        let mut greeting = [0u8; 18];
        let ok = s.read_exact(&mut greeting).is_ok();
        if !ok {
            thread::sleep(std::time::Duration::from_millis(20));
        }
        ok
    });
    assert!(served, "a client is served again after the first one left");
    stop(r);
}
