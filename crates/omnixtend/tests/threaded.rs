//! The threaded requester handle against a memory node thread, over the in-memory transport
//! (with faults) and over UDP on loopback; reconnection after a node restart.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use oxio_omnixtend::endpoint::{serve, EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::requester::{IoError, Requester, RequesterConfig};
use oxio_omnixtend::transport::fault::Faults;
use oxio_omnixtend::transport::mem::{pair, MemTransport};
use oxio_omnixtend::transport::udp::UdpTransport;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::MacAddr;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

const SIZE: u64 = 8 << 20;

struct Node<T: Transport + 'static> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<T>,
}

fn start_node<T: Transport + 'static>(mut transport: T, mac: MacAddr) -> Node<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut core = EndpointCore::new(
            EndpointConfig::new(mac),
            Memory::anonymous(SIZE, 0).unwrap(),
        );
        serve(&mut core, &mut transport, &s).unwrap();
        transport
    });
    Node { stop, thread }
}

impl<T: Transport + 'static> Node<T> {
    fn stop(self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn config() -> RequesterConfig {
    let mut c = RequesterConfig::new(MacAddr::local(1), MacAddr::local(2), SIZE);
    c.reconnect_after = Duration::from_millis(200);
    c
}

/// Random writes then read-backs through the blocking API, many threads at once.
fn exercise(req: &Arc<Requester>, seed: u64, rounds: usize) {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let req = req.clone();
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed + t);
                let region = SIZE / 4;
                for _ in 0..rounds {
                    let off = t * region + rng.random_range(0..region - 70_000);
                    let mut data = vec![0u8; rng.random_range(1..70_000)];
                    rng.fill(&mut data[..]);
                    req.write_at(off, &data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    req.read_at(off, &mut back).unwrap();
                    assert!(back == data, "read-back mismatch at {off:#x}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn pipelined_io_over_a_faulty_in_memory_wire() {
    let (a, b) = pair(Faults::soak(), Faults::soak(), 42);
    let node = start_node(b, MacAddr::local(2));
    let req = Arc::new(Requester::connect(config(), Box::new(a), Duration::from_secs(5)).unwrap());
    exercise(&req, 1, 20);
    let s = req.stats();
    assert_eq!(s.errors, 0);
    // Completion callbacks: many requests submitted at once.
    let (tx, rx) = mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        req.submit_read(i * 4096, vec![0; 4096], move |r| {
            tx.send(r.map(|b| b.len())).unwrap()
        });
    }
    for _ in 0..64 {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(),
            4096
        );
    }
    assert!(matches!(
        req.read_at(SIZE - 4, &mut [0; 8]),
        Err(IoError::OutOfRange { .. })
    ));
    req.shutdown();
    assert!(matches!(req.write_at(0, &[1]), Err(IoError::Shutdown)));
    node.stop();
}

#[test]
fn pipelined_io_over_udp() {
    let node_t = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = node_t.local_addr().unwrap();
    let node = start_node(node_t, MacAddr::local(2));
    let req_t = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), Some(addr)).unwrap();
    let req =
        Arc::new(Requester::connect(config(), Box::new(req_t), Duration::from_secs(5)).unwrap());
    exercise(&req, 7, 20);
    req.shutdown();
    node.stop();
}

#[test]
fn connect_fails_clearly_without_a_node() {
    let (a, _b) = pair(Faults::NONE, Faults::NONE, 1);
    let err = Requester::connect(config(), Box::new(a), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, IoError::TimedOut(_)), "{err}");
}

#[test]
fn reconnects_after_the_node_restarts() {
    let (a, b): (MemTransport, MemTransport) = pair(Faults::NONE, Faults::NONE, 3);
    let node = start_node(b, MacAddr::local(2));
    let req = Requester::connect(config(), Box::new(a), Duration::from_secs(5)).unwrap();
    req.write_at(0, &[7; 4096]).unwrap();
    // The node restarts with fresh state (and fresh memory).
    let b = node.stop();
    let node = start_node(b, MacAddr::local(2));
    req.write_at(4096, &[9; 4096]).unwrap();
    let mut back = [0u8; 4096];
    req.read_at(4096, &mut back).unwrap();
    assert_eq!(back, [9; 4096]);
    std::thread::sleep(Duration::from_millis(100)); // stats are published every 20 ms
    assert!(req.stats().reconnects >= 1, "{:?}", req.stats());
    req.shutdown();
    node.stop();
}

#[test]
fn dropping_the_last_handle_inside_a_callback_does_not_deadlock() {
    let (a, b) = pair(Faults::NONE, Faults::NONE, 9);
    let node = start_node(b, MacAddr::local(2));
    let req = Arc::new(Requester::connect(config(), Box::new(a), Duration::from_secs(5)).unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = req.clone();
    req.submit_read(0, vec![0; 64], move |r| {
        drop(inner); // may be the last reference, dropped on the I/O thread
        tx.send(r.is_ok()).unwrap();
    });
    drop(req);
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    node.stop();
}

#[test]
fn two_requesters_share_one_node_over_udp() {
    let node_t = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = node_t.local_addr().unwrap();
    let node = start_node(node_t, MacAddr::local(2));
    let connect = |mac: u32| {
        let t = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), Some(addr)).unwrap();
        let cfg = RequesterConfig::new(MacAddr::local(mac), MacAddr::local(2), SIZE);
        Arc::new(Requester::connect(cfg, Box::new(t), Duration::from_secs(5)).unwrap())
    };
    let (a, b) = (connect(10), connect(11));
    let ta = {
        let a = a.clone();
        std::thread::spawn(move || a.write_at(0, &[0xa5; 100_000]).unwrap())
    };
    b.write_at(200_000, &[0x5a; 100_000]).unwrap();
    ta.join().unwrap();
    // Each sees what the other wrote: one memory, two connections.
    let mut buf = vec![0u8; 100_000];
    a.read_at(200_000, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0x5a));
    b.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xa5));
    a.shutdown();
    b.shutdown();
    node.stop();
}
