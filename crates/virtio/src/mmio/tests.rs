//! Drives the transport register by register, as the Linux virtio-mmio driver does, with a
//! loopback device that serves its queue on its own thread.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use crate::device::{features, status, ActiveQueue, DeviceError, VirtioDevice};
use crate::mock::{Buf, MockDriver, MockLayout, Placement};
use crate::queue::RingFeatures;

/// Echoes each chain's readable bytes into its writable part.
#[derive(Debug, Default)]
struct Loopback {
    worker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    config: [u8; 8],
}

impl VirtioDevice for Loopback {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn device_features(&self) -> u64 {
        features::VERSION_1
            | features::EVENT_IDX
            | features::INDIRECT_DESC
            | features::RING_PACKED
            | features::NOTIFICATION_DATA
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn config_generation(&self) -> u32 {
        7
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        irq: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        let mut aq = queues.pop().ok_or(DeviceError::QueueNotReady(0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                if aq.kick.read().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                loop {
                    aq.queue.disable_notification();
                    while let Some(c) = aq.queue.pop(&mem).unwrap() {
                        let mut data = Vec::new();
                        c.reader().read_to_end(&mut data).unwrap();
                        let mut w = c.writer();
                        let _ = w.write(&data).unwrap();
                        aq.queue.add_used(c.id(), w.bytes_written());
                    }
                    if aq.queue.publish_used() {
                        irq.signal_used(aq.index).unwrap();
                    }
                    if !aq.queue.enable_notification(&mem).unwrap() {
                        break;
                    }
                }
            }
        });
        self.worker = Some((stop, handle));
        Ok(())
    }
    fn reset(&mut self) -> Vec<(u16, crate::queue::QueueState)> {
        if let Some((stop, h)) = self.worker.take() {
            stop.store(true, Ordering::SeqCst);
            h.join().unwrap();
        }
        Vec::new()
    }
}

