//! Device-side MUSTs of VIRTIO 1.2 §2.7 (split) and §2.8 (packed), driven by the mock driver.

use std::io::{Read, Write};

use super::*;
use crate::mock::{Buf, MockDriver, MockLayout, Placement};

const MEM: usize = 4 << 20;

fn feats(packed: bool) -> RingFeatures {
    RingFeatures {
        packed,
        indirect: true,
        event_idx: false,
        in_order: false,
    }
}

fn driver(size: u16, f: RingFeatures) -> (MockDriver, Queue) {
    let d = MockDriver::with_memory(size, f, MEM);
    let q = d.device_queue();
    (d, q)
}

/// Pops everything, echoing readable bytes into the writable part; completes each chain.
fn serve(q: &mut Queue, mem: &GuestMemory) -> Vec<(u16, Vec<u8>)> {
    let mut seen = Vec::new();
    while let Some(chain) = q.pop(mem).unwrap() {
        let mut data = vec![0; chain.readable_len() as usize];
        chain.reader().read_exact(&mut data).unwrap();
        let mut w = chain.writer();
        let n = w.write(&data).unwrap();
        assert_eq!(n, data.len().min(chain.writable_len() as usize));
        q.add_used(chain.id(), w.bytes_written());
        seen.push((chain.id(), data));
    }
    q.publish_used();
    seen
}

fn both(test: impl Fn(bool)) {
    test(false);
    test(true);
}

#[test]
fn direct_chain_round_trip() {
    both(|packed| {
        let (mut d, mut q) = driver(16, feats(packed));
        let src = d.alloc(5).unwrap();
        d.write(src, b"hello");
        let dst = d.alloc(8).unwrap();
        let id = d
            .add_chain(&[Buf::r(src, 5), Buf::w(dst, 8)], Placement::Direct)
            .unwrap();
        d.publish();
        let mem = d.mem().clone();
        assert_eq!(serve(&mut q, &mem), vec![(id, b"hello".to_vec())]);
        assert_eq!(d.used(), vec![(id, 5)]);
        let mut out = [0u8; 5];
        d.read(dst, &mut out);
        assert_eq!(&out, b"hello");
    });
}

#[test]
fn indirect_and_mixed_chains() {
    both(|packed| {
        let (mut d, mut q) = driver(16, feats(packed));
        let bufs: Vec<Buf> = (0..4).map(|i| Buf::r(d.alloc(4).unwrap(), 3 + i)).collect();
        let w = Buf::w(d.alloc(64).unwrap(), 64);
        let chain = [bufs.clone(), vec![w]].concat();
        let id1 = d.add_chain(&chain, Placement::Indirect).unwrap();
        let id2 = if packed {
            None
        } else {
            Some(d.add_chain(&chain, Placement::Mixed(2)).unwrap())
        };
        d.publish();
        let mem = d.mem().clone();
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.id(), id1);
        assert_eq!(c.readable().len(), 4);
        assert_eq!(c.readable_len(), 3 + 4 + 5 + 6);
        assert_eq!(c.writable_len(), 64);
        q.add_used(c.id(), 0);
        if let Some(id2) = id2 {
            let c = q.pop(&mem).unwrap().unwrap();
            assert_eq!((c.id(), c.readable().len(), c.writable_len()), (id2, 4, 64));
            q.add_used(c.id(), 0);
        }
        assert!(q.pop(&mem).unwrap().is_none());
        q.publish_used();
        assert_eq!(d.used().len(), if packed { 1 } else { 2 });
    });
}

#[test]
fn split_index_wraps_at_65536() {
    let (mut d, mut q) = driver(8, feats(false));
    d.start_split_at(65530);
    q.set_next_avail(65530, 65530);
    let mem = d.mem().clone();
    let buf = d.alloc(16).unwrap();
    let mut done = 0;
    for _ in 0..5 {
        for _ in 0..4 {
            d.add_chain(&[Buf::w(buf, 16)], Placement::Direct).unwrap();
        }
        d.publish();
        done += serve(&mut q, &mem).len();
        assert_eq!(d.used().len(), 4);
    }
    assert_eq!(done, 20);
    assert_eq!(q.state().next_avail, 65530u16.wrapping_add(20));
}

