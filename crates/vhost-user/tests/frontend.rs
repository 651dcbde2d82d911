//! The daemon driven by the `vhost` crate's own frontend over a real Unix socket, with guest
//! memory in a shared file and the queue engine's mock driver playing the guest: feature and
//! protocol negotiation, config space, memory-table translation, two queues on worker
//! threads, GET_VRING_BASE, reconnection of a second frontend that resumes where the first
//! stopped, and shutdown.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use oxio_vhost_user::{Daemon, Shutdown};
use oxio_virtio::device::{features, ActiveQueue, DeviceError};
use oxio_virtio::mock::{Buf, MockDriver, MockLayout, Placement};
use oxio_virtio::{GuestMemory, Interrupt, QueueState, RingFeatures, VirtioDevice};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 1 << 20;
/// Where the "VMM" pretends to have mapped guest RAM: vring addresses are sent in this space.
const USER_BASE: u64 = 0x7f12_3400_0000;
const QSIZE: u16 = 64;

/// A device that copies each chain's readable bytes into its writable part, one worker
/// thread per queue, like the block device.
#[derive(Debug, Default)]
struct Echo {
    workers: Vec<(EventFd, JoinHandle<(u16, QueueState)>)>,
    activations: usize,
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u32 {
        0x7f
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }
    fn device_features(&self) -> u64 {
        features::RING_ALL
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset + i as u64).to_le_bytes()[0]; // the low byte: a recognisable pattern
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        self.activations += 1;
        for q in queues {
            let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let stop2 = stop.try_clone().unwrap();
            let mem = mem.clone();
            let irq = interrupt.clone();
            let h = std::thread::spawn(move || echo_worker(q, mem, irq, stop2));
            self.workers.push((stop, h));
        }
        Ok(())
    }
    fn reset(&mut self) -> Vec<(u16, QueueState)> {
        self.workers
            .drain(..)
            .map(|(stop, h)| {
                stop.write(1).unwrap();
                h.join().unwrap()
            })
            .collect()
    }
}

