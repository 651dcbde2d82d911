//! Arbitrary request sequences, as a buggy or hostile frontend might send them, straight into
//! the backend's request handler: whatever the order and the values, nothing panics, the
//! running set only ever holds vrings that exist, and a disconnect always stops the device.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::sync::Arc;

use oxio_vhost_user::Backend;
use oxio_virtio::device::{features, ActiveQueue, DeviceError};
use oxio_virtio::{GuestMemory, Interrupt, QueueState, VirtioDevice};
use proptest::prelude::*;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserMemoryRegion, VhostUserSingleMemoryRegion,
    VhostUserVringAddrFlags,
};
use vhost::vhost_user::VhostUserBackendReqHandlerMut as H;
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 0x10000;
const USER: u64 = 0x7000_0000;

/// Holds its queues and pops once at activation (guest memory is zeroes or garbage).
#[derive(Debug, Default)]
struct Passive {
    queues: Vec<ActiveQueue>,
}

impl VirtioDevice for Passive {
    fn device_type(&self) -> u32 {
        0x7e
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 64]
    }
    fn device_features(&self) -> u64 {
        features::RING_ALL
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xa5);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        _interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        for q in &mut queues {
            let _ = q.queue.pop(&mem);
        }
        self.queues = queues;
        Ok(())
    }
    fn reset(&mut self) -> Vec<(u16, QueueState)> {
        self.queues
            .drain(..)
            .map(|q| (q.index, q.queue.state()))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Features(u64),
    Protocol(u64),
    MemTable(u8),
    Num(u32, u32),
    Addr(u32, u64, u64, u64),
    Base(u32, u32),
    Kick(u8, bool),
    Call(u8, bool),
    Enable(u32, bool),
    GetBase(u32),
    GetConfig(u32, u32),
    SetConfig(u32, u8),
    AddRegion(u8),
    RemRegion(u8),
    Reset,
    Disconnect,
    /// What a well-behaved frontend does for one vring, so activation is common.
    SetUp(u8),
}

fn ring_features() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(features::VERSION_1 | 1 << 30),
        Just(features::VERSION_1 | features::EVENT_IDX | features::INDIRECT_DESC | 1 << 30),
        Just(features::VERSION_1 | features::RING_PACKED | 1 << 30),
        Just(features::VERSION_1),
        any::<u64>(),
    ]
}

/// Guest addresses inside memory most of the time, anything sometimes.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..MEM / 0x100).prop_map(|page| USER + page * 0x100),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0u32..3;
    prop_oneof![
        ring_features().prop_map(Op::Features),
        prop_oneof![Just(0x2209u64), any::<u64>()].prop_map(Op::Protocol),
        (0u8..3).prop_map(Op::MemTable),
        (
            idx.clone(),
            prop_oneof![Just(64u32), Just(16), Just(0), Just(3), any::<u32>()]
        )
            .prop_map(|(i, n)| Op::Num(i, n)),
        (idx.clone(), addr(), addr(), addr()).prop_map(|(i, d, a, u)| Op::Addr(i, d, a, u)),
        (idx.clone(), any::<u32>()).prop_map(|(i, b)| Op::Base(i, b)),
        (0u8..3, any::<bool>()).prop_map(|(i, b)| Op::Kick(i, b)),
        (0u8..3, any::<bool>()).prop_map(|(i, b)| Op::Call(i, b)),
        (idx.clone(), any::<bool>()).prop_map(|(i, b)| Op::Enable(i, b)),
        idx.prop_map(Op::GetBase),
        (any::<u32>(), 0u32..300).prop_map(|(o, s)| Op::GetConfig(o, s)),
        (any::<u32>(), any::<u8>()).prop_map(|(o, l)| Op::SetConfig(o, l)),
        (0u8..3).prop_map(Op::AddRegion),
        (0u8..3).prop_map(Op::RemRegion),
        Just(Op::Reset),
        Just(Op::Disconnect),
        (0u8..2).prop_map(Op::SetUp),
    ]
}

fn memfd() -> File {
    let f = tempfile::tempfile().unwrap();
    f.set_len(2 * MEM).unwrap();
    f
}

fn region(gpa: u64, user: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion {
        guest_phys_addr: gpa,
        memory_size: MEM,
        user_addr: user,
        mmap_offset: 0,
    }
}