#[test]
fn packed_wrap_counters_over_many_laps() {
    let (mut d, mut q) = driver(7, feats(true));
    let mem = d.mem().clone();
    let buf = d.alloc(64).unwrap();
    let mut total = 0;
    for round in 0..50usize {
        let n = 1 + round % 3;
        let bufs: Vec<Buf> = (0..n).map(|i| Buf::r(buf + i as u64, 1)).collect();
        let mut ids = Vec::new();
        while let Ok(id) = d.add_chain(&bufs, Placement::Direct) {
            ids.push(id);
        }
        d.publish();
        let seen = serve(&mut q, &mem);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), ids);
        let used = d.used();
        assert_eq!(used.len(), ids.len(), "round {round}");
        total += used.len();
    }
    assert!(total > 100);
}

#[test]
fn descriptor_cycle_completes_as_error_and_queue_keeps_working() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    let buf = d.alloc(8).unwrap();
    d.write_desc(
        0,
        RawDescriptor {
            addr: buf,
            len: 8,
            next_or_id: 1,
            flags: DESC_F_NEXT,
        },
    );
    d.write_desc(
        1,
        RawDescriptor {
            addr: buf,
            len: 8,
            next_or_id: 0,
            flags: DESC_F_NEXT,
        },
    );
    d.push_raw_head(0);
    match q.pop_raw(&mem).unwrap().unwrap() {
        Popped::Invalid {
            id: 0,
            error: ChainError::TooLong,
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    // Through `pop`, the bad chain is completed and the next good one served.
    d.push_raw_head(0);
    d.write_desc(
        5,
        RawDescriptor {
            addr: buf,
            len: 8,
            next_or_id: 0,
            flags: DESC_F_WRITE,
        },
    );
    d.push_raw_head(5);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.id(), 5);
    assert_eq!(q.stats().invalid_chains, 1);
}

#[test]
fn malformed_chains_are_completed_with_zero_length() {
    let cases: Vec<(Vec<RawDescriptor>, ChainError)> = vec![
        (
            vec![RawDescriptor {
                addr: 1 << 40,
                len: 8,
                next_or_id: 0,
                flags: 0,
            }],
            ChainError::OutOfMemory {
                addr: 1 << 40,
                len: 8,
            },
        ),
        (
            vec![RawDescriptor {
                addr: MEM as u64 - 4,
                len: 8,
                next_or_id: 0,
                flags: 0,
            }],
            ChainError::OutOfMemory {
                addr: MEM as u64 - 4,
                len: 8,
            },
        ),
        (
            vec![RawDescriptor {
                addr: u64::MAX - 2,
                len: 8,
                next_or_id: 0,
                flags: 0,
            }],
            ChainError::OutOfMemory {
                addr: u64::MAX - 2,
                len: 8,
            },
        ),
        (
            vec![RawDescriptor {
                addr: 0x10000,
                len: 8,
                next_or_id: 9,
                flags: DESC_F_NEXT,
            }],
            ChainError::NextOutOfRange(9),
        ),
        (
            vec![
                RawDescriptor {
                    addr: 0x10000,
                    len: 8,
                    next_or_id: 1,
                    flags: DESC_F_NEXT | DESC_F_WRITE,
                },
                RawDescriptor {
                    addr: 0x10000,
                    len: 8,
                    next_or_id: 0,
                    flags: 0,
                },
            ],
            ChainError::ReadableAfterWritable,
        ),
        (
            vec![RawDescriptor {
                addr: 0x10000,
                len: 0,
                next_or_id: 0,
                flags: DESC_F_INDIRECT,
            }],
            ChainError::IndirectTableLength(0),
        ),
        (
            vec![RawDescriptor {
                addr: 0x10000,
                len: 24,
                next_or_id: 0,
                flags: DESC_F_INDIRECT,
            }],
            ChainError::IndirectTableLength(24),
        ),
        (
            vec![RawDescriptor {
                addr: 0x10000,
                len: 16,
                next_or_id: 1,
                flags: DESC_F_INDIRECT | DESC_F_NEXT,
            }],
            ChainError::IndirectWithNext,
        ),
        (
            vec![RawDescriptor {
                addr: 1 << 40,
                len: 16,
                next_or_id: 0,
                flags: DESC_F_INDIRECT,
            }],
            ChainError::OutOfMemory {
                addr: 1 << 40,
                len: 16,
            },
        ),
    ];
    for (descs, want) in cases {
        let (mut d, mut q) = driver(8, feats(false));
        let mem = d.mem().clone();
        for (i, desc) in (0u16..).zip(&descs) {
            d.write_desc(i, *desc);
        }
        d.push_raw_head(0);
        match q.pop_raw(&mem).unwrap().unwrap() {
            Popped::Invalid { id: 0, error, .. } => assert_eq!(error, want),
            other => panic!("{descs:?}: unexpected {other:?}"),
        }
        q.add_used(0, 0);
        q.publish_used();
        assert_eq!(d.used(), vec![(0, 0)]);
    }
}