fn echo_worker(
    mut q: ActiveQueue,
    mem: GuestMemory,
    irq: Arc<dyn Interrupt>,
    stop: EventFd,
) -> (u16, QueueState) {
    use std::io::{Read, Write};
    loop {
        loop {
            q.queue.disable_notification();
            while let Some(chain) = q.queue.pop(&mem).unwrap() {
                let mut data = Vec::new();
                chain.reader().read_to_end(&mut data).unwrap();
                let mut w = chain.writer();
                let n = w.write(&data).unwrap();
                q.queue.add_used(chain.id(), u32::try_from(n).unwrap());
            }
            if q.queue.publish_used() {
                irq.signal_used(q.index).unwrap();
            }
            if !q.queue.enable_notification(&mem).unwrap() {
                break;
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: q.kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[1].revents != 0 {
            return (q.index, q.queue.state());
        }
        let _ = q.kick.read();
    }
}

/// Guest RAM in a file both "VMM" and daemon map, plus a mock driver per queue.
struct Guest {
    file: File,
    drivers: Vec<MockDriver>,
}

impl Guest {
    fn new(packed: bool) -> Self {
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEM_SIZE).unwrap();
        let region = MmapRegion::from_file(
            FileOffset::new(file.try_clone().unwrap(), 0),
            usize::try_from(MEM_SIZE).unwrap(),
        )
        .unwrap();
        let mmap =
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap();
        let mem = GuestMemory::new(mmap).unwrap();
        let features = RingFeatures {
            event_idx: true,
            indirect: true,
            packed,
            ..Default::default()
        };
        let drivers = (0..2u64)
            .map(|i| {
                let base = i * (MEM_SIZE / 2);
                let layout = MockLayout::new(base, QSIZE, base + MEM_SIZE / 2);
                MockDriver::new(mem.clone(), QSIZE, features, layout)
            })
            .collect();
        Self { file, drivers }
    }
}

struct Vrings {
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

/// What QEMU does at DRIVER_OK, trimmed to the essentials.
fn set_up(frontend: &mut Frontend, guest: &Guest, bases: [u16; 2]) -> Vrings {
    set_up_with(frontend, guest, bases, false)
}

/// Guest RAM as two regions (one per half), as `VhostUserMemoryRegionInfo`s.
fn halves(guest: &Guest) -> [VhostUserMemoryRegionInfo; 2] {
    [0, 1].map(|i| VhostUserMemoryRegionInfo {
        guest_phys_addr: i * MEM_SIZE / 2,
        memory_size: MEM_SIZE / 2,
        userspace_addr: USER_BASE + i * MEM_SIZE / 2,
        mmap_offset: i * MEM_SIZE / 2,
        mmap_handle: guest.file.as_raw_fd(),
    })
}

/// `set_up`, with the memory sent region by region (ADD_MEM_REG) if `slots`.
fn set_up_with(frontend: &mut Frontend, guest: &Guest, bases: [u16; 2], slots: bool) -> Vrings {
    set_up_full(frontend, guest, bases, slots, None)
}

/// The inflight region a frontend keeps across backend restarts (QEMU asks for it once).
type Inflight = Option<(VhostUserInflight, File)>;

/// `set_up_with`, and with `inflight`, QEMU's order for INFLIGHT_SHMFD: GET_INFLIGHT_FD the
/// first time (after the features), SET_INFLIGHT_FD every time, before any vring is set up.
fn set_up_full(
    frontend: &mut Frontend,
    guest: &Guest,
    bases: [u16; 2],
    slots: bool,
    inflight: Option<&mut Inflight>,
) -> Vrings {
    frontend.set_owner().unwrap();
    let offered = frontend.get_features().unwrap();
    assert_ne!(offered & (1 << 30), 0, "PROTOCOL_FEATURES offered");
    let packed = if guest.drivers[0].features().packed {
        features::RING_PACKED
    } else {
        0
    };
    let wanted =
        features::VERSION_1 | features::EVENT_IDX | features::INDIRECT_DESC | packed | (1 << 30);
    frontend.set_features(wanted).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(proto.contains(
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    ));
    frontend.set_protocol_features(proto).unwrap();
    if let Some(region) = inflight {
        assert!(proto.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
        if region.is_none() {
            let ask = VhostUserInflight::new(0, 0, 2, QSIZE);
            *region = Some(frontend.get_inflight_fd(&ask).unwrap());
        }
        let (info, file) = region.as_ref().unwrap();
        frontend.set_inflight_fd(info, file.as_raw_fd()).unwrap();
    }
    assert_eq!(frontend.get_queue_num().unwrap(), 2);
    let (_, config) = frontend
        .get_config(4, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
        .unwrap();
    assert_eq!(config, vec![4, 5, 6, 7, 8, 9, 10, 11]);
    if slots {
        assert_eq!(frontend.get_max_mem_slots().unwrap(), 64);
        for region in halves(guest) {
            frontend.add_mem_region(&region).unwrap();
        }
    } else {
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE,
                userspace_addr: USER_BASE,
                mmap_offset: 0,
                mmap_handle: guest.file.as_raw_fd(),
            }])
            .unwrap();
    }
    let mut vrings = Vrings {
        kicks: vec![],
        calls: vec![],
    };
    for (i, d) in guest.drivers.iter().enumerate() {
        let a = d.addresses();
        frontend.set_vring_num(i, QSIZE).unwrap();
        frontend.set_vring_base(i, bases[i]).unwrap();
        let config = VringConfigData {
            queue_max_size: 256,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: USER_BASE + a.desc,
            used_ring_addr: USER_BASE + a.device,
            avail_ring_addr: USER_BASE + a.driver,
            log_addr: None,
        };
        frontend.set_vring_addr(i, &config).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        frontend.set_vring_kick(i, &kick).unwrap();
        frontend.set_vring_call(i, &call).unwrap();
        vrings.kicks.push(kick);
        vrings.calls.push(call);
    }
    for i in 0..2 {
        frontend.set_vring_enable(i, true).unwrap();
    }
    vrings
}

/// Sends one request on queue `q` and waits for its completion through the call fd.
fn echo_once(guest: &mut Guest, vrings: &Vrings, q: usize, msg: &[u8]) {
    let d = &mut guest.drivers[q];
    let len = u32::try_from(msg.len()).unwrap();
    let out = d.alloc(len).unwrap();
    let inp = d.alloc(len).unwrap();
    d.write(out, msg);
    let id = d
        .add_chain(&[Buf::r(out, len), Buf::w(inp, len)], Placement::Indirect)
        .unwrap();
    // EVENT_IDX: like Linux, ask for an interrupt when the next completion arrives.
    d.set_interrupts(true);
    d.publish();
    vrings.kicks[q].write(1).unwrap();
    // Spurious interrupts are allowed (a restarted queue always signals once): wait for
    // an interrupt that comes with our completion.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if vrings.calls[q].read().is_ok() {
            let used = d.used();
            if !used.is_empty() {
                assert_eq!(used, vec![(id, len)]);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion on queue {q}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut back = vec![0u8; msg.len()];
    d.read(inp, &mut back);
    assert_eq!(back, msg);
}

fn connect(path: &std::path::Path) -> Frontend {
    Frontend::connect(path, 2).unwrap()
}

/// A daemon serving an [`Echo`] device on a fresh socket, on its own thread.
struct Served {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    daemon: Arc<Daemon<Echo>>,
    shutdown: Shutdown,
    server: JoinHandle<Result<(), oxio_vhost_user::DaemonError>>,
}

impl Served {
    fn start() -> Served {
        Served::start_with(|d| d)
    }

    /// `configure` adjusts the daemon before it starts serving.
    fn start_with(configure: impl FnOnce(Daemon<Echo>) -> Daemon<Echo>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vu.sock");
        let daemon = Arc::new(configure(Daemon::bind(&sock, Echo::default()).unwrap()));
        let shutdown = Shutdown::new().unwrap();
        let server = {
            let (d, s) = (daemon.clone(), shutdown.clone());
            std::thread::spawn(move || d.serve(&s))
        };
        Served {
            _dir: dir,
            sock,
            daemon,
            shutdown,
            server,
        }
    }

    /// Shuts the daemon down and checks that it returned cleanly.
    fn stop(self) -> Arc<Daemon<Echo>> {
        self.shutdown.trigger();
        self.server.join().unwrap().unwrap();
        self.daemon
    }
}

#[test]
fn serves_two_queues_and_resumes_after_reconnection() {
    let served = Served::start();
    let (sock, daemon) = (served.sock.clone(), served.daemon.clone());
    let mut guest = Guest::new(false);

    let mut frontend = connect(&sock);
    let vrings = set_up(&mut frontend, &guest, [0, 0]);
    echo_once(&mut guest, &vrings, 0, b"hello queue 0");
    echo_once(&mut guest, &vrings, 1, b"hello queue 1");
    echo_once(&mut guest, &vrings, 0, b"again on queue 0");
    assert_eq!(daemon.backend().lock().unwrap().running_queues(), &[0, 1]);
    // GET_VRING_BASE stops the ring and reports the next avail index.
    assert_eq!(frontend.get_vring_base(0).unwrap(), 2);
    assert_eq!(frontend.get_vring_base(1).unwrap(), 1);
    assert!(daemon.backend().lock().unwrap().running_queues().is_empty());
    drop(frontend);

    // A new frontend (a restarted VMM, or QEMU reconnecting) resumes from those bases.
    let mut frontend = connect(&sock);
    let vrings = set_up(&mut frontend, &guest, [2, 1]);
    echo_once(&mut guest, &vrings, 1, b"after reconnection");
    echo_once(&mut guest, &vrings, 0, b"queue 0 too");
    assert_eq!(
        daemon
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    served.stop();
    assert!(daemon.backend().lock().unwrap().running_queues().is_empty());
    drop(frontend);
}

#[test]
fn refuses_unoffered_features_and_bad_vrings_without_dying() {
    let served = Served::start();
    let sock = served.sock.clone();
    let mut frontend = connect(&sock);
    frontend.set_owner().unwrap();
    frontend.get_features().unwrap();
    frontend
        .set_features(features::VERSION_1 | (1 << 30))
        .unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    frontend.set_protocol_features(proto).unwrap();
    // The vhost crate's frontend never asks for acks, so refusals are silent here; what
    // matters is that they neither kill the session nor poison the set-up.
    frontend.set_vring_num(0, 512).unwrap(); // larger than the device's maximum
    frontend.set_vring_num(1, 0).unwrap();
    frontend.set_features(1 << 60).unwrap(); // never offered
    let mut guest = Guest::new(false);
    let vrings = set_up(&mut frontend, &guest, [0, 0]);
    echo_once(&mut guest, &vrings, 0, b"still serving");
    echo_once(&mut guest, &vrings, 1, b"both queues");
    drop(frontend);
    // The daemon survived and takes the next frontend.
    let frontend = connect(&sock);
    frontend.set_owner().unwrap();
    assert_eq!(
        frontend.get_features().unwrap() & features::VERSION_1,
        features::VERSION_1
    );
    drop(frontend);
    served.stop();
}

#[test]
fn packed_rings_report_wrap_counters_and_resume() {
    let served = Served::start();
    let sock = served.sock.clone();
    let mut guest = Guest::new(true);
    let mut frontend = connect(&sock);
    let vrings = set_up(&mut frontend, &guest, [0x8000, 0x8000]); // slot 0, wrap counter 1
    for msg in [&b"one"[..], b"two", b"three"] {
        echo_once(&mut guest, &vrings, 0, msg);
    }
    // Three one-descriptor (indirect) chains: next slot 3, wrap counter still 1, for the
    // driver (low half) and the device (high half).
    assert_eq!(frontend.get_vring_base(0).unwrap(), 0x8003_8003);
    assert_eq!(frontend.get_vring_base(1).unwrap(), 0x8000_8000);
    drop(frontend);
    let mut frontend = connect(&sock);
    let vrings = set_up(&mut frontend, &guest, [0x8003, 0x8000]);
    echo_once(&mut guest, &vrings, 0, b"four, after reconnecting");
    echo_once(&mut guest, &vrings, 1, b"and queue 1");
    assert_eq!(frontend.get_vring_base(0).unwrap(), 0x8004_8004);
    served.stop();
    drop(frontend);
}

#[test]
fn garbage_from_a_frontend_ends_only_that_session() {
    use std::io::Write;
    let served = Served::start();
    let (sock, daemon) = (served.sock.clone(), served.daemon.clone());
    let junk: [&[u8]; 4] = [
        // An unknown request code with version 1 and no payload.
        &[0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        // SET_MEM_TABLE (5) claiming a payload that never comes, then EOF.
        &[5, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0, 0],
        // A short header, then EOF.
        &[1, 0, 0],
        // Random bytes.
        b"GET / HTTP/1.1\r\nHost: vhost\r\n\r\n",
    ];
    for bytes in junk {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(bytes);
        drop(s);
    }
    // A frontend that negotiates and leaves without setting anything up.
    let frontend = connect(&sock);
    frontend.set_owner().unwrap();
    frontend.get_features().unwrap();
    drop(frontend);

    let mut guest = Guest::new(false);
    let mut frontend = connect(&sock);
    let vrings = set_up(&mut frontend, &guest, [0, 0]);
    echo_once(&mut guest, &vrings, 0, b"still here");
    assert_eq!(
        daemon
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    served.stop();
    drop(frontend);
}

#[test]
fn an_enabled_vring_the_driver_never_set_up_is_left_out() {
    // QEMU with num-queues=2 and a guest that uses one queue: vring 1 gets SET_VRING_ENABLE
    // but never addresses or a kick fd. The device must run vring 0 alone.
    let served = Served::start();
    let (sock, daemon) = (served.sock.clone(), served.daemon.clone());
    let mut guest = Guest::new(false);
    let mut frontend = connect(&sock);
    frontend.set_owner().unwrap();
    frontend.get_features().unwrap();
    frontend
        .set_features(
            features::VERSION_1 | features::EVENT_IDX | features::INDIRECT_DESC | (1 << 30),
        )
        .unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    frontend.set_protocol_features(proto).unwrap();
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: USER_BASE,
            mmap_offset: 0,
            mmap_handle: guest.file.as_raw_fd(),
        }])
        .unwrap();
    let a = guest.drivers[0].addresses();
    frontend.set_vring_num(0, QSIZE).unwrap();
    frontend.set_vring_base(0, 0).unwrap();
    frontend
        .set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: 256,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: USER_BASE + a.desc,
                used_ring_addr: USER_BASE + a.device,
                avail_ring_addr: USER_BASE + a.driver,
                log_addr: None,
            },
        )
        .unwrap();
    let vrings = Vrings {
        kicks: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        calls: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
    };
    frontend.set_vring_kick(0, &vrings.kicks[0]).unwrap();
    frontend.set_vring_call(0, &vrings.calls[0]).unwrap();
    frontend.set_vring_enable(0, true).unwrap();
    frontend.set_vring_enable(1, true).unwrap();
    echo_once(&mut guest, &vrings, 0, b"only queue 0");
    assert_eq!(daemon.backend().lock().unwrap().running_queues(), &[0]);
    served.stop();
    drop(frontend);
}