fn rd(t: &mut MmioTransport<Loopback>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<Loopback>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport<Loopback>, driver_features: u64) -> bool {
    wr(t, STATUS, 0);
    wr(t, STATUS, status::ACKNOWLEDGE);
    wr(t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, DRIVER_FEATURES_SEL, 0);
    wr(t, DRIVER_FEATURES, (driver_features & 0xffff_ffff) as u32);
    wr(t, DRIVER_FEATURES_SEL, 1);
    wr(t, DRIVER_FEATURES, (driver_features >> 32) as u32);
    wr(
        t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    rd(t, STATUS) & status::FEATURES_OK != 0
}

fn run_device(packed: bool) {
    run_device_with(packed, false);
}

fn run_device_with(packed: bool, notification_data: bool) {
    let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
    let mut t = MmioTransport::new(Loopback::default(), mem.clone()).unwrap();
    assert_eq!(rd(&mut t, MAGIC_VALUE), MAGIC);
    assert_eq!(rd(&mut t, VERSION), 2);
    assert_eq!(rd(&mut t, DEVICE_ID), 42);
    wr(&mut t, DEVICE_FEATURES_SEL, 1);
    let high = rd(&mut t, DEVICE_FEATURES);
    assert_eq!(
        u64::from(high) << 32 & features::VERSION_1,
        features::VERSION_1
    );
    let mut f = features::VERSION_1 | features::EVENT_IDX | features::INDIRECT_DESC;
    if packed {
        f |= features::RING_PACKED;
    }
    if notification_data {
        f |= features::NOTIFICATION_DATA;
    }
    assert!(negotiate(&mut t, f));
    let rf = RingFeatures::from_bits(f);
    let mut d = MockDriver::new(mem.clone(), 16, rf, MockLayout::new(0x1000, 16, 1 << 20));
    wr(&mut t, QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 16);
    wr(&mut t, QUEUE_NUM, 16);
    let a = d.addresses();
    for (lo, v) in [
        (QUEUE_DESC_LOW, a.desc),
        (QUEUE_DRIVER_LOW, a.driver),
        (QUEUE_DEVICE_LOW, a.device),
    ] {
        wr(&mut t, lo, (v & 0xffff_ffff) as u32);
        wr(&mut t, lo + 4, (v >> 32) as u32);
    }
    wr(&mut t, QUEUE_READY, 1);
    d.set_interrupts(true);
    wr(
        &mut t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_eq!(rd(&mut t, STATUS) & status::DEVICE_NEEDS_RESET, 0);

    for round in 0..20u8 {
        let src = d.alloc(4).unwrap();
        d.write(src, &[round; 4]);
        let dst = d.alloc(4).unwrap();
        let id = d
            .add_chain(&[Buf::r(src, 4), Buf::w(dst, 4)], Placement::Indirect)
            .unwrap();
        d.publish();
        if d.kick_needed() {
            // With NOTIFICATION_DATA the driver puts the ring position in the upper bits; the
            // transport must still route the kick to queue 0.
            let data = if notification_data {
                (u32::from(round) + 1) << 16 | 1 << 31
            } else {
                0
            };
            wr(&mut t, QUEUE_NOTIFY, data);
        }
        // Wait for the interrupt line.
        let mut used = Vec::new();
        for _ in 0..5000 {
            if t.irq_eventfd().read().is_ok() {
                assert_eq!(rd(&mut t, INTERRUPT_STATUS) & INT_VRING, INT_VRING);
                wr(&mut t, INTERRUPT_ACK, INT_VRING);
            }
            used.extend(d.used());
            if !used.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        d.set_interrupts(true);
        assert_eq!(used, vec![(id, 4)], "round {round}");
        let mut out = [0u8; 4];
        d.read(dst, &mut out);
        assert_eq!(out, [round; 4]);
    }
    assert_eq!(rd(&mut t, CONFIG_GENERATION), 7);
    wr(&mut t, STATUS, 0);
    assert_eq!(rd(&mut t, STATUS), 0);
    assert_eq!(rd(&mut t, QUEUE_READY), 0);
}

#[test]
fn serves_a_split_queue_end_to_end() {
    run_device(false);
}

#[test]
fn serves_a_packed_queue_end_to_end() {
    run_device(true);
}

#[test]
fn routes_kicks_that_carry_notification_data() {
    run_device_with(false, true);
    run_device_with(true, true);
}

#[test]
fn refuses_bad_feature_sets() {
    let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
    let mut t = MmioTransport::new(Loopback::default(), mem).unwrap();
    assert!(
        !negotiate(&mut t, features::EVENT_IDX),
        "VERSION_1 is required"
    );
    assert!(
        !negotiate(&mut t, features::VERSION_1 | features::IN_ORDER),
        "not offered"
    );
    assert!(negotiate(&mut t, features::VERSION_1));
}

#[test]
fn config_space_and_narrow_accesses() {
    let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
    let dev = Loopback {
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        ..Default::default()
    };
    let mut t = MmioTransport::new(dev, mem).unwrap();
    let mut b = [0u8; 2];
    t.read(CONFIG + 6, &mut b);
    assert_eq!(b, [7, 8]);
    t.read(MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0], "registers are 32-bit only");
    t.write(STATUS, &[1]);
    assert_eq!(rd(&mut t, STATUS), 0, "narrow register writes are ignored");
}

#[test]
fn bad_queue_layout_sets_needs_reset() {
    let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
    let mut t = MmioTransport::new(Loopback::default(), mem).unwrap();
    assert!(negotiate(&mut t, features::VERSION_1));
    wr(&mut t, QUEUE_NUM, 16);
    wr(&mut t, QUEUE_DESC_LOW, 0x1000);
    wr(&mut t, QUEUE_DRIVER_LOW, 0x2000);
    wr(&mut t, QUEUE_DEVICE_LOW, 0x20_0000); // outside memory
    wr(&mut t, QUEUE_READY, 1);
    wr(
        &mut t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_ne!(rd(&mut t, STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(rd(&mut t, INTERRUPT_STATUS) & INT_CONFIG, 0);
}