#[test]
fn head_out_of_range_and_indirect_rules() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    d.push_raw_head(8);
    assert!(matches!(
        q.pop_raw(&mem).unwrap(),
        Some(Popped::Invalid {
            error: ChainError::HeadOutOfRange(8),
            ..
        })
    ));

    // Nested indirect table.
    let table = d.alloc(32).unwrap();
    let inner = d.alloc(16).unwrap();
    d.write_desc_at(
        table,
        RawDescriptor {
            addr: inner,
            len: 16,
            next_or_id: 0,
            flags: DESC_F_INDIRECT,
        },
    );
    d.write_desc(
        1,
        RawDescriptor {
            addr: table,
            len: 16,
            next_or_id: 0,
            flags: DESC_F_INDIRECT,
        },
    );
    d.push_raw_head(1);
    assert!(matches!(
        q.pop_raw(&mem).unwrap(),
        Some(Popped::Invalid {
            error: ChainError::NestedIndirect,
            ..
        })
    ));

    // Indirect without the feature.
    let (mut d, mut q) = driver(8, RingFeatures::default());
    let mem = d.mem().clone();
    let b = d.alloc(8).unwrap();
    assert!(d.add_chain(&[Buf::r(b, 8)], Placement::Indirect).is_ok());
    d.publish();
    assert!(matches!(
        q.pop_raw(&mem).unwrap(),
        Some(Popped::Invalid {
            error: ChainError::IndirectNotNegotiated,
            ..
        })
    ));

    // A cycle inside an indirect table.
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    let table = d.alloc(32).unwrap();
    let b = d.alloc(8).unwrap();
    for i in 0..2u16 {
        let e = RawDescriptor {
            addr: b,
            len: 8,
            next_or_id: 1 - i,
            flags: DESC_F_NEXT,
        };
        d.write_desc_at(table + 16 * u64::from(i), e);
    }
    d.write_desc(
        0,
        RawDescriptor {
            addr: table,
            len: 32,
            next_or_id: 0,
            flags: DESC_F_INDIRECT,
        },
    );
    d.push_raw_head(0);
    assert!(matches!(
        q.pop_raw(&mem).unwrap(),
        Some(Popped::Invalid {
            error: ChainError::TooLong,
            ..
        })
    ));
}

#[test]
fn zero_length_descriptors_are_accepted() {
    both(|packed| {
        let (mut d, mut q) = driver(8, feats(packed));
        let mem = d.mem().clone();
        let b = d.alloc(4).unwrap();
        d.write(b, b"abcd");
        let id = d
            .add_chain(
                &[Buf::r(b, 0), Buf::r(b, 4), Buf::w(b, 0)],
                Placement::Direct,
            )
            .unwrap();
        d.publish();
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!((c.id(), c.readable_len(), c.writable_len()), (id, 4, 0));
        assert_eq!(c.readable().len(), 1);
        let mut s = String::new();
        c.reader().read_to_string(&mut s).unwrap();
        assert_eq!(s, "abcd");
    });
}