#[test]
fn a_frontend_that_stalls_mid_message_loses_its_session() {
    use std::io::Write;
    let served = Served::start_with(|d| d.with_message_timeout(Duration::from_millis(200)));
    let sock = served.sock.clone();
    // GET_FEATURES header claiming an 8-byte body that never comes; the socket stays open.
    let mut stalled = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stalled
        .write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0])
        .unwrap();
    let frontend = connect(&sock);
    frontend.set_owner().unwrap();
    assert_ne!(frontend.get_features().unwrap() & features::VERSION_1, 0);
    drop(frontend);
    served.stop();
    drop(stalled);
}

#[test]
fn memory_regions_added_and_removed_one_by_one() {
    let served = Served::start();
    let (sock, daemon) = (served.sock.clone(), served.daemon.clone());
    let mut guest = Guest::new(false);
    let mut frontend = connect(&sock);
    // Each queue's rings and buffers live in its own half, i.e. its own region.
    let vrings = set_up_with(&mut frontend, &guest, [0, 0], true);
    echo_once(&mut guest, &vrings, 0, b"region one");
    echo_once(&mut guest, &vrings, 1, b"region two");
    let [first, second] = halves(&guest);
    frontend.remove_mem_region(&second).unwrap();
    frontend.remove_mem_region(&first).unwrap();
    // No memory left: the device is stopped. (The frontend sends no acks, so poll.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.backend().lock().unwrap().running_queues().is_empty() {
        assert!(std::time::Instant::now() < deadline, "device still running");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Adding the memory back resumes both queues where they were.
    for region in halves(&guest) {
        frontend.add_mem_region(&region).unwrap();
    }
    echo_once(&mut guest, &vrings, 1, b"back again");
    echo_once(&mut guest, &vrings, 0, b"both");
    served.stop();
    drop(frontend);
}