fn apply(b: &mut Backend<Passive>, op: &Op) {
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let file = |fd: EventFd| {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the fd is a fresh eventfd we own; ownership moves into the File.
        unsafe { File::from_raw_fd(fd.into_raw_fd()) }
    };
    // Refusals are fine; panics are not.
    let _ = match *op {
        Op::Features(f) => H::set_features(b, f).map(drop),
        Op::Protocol(f) => H::set_protocol_features(b, f),
        Op::MemTable(kind) => {
            let (regions, files) = match kind {
                0 => (vec![region(0, USER)], vec![memfd()]),
                1 => (
                    vec![region(0, USER), region(MEM, USER + MEM)],
                    vec![memfd(), memfd()],
                ),
                _ => (
                    vec![region(0, USER), region(0, USER)],
                    vec![memfd(), memfd()],
                ),
            };
            H::set_mem_table(b, &regions, files, None).map(drop)
        }
        Op::Num(i, n) => H::set_vring_num(b, i, n),
        Op::Addr(i, d, a, u) => {
            H::set_vring_addr(b, i, VhostUserVringAddrFlags::empty(), d, u, a, 0)
        }
        Op::Base(i, base) => H::set_vring_base(b, i, base),
        Op::Kick(i, some) => H::set_vring_kick(b, i, some.then(|| file(eventfd()))),
        Op::Call(i, some) => H::set_vring_call(b, i, some.then(|| file(eventfd()))),
        Op::Enable(i, on) => H::set_vring_enable(b, i, on),
        Op::GetBase(i) => H::get_vring_base(b, i).map(drop),
        Op::GetConfig(o, s) => H::get_config(b, o, s, VhostUserConfigFlags::empty())
            .map(|data| assert_eq!(data.len(), usize::try_from(s).unwrap())),
        Op::SetConfig(o, l) => H::set_config(
            b,
            o,
            &vec![0; usize::from(l)],
            VhostUserConfigFlags::WRITABLE,
        ),
        Op::AddRegion(k) => {
            let r = VhostUserSingleMemoryRegion::new(
                u64::from(k) * MEM,
                MEM,
                USER + u64::from(k) * MEM,
                0,
            );
            H::add_mem_region(b, &r, memfd(), None).map(drop)
        }
        Op::RemRegion(k) => {
            let r = VhostUserSingleMemoryRegion::new(
                u64::from(k) * MEM,
                MEM,
                USER + u64::from(k) * MEM,
                0,
            );
            H::remove_mem_region(b, &r)
        }
        Op::Reset => H::reset_device(b),
        Op::SetUp(i) => {
            let base = USER + u64::from(i) * 0x4000;
            let _ = H::set_features(b, features::VERSION_1 | features::EVENT_IDX | 1 << 30);
            if b.running_queues().is_empty() {
                let _ = H::set_mem_table(b, &[region(0, USER)], vec![memfd()], None);
            }
            let idx = u32::from(i);
            let _ = H::set_vring_num(b, idx, 64);
            let _ = H::set_vring_addr(
                b,
                idx,
                VhostUserVringAddrFlags::empty(),
                base,
                base + 0x1000,
                base + 0x400,
                0,
            );
            let _ = H::set_vring_kick(b, i, Some(file(eventfd())));
            H::set_vring_enable(b, idx, true)
        }
        Op::Disconnect => {
            b.disconnect();
            assert!(b.running_queues().is_empty());
            Ok(())
        }
    };
}

#[test]
fn a_well_behaved_set_up_runs_the_vring() {
    let mut b = Backend::new(Passive::default()).unwrap();
    apply(&mut b, &Op::SetUp(1));
    assert_eq!(b.running_queues(), &[1]);
    apply(&mut b, &Op::SetUp(0));
    assert_eq!(b.running_queues(), &[0, 1]);
    apply(&mut b, &Op::GetBase(0));
    assert_eq!(b.running_queues(), &[1]);
    assert_eq!(b.device_starts(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_request_sequence_is_survived(ops in proptest::collection::vec(op(), 1..40)) {
        let mut b = Backend::new(Passive::default()).unwrap();
        for op in &ops {
            apply(&mut b, op);
            let running = b.running_queues();
            prop_assert!(running.iter().all(|&q| q < 2), "{running:?}");
            prop_assert!(running.windows(2).all(|w| w[0] < w[1]), "{running:?}");
            prop_assert_eq!(running.len(), b.device().queues.len());
        }
        b.disconnect();
        prop_assert!(b.running_queues().is_empty());
        prop_assert!(b.device().queues.is_empty());
    }
}