#[test]
fn buffer_spanning_two_regions() {
    both(|packed| {
        // Two regions back to back at 0 and 1 MiB, and a third after a hole.
        let mem = GuestMemory::anonymous(&[(0, 1 << 20), (1 << 20, 1 << 20), (4 << 20, 1 << 20)])
            .unwrap();
        let layout = MockLayout::new(0x1000, 8, 1 << 20);
        let mut d = MockDriver::new(mem.clone(), 8, feats(packed), layout);
        let mut q = d.device_queue();
        let across = (1 << 20) - 3;
        d.write(across, b"spanning");
        d.add_chain(&[Buf::r(across, 8), Buf::w(4 << 20, 8)], Placement::Direct)
            .unwrap();
        d.publish();
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.readable().len(), 2, "split at the region boundary");
        let mut s = String::new();
        c.reader().read_to_string(&mut s).unwrap();
        assert_eq!(s, "spanning");
        // A buffer running into the hole is refused.
        d.add_chain(&[Buf::r((2 << 20) - 4, 8)], Placement::Direct)
            .unwrap();
        d.publish();
        q.add_used(c.id(), 0);
        assert!(matches!(
            q.pop_raw(&mem).unwrap(),
            Some(Popped::Invalid {
                error: ChainError::OutOfMemory { .. },
                ..
            })
        ));
    });
}

#[test]
fn avail_index_running_ahead_is_a_queue_error() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    d.set_raw_avail_idx(9);
    assert_eq!(
        q.pop(&mem).unwrap_err(),
        QueueError::AvailIndexAhead { avail: 9, next: 0 }
    );
    d.set_raw_avail_idx(8);
    assert!(q.pop(&mem).is_ok());
}

#[test]
fn packed_unterminated_chain_is_a_queue_error() {
    let (mut d, mut q) = driver(4, feats(true));
    let mem = d.mem().clone();
    let b = d.alloc(8).unwrap();
    for i in 0..4 {
        let flags = DESC_F_AVAIL | DESC_F_NEXT;
        d.write_desc(
            i,
            RawDescriptor {
                addr: b,
                len: 8,
                next_or_id: 0,
                flags,
            },
        );
    }
    assert_eq!(q.pop(&mem).unwrap_err(), QueueError::UnterminatedChain);
}

#[test]
fn used_index_is_published_once_per_batch() {
    both(|packed| {
        let (mut d, mut q) = driver(16, feats(packed));
        let mem = d.mem().clone();
        let b = d.alloc(8).unwrap();
        for _ in 0..5 {
            d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        }
        d.publish();
        let mut ids = Vec::new();
        while let Some(c) = q.pop(&mem).unwrap() {
            ids.push(c.id());
        }
        for &id in &ids {
            q.add_used(id, 1);
        }
        assert!(d.used().is_empty(), "nothing visible before publish");
        assert!(q.publish_used());
        assert_eq!(d.used().len(), 5);
        assert_eq!(q.stats().interrupts, 1);
    });
}

#[test]
fn guest_rewriting_used_idx_does_not_confuse_the_device() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    let b = d.alloc(8).unwrap();
    d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
    d.publish();
    let c = q.pop(&mem).unwrap().unwrap();
    d.write(d.addresses().device + 2, &500u16.to_le_bytes());
    q.add_used(c.id(), 8);
    q.publish_used();
    let mut idx = [0u8; 2];
    d.read(d.addresses().device + 2, &mut idx);
    assert_eq!(u16::from_le_bytes(idx), 1);
}

#[test]
fn event_idx_suppresses_interrupts_and_kicks() {
    both(|packed| {
        let f = RingFeatures {
            event_idx: true,
            ..feats(packed)
        };
        let (mut d, mut q) = driver(16, f);
        let mem = d.mem().clone();
        let b = d.alloc(8).unwrap();
        // The driver asks for an interrupt at the first used element.
        d.set_interrupts(true);
        q.activate(&mem).unwrap();
        assert!(!q.enable_notification(&mem).unwrap());
        d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        d.publish();
        assert!(
            d.kick_needed(),
            "device asked to be notified at the next buffer"
        );
        q.disable_notification();
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(c.id(), 8);
        assert!(q.publish_used(), "used_event asked for this element");
        d.used();
        // The driver now disables interrupts: the next publish must not interrupt.
        d.set_interrupts(false);
        d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        d.publish();
        if !packed {
            // With EVENT_IDX a split device only re-arms avail_event on enable; no kick.
            assert!(!d.kick_needed());
        }
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(c.id(), 8);
        assert!(!q.publish_used());
        // Re-enabled at the next element: the publish after it interrupts.
        d.used();
        d.set_interrupts(true);
        d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        d.publish();
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(c.id(), 8);
        assert!(q.publish_used());
    });
}