#[test]
fn inflight_region_is_created_zeroed_logged_into_and_handed_back() {
    use std::os::unix::fs::FileExt;
    let served = Served::start();
    let (sock, daemon) = (served.sock.clone(), served.daemon.clone());
    let mut guest = Guest::new(false);
    let mut region: Inflight = None;

    let mut frontend = connect(&sock);
    let vrings = set_up_full(&mut frontend, &guest, [0, 0], false, Some(&mut region));
    let (info, file) = region.as_ref().unwrap();
    let stride = oxio_vhost_user::inflight::stride(QSIZE);
    assert_eq!((info.num_queues, info.queue_size), (2, QSIZE));
    assert_eq!(info.mmap_size, 2 * stride);
    assert_eq!(file.metadata().unwrap().len(), info.mmap_size);
    echo_once(&mut guest, &vrings, 0, b"logged on queue 0");
    echo_once(&mut guest, &vrings, 1, b"logged on queue 1");
    echo_once(&mut guest, &vrings, 0, b"and again");
    // Each queue's slice was initialised: version 1, one entry per descriptor.
    for q in 0..2 {
        let mut head = [0u8; 4];
        file.read_exact_at(&mut head, q * stride + 8).unwrap();
        assert_eq!(head, [1, 0, u8::try_from(QSIZE).unwrap(), 0], "queue {q}");
    }
    drop(frontend); // gone without GET_VRING_BASE, like a backend crash seen from QEMU

    // The next frontend hands the same region back with stale bases (QEMU sends the used
    // index after a crash, or anything): the region and the used ring say where to resume.
    let mut frontend = connect(&sock);
    let vrings = set_up_full(&mut frontend, &guest, [0, 0], false, Some(&mut region));
    echo_once(&mut guest, &vrings, 1, b"resumed on queue 1");
    echo_once(&mut guest, &vrings, 0, b"resumed on queue 0");
    assert_eq!(daemon.backend().lock().unwrap().resubmitted(), 0);
    served.stop();
    drop(frontend);
}
