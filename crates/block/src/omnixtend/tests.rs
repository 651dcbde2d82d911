use super::*;
use crate::BlockingQueue;
use crate::IoBuf;
use oxio_omnixtend::endpoint::{serve, EndpointConfig, EndpointCore, Memory};
use oxio_omnixtend::requester::RequesterConfig;
use oxio_omnixtend::transport::fault::Faults;
use oxio_omnixtend::transport::mem::pair;
use oxio_omnixtend::wire::MacAddr;
use std::sync::atomic::AtomicBool;

const SIZE: u64 = 4 << 20;

/// A backend over a faulty in-memory wire to a memory node thread.
fn backend() -> (
    OmnixtendBackend,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let (a, mut b) = pair(Faults::soak(), Faults::soak(), 5);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let node = std::thread::spawn(move || {
        let mut core = EndpointCore::new(
            EndpointConfig::new(MacAddr::local(2)),
            Memory::anonymous(SIZE, 0).unwrap(),
        );
        serve(&mut core, &mut b, &s).unwrap();
    });
    let cfg = RequesterConfig::new(MacAddr::local(1), MacAddr::local(2), SIZE);
    let req = Requester::connect(cfg, Box::new(a), std::time::Duration::from_secs(5)).unwrap();
    (
        OmnixtendBackend::new(Arc::new(req), "test node"),
        stop,
        node,
    )
}

#[test]
fn reads_writes_zeroes_and_flush_through_the_block_api() {
    let (be, stop, node) = backend();
    assert_eq!(be.capabilities().size, SIZE);
    let mut q = BlockingQueue::new(be.open_queue(8).unwrap());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
    q.write_at(12_345, &data, true).unwrap();
    assert_eq!(&q.read_at(12_345, data.len()).unwrap()[..], &data[..]);
    q.write_zeroes(12_345, 50_000, false, false).unwrap();
    let back = q.read_at(12_345, data.len()).unwrap();
    assert!(back[..50_000].iter().all(|&b| b == 0));
    assert_eq!(&back[50_000..], &data[50_000..]);
    q.flush().unwrap();
    assert!(matches!(
        q.read_at(SIZE - 10, 20),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        q.discard(0, 4096),
        Err(BlockError::NotSupported(_))
    ));
    stop.store(true, Ordering::Relaxed);
    node.join().unwrap();
}

#[test]
fn many_requests_in_flight_complete_through_the_notifier() {
    let (be, stop, node) = backend();
    let mut q = be.open_queue(64).unwrap();
    for i in 0..64u64 {
        let buf = IoBuf::from_slice(&[i.to_le_bytes()[0]; 4096]);
        q.submit(Request {
            tag: i,
            op: Op::Write {
                offset: i * 4096,
                buf,
                fua: false,
            },
        })
        .unwrap();
    }
    assert!(
        q.submit(Request {
            tag: 99,
            op: Op::Flush
        })
        .is_err(),
        "depth is enforced"
    );
    q.commit().unwrap();
    let mut done = Vec::new();
    while done.len() < 64 {
        if q.reap(&mut done) == 0 {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&q.notifier()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
    }
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(q.in_flight(), 0);
    stop.store(true, Ordering::Relaxed);
    node.join().unwrap();
}