#[test]
fn flags_suppress_interrupts_and_kicks_without_event_idx() {
    both(|packed| {
        let (mut d, mut q) = driver(16, feats(packed));
        let mem = d.mem().clone();
        let b = d.alloc(8).unwrap();
        q.activate(&mem).unwrap();
        q.disable_notification();
        d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        d.publish();
        assert!(!d.kick_needed(), "device disabled notifications");
        // Enabling re-checks the ring and reports the buffer that arrived meanwhile.
        assert!(q.enable_notification(&mem).unwrap());
        d.set_interrupts(false);
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(c.id(), 8);
        assert!(!q.publish_used(), "driver disabled interrupts");
        d.set_interrupts(true);
        d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
        d.publish();
        assert!(d.kick_needed());
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(c.id(), 8);
        assert!(q.publish_used());
    });
}

#[test]
fn in_order_completions_are_reordered() {
    both(|packed| {
        let f = RingFeatures {
            in_order: true,
            ..feats(packed)
        };
        let (mut d, mut q) = driver(16, f);
        let mem = d.mem().clone();
        let b = d.alloc(8).unwrap();
        let ids: Vec<u16> = (0..4)
            .map(|_| d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap())
            .collect();
        d.publish();
        let mut popped = Vec::new();
        while let Some(c) = q.pop(&mem).unwrap() {
            popped.push(c.id());
        }
        assert_eq!(popped, ids);
        q.add_used(ids[2], 3);
        q.add_used(ids[1], 2);
        q.publish_used();
        assert!(d.used().is_empty(), "ids[0] not done yet");
        q.add_used(ids[0], 1);
        q.add_used(ids[3], 4);
        q.publish_used();
        assert_eq!(
            d.used(),
            vec![(ids[0], 1), (ids[1], 2), (ids[2], 3), (ids[3], 4)]
        );
        assert_eq!(q.in_order_pending(), 0);
    });
}

#[test]
fn save_and_restore_keeps_buffers() {
    both(|packed| {
        let (mut d, mut q) = driver(8, feats(packed));
        let mem = d.mem().clone();
        let b = d.alloc(8).unwrap();
        for _ in 0..12 {
            // More than a lap, so the packed wrap counters are saved flipped.
            for _ in 0..3 {
                d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
            }
            d.publish();
            serve(&mut q, &mem);
            d.used();
        }
        let ids: Vec<u16> = (0..4)
            .map(|_| d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap())
            .collect();
        d.publish();
        let first = q.pop(&mem).unwrap().unwrap().id();
        let state = q.state();
        drop(q);
        // A restarted backend: a fresh queue from the saved state.
        let mut q2 = Queue::new(8);
        q2.restore(state).unwrap();
        q2.add_used(first, 0); // the in-flight request, completed after the restart
        let rest: Vec<u16> = serve(&mut q2, &mem).into_iter().map(|s| s.0).collect();
        assert_eq!(rest, ids[1..]);
        let used: Vec<u16> = d.used().into_iter().map(|u| u.0).collect();
        assert_eq!(used, ids);
    });
}

#[test]
fn segment_cap_bounds_chain_size() {
    let (mut d, mut q) = driver(64, feats(false));
    q.set_max_segments(4);
    let mem = d.mem().clone();
    let b = d.alloc(64).unwrap();
    let bufs: Vec<Buf> = (0..5).map(|i| Buf::r(b + i, 1)).collect();
    d.add_chain(&bufs, Placement::Indirect).unwrap();
    d.publish();
    assert!(matches!(
        q.pop_raw(&mem).unwrap(),
        Some(Popped::Invalid {
            error: ChainError::TooManySegments(4),
            ..
        })
    ));
}

#[test]
fn reader_and_writer_helpers() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    let a = d.alloc(3).unwrap();
    let b2 = d.alloc(5).unwrap();
    d.write(a, &[1, 2, 3]);
    d.write(b2, &[4, 5, 6, 7, 8]);
    let w1 = d.alloc(2).unwrap();
    let w2 = d.alloc(7).unwrap();
    d.add_chain(
        &[Buf::r(a, 3), Buf::r(b2, 5), Buf::w(w1, 2), Buf::w(w2, 7)],
        Placement::Direct,
    )
    .unwrap();
    d.publish();
    let c = q.pop(&mem).unwrap().unwrap();
    let mut r = c.reader();
    let v: u64 = r.read_obj().unwrap();
    assert_eq!(v.to_le_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(
        r.read_obj::<u8>().is_err(),
        "reading past the end is UnexpectedEof"
    );
    let mut w = c.writer();
    let mut data = w.split_at(8);
    data.write_all(&[9; 8]).unwrap();
    assert!(data.write_obj(0u8).is_err());
    w.write_obj(0xeeu8).unwrap();
    assert_eq!(data.bytes_written() + w.bytes_written(), 9);
    let mut out = [0u8; 7];
    d.read(w2, &mut out);
    assert_eq!(out, [9, 9, 9, 9, 9, 9, 0xee]);
}

#[test]
fn reset_forgets_everything() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    q.activate(&mem).unwrap();
    q.reset();
    assert!(!q.ready());
    assert_eq!(q.pop(&mem).unwrap_err(), QueueError::NotReady);
    let _ = d.alloc(1);
}

#[test]
fn misaligned_or_outside_rings_are_refused() {
    let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
    let mut q = Queue::new(8);
    q.set_ready(true);
    q.set_addresses(RingAddresses {
        desc: 0x1008,
        driver: 0x2000,
        device: 0x3000,
    });
    assert!(matches!(
        q.activate(&mem),
        Err(QueueError::Misaligned { .. })
    ));
    q.set_addresses(RingAddresses {
        desc: 0x1000,
        driver: 0x2000,
        device: 1 << 20,
    });
    assert!(matches!(
        q.activate(&mem),
        Err(QueueError::RingOutOfMemory { .. })
    ));
    q.set_addresses(RingAddresses {
        desc: 0x1000,
        driver: 0x2000,
        device: 0x3000,
    });
    q.set_size(6);
    assert_eq!(
        q.activate(&mem),
        Err(QueueError::InvalidSize(6)),
        "split sizes are powers of two"
    );
    q.set_features(RingFeatures {
        packed: true,
        ..Default::default()
    });
    assert!(q.activate(&mem).is_ok(), "packed sizes need not be");
}

#[test]
fn memory_change_keeps_indices() {
    let (mut d, mut q) = driver(8, feats(false));
    let mem = d.mem().clone();
    let b = d.alloc(8).unwrap();
    d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
    d.publish();
    let id = q.pop(&mem).unwrap().unwrap().id();
    // The same mapping under a new handle (as after vhost-user SET_MEM_TABLE).
    let mem2 = GuestMemory::new(mem.mmap().clone()).unwrap();
    q.add_used(id, 1);
    d.add_chain(&[Buf::w(b, 8)], Placement::Direct).unwrap();
    d.publish();
    assert!(q.pop(&mem2).unwrap().is_some());
    assert_eq!(q.state().next_avail, 2);
}

#[test]
fn largest_queue_size_works_on_both_layouts() {
    both(|packed| {
        let mut d = MockDriver::with_memory(MAX_QUEUE_SIZE, feats(packed), 8 << 20);
        let mut q = d.device_queue();
        let mem = d.mem().clone();
        let b = d.alloc(16).unwrap();
        for round in 0..3 {
            let mut ids = Vec::new();
            for _ in 0..20_000 {
                ids.push(d.add_chain(&[Buf::w(b, 16)], Placement::Direct).unwrap());
            }
            d.publish();
            let mut chain = DescriptorChain::new();
            let mut n = 0;
            while q.pop_into(&mem, &mut chain).unwrap() {
                q.add_used(chain.id(), 16);
                n += 1;
            }
            assert_eq!(n, 20_000, "round {round}");
            q.publish_used();
            assert_eq!(d.used().len(), 20_000);
        }
    });
}
