//! Inflight tracking: a backend killed anywhere, restarted on the same region, serves every
//! request exactly once.

use std::collections::BTreeSet;

use super::*;
use crate::mock::{Buf, MockDriver, Placement};
use crate::queue::{Queue, RingFeatures};

const MEM: usize = 4 << 20;

fn feats(packed: bool) -> RingFeatures {
    RingFeatures {
        packed,
        indirect: true,
        event_idx: false,
        in_order: false,
    }
}

impl InflightRegion {
    /// A second handle on the same memory (the old queue is dropped before it is used).
    fn share(&self) -> Self {
        Self {
            ptr: self.ptr,
            len: self.len,
            _keep: self._keep.clone(),
        }
    }
}

/// Adds `n` chains (one readable and one writable buffer; every third one indirect).
fn add_chains(d: &mut MockDriver, n: usize) -> Vec<u16> {
    let ids = (0..n)
        .map(|i| {
            let r = d.alloc(16).unwrap();
            let w = d.alloc(16).unwrap();
            let place = if i % 3 == 2 {
                Placement::Indirect
            } else {
                Placement::Direct
            };
            d.add_chain(&[Buf::r(r, 16), Buf::w(w, 16)], place).unwrap()
        })
        .collect();
    d.publish();
    ids
}

/// What a restarted backend is told by QEMU after a crash: split rings resume at the used
/// index in guest memory; packed rings get a stale base (the one of the first start).
fn restarted_queue(d: &MockDriver) -> Queue {
    let mut q = d.device_queue();
    if !d.features().packed {
        let mut b = [0u8; 2];
        d.read(d.addresses().device + 2, &mut b);
        let used = u16::from_le_bytes(b);
        q.set_next_avail(used, used);
    }
    q
}

fn pop_ids(q: &mut Queue, mem: &GuestMemory, max: usize) -> Vec<u16> {
    let mut ids = Vec::new();
    while ids.len() < max {
        match q.pop(mem).unwrap() {
            Some(c) => ids.push(c.id()),
            None => break,
        }
    }
    ids
}

fn both(test: impl Fn(bool)) {
    test(false);
    test(true);
}

#[test]
fn fresh_region_changes_nothing() {
    both(|packed| {
        let mut d = MockDriver::with_memory(32, feats(packed), MEM);
        let mem = d.mem().clone();
        let region = InflightRegion::anonymous(32);
        let mut q = d.device_queue();
        let rec = q.set_inflight(region.share(), &mem).unwrap();
        assert!(rec.fresh && rec.resubmit.is_empty());
        let ids = add_chains(&mut d, 5);
        assert_eq!(pop_ids(&mut q, &mem, 99), ids);
        for &id in ids.iter().rev() {
            q.add_used(id, 1);
        }
        q.publish_used();
        let used: Vec<u16> = d.used().iter().map(|u| u.0).collect();
        assert_eq!(used, ids.iter().rev().copied().collect::<Vec<_>>());
        // Everything completed: a restart has nothing to resubmit and resumes at the end.
        drop(q);
        let mut q2 = restarted_queue(&d);
        let rec = q2.set_inflight(region.share(), &mem).unwrap();
        assert!(!rec.fresh);
        assert!(rec.resubmit.is_empty(), "{rec:?}");
        assert_eq!(rec.next_avail, rec.next_used);
        assert!(q2.pop(&mem).unwrap().is_none());
    });
}

#[test]
fn killed_mid_batch_resubmits_exactly_the_uncompleted_in_pop_order() {
    both(|packed| {
        let mut d = MockDriver::with_memory(32, feats(packed), MEM);
        let mem = d.mem().clone();
        let region = InflightRegion::anonymous(32);
        let mut q = d.device_queue();
        q.set_inflight(region.share(), &mem).unwrap();
        let ids = add_chains(&mut d, 6);
        assert_eq!(pop_ids(&mut q, &mem, 99), ids);
        // Out of order: 3 and 1 are published, 4 is completed but not published.
        q.add_used(ids[3], 1);
        q.add_used(ids[1], 1);
        q.publish_used();
        q.add_used(ids[4], 1);
        drop(q); // killed
        let seen: Vec<u16> = d.used().iter().map(|u| u.0).collect();
        assert_eq!(seen, vec![ids[3], ids[1]]);
        // The guest queues more while the backend is down.
        let more = add_chains(&mut d, 2);

        let mut q2 = restarted_queue(&d);
        let rec = q2.set_inflight(region.share(), &mem).unwrap();
        let expected = vec![ids[0], ids[2], ids[4], ids[5]];
        assert_eq!(rec.resubmit, expected, "un-completed, in pop order");
        assert_eq!(q2.inflight_resubmit_pending(), 4);
        let popped = pop_ids(&mut q2, &mem, 99);
        assert_eq!(popped, [expected.clone(), more.clone()].concat());
        for &id in popped.iter().rev() {
            q2.add_used(id, 1);
        }
        q2.publish_used();
        let seen2: Vec<u16> = d.used().iter().map(|u| u.0).collect();
        assert_eq!(seen2, popped.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(d.in_flight(), 0, "every chain returned exactly once");
    });
}

#[test]
fn a_second_crash_after_resubmitting_keeps_the_counter_order() {
    both(|packed| {
        let mut d = MockDriver::with_memory(32, feats(packed), MEM);
        let mem = d.mem().clone();
        let region = InflightRegion::anonymous(32);
        let mut q = d.device_queue();
        q.set_inflight(region.share(), &mem).unwrap();
        let ids = add_chains(&mut d, 4);
        pop_ids(&mut q, &mem, 99);
        q.add_used(ids[2], 1);
        q.publish_used();
        drop(q);
        d.used();
        let more = add_chains(&mut d, 2);
        let mut q2 = restarted_queue(&d);
        q2.set_inflight(region.share(), &mem).unwrap();
        // Serve two of the resubmitted and one new, complete only the new one, die again.
        let got = pop_ids(&mut q2, &mem, 4);
        assert_eq!(got, vec![ids[0], ids[1], ids[3], more[0]]);
        q2.add_used(more[0], 1);
        q2.publish_used();
        drop(q2);
        assert_eq!(d.used().len(), 1);
        let mut q3 = restarted_queue(&d);
        let rec = q3.set_inflight(region.share(), &mem).unwrap();
        assert_eq!(rec.resubmit, vec![ids[0], ids[1], ids[3]]);
        let popped = pop_ids(&mut q3, &mem, 99);
        assert_eq!(popped, vec![ids[0], ids[1], ids[3], more[1]]);
        for id in popped {
            q3.add_used(id, 0);
        }
        q3.publish_used();
        assert_eq!(d.used().len(), 4);
        assert_eq!(d.in_flight(), 0);
    });
}

/// One step of a backend's life: the queue, and the ids popped so far.
type Step<'a> = dyn Fn(&mut Queue, &mut Vec<u16>) + 'a;

/// One run of a busy backend, killed after `budget` stores to the region: pops, out-of-order
/// completions, publishes, pops in between. Returns whether the kill happened. A killed
/// process does nothing more, so the run stops at the first step that finds it dead.
fn busy_then_killed(
    d: &mut MockDriver,
    region: &InflightRegion,
    budget: u64,
    all: &mut Vec<u16>,
) -> bool {
    let mem = d.mem().clone();
    let mut q = d.device_queue();
    q.set_inflight(region.share(), &mem).unwrap();
    all.extend(add_chains(d, 6));
    crash::set_budget(Some(budget));
    let mut popped = Vec::new();
    let steps: [&Step<'_>; 10] = [
        &|q, p| p.extend(pop_ids(q, &mem, 4)),
        &|q, p| q.add_used(p[2], 1),
        &|q, p| q.add_used(p[0], 1),
        &|q, _| {
            q.publish_used();
        },
        &|q, p| p.extend(pop_ids(q, &mem, 99)),
        &|q, p| q.add_used(p[4], 1),
        &|q, p| q.add_used(p[3], 1),
        &|q, p| assert!(pop_ids(q, &mem, 99).is_empty() && p.len() == 6),
        &|q, p| {
            q.add_used(p[1], 1);
            q.publish_used();
        },
        &|q, p| q.add_used(p[5], 1),
    ];
    for step in steps {
        if crash::is_dead() {
            break;
        }
        step(&mut q, &mut popped);
    }
    let dead = crash::is_dead();
    crash::set_budget(None);
    dead
}

#[test]
fn killed_at_every_store_loses_and_repeats_nothing() {
    both(|packed| {
        let mut points = 0;
        for budget in 0.. {
            let mut d = MockDriver::with_memory(32, feats(packed), MEM);
            let mem = d.mem().clone();
            let region = InflightRegion::anonymous(32);
            let mut all = Vec::new();
            // A first life that completes everything, so the region is not fresh.
            {
                let mut q = d.device_queue();
                q.set_inflight(region.share(), &mem).unwrap();
                all.extend(add_chains(&mut d, 3));
                for id in pop_ids(&mut q, &mem, 99) {
                    q.add_used(id, 1);
                }
                q.publish_used();
            }
            let killed = busy_then_killed(&mut d, &region, budget, &mut all);
            let mut done: Vec<u16> = d.used().iter().map(|u| u.0).collect();
            let more = add_chains(&mut d, 1);
            all.extend(&more);
            let mut q2 = restarted_queue(&d);
            let rec = q2.set_inflight(region.share(), &mem).unwrap();
            let popped = pop_ids(&mut q2, &mem, 99);
            assert!(
                popped.starts_with(&rec.resubmit),
                "budget {budget}: resubmitted first"
            );
            for &id in &popped {
                q2.add_used(id, 1);
            }
            q2.publish_used();
            done.extend(d.used().iter().map(|u| u.0));
            // Ids are reused by the mock once returned, so compare multisets per life.
            let mut a = all.clone();
            a.sort_unstable();
            done.sort_unstable();
            assert_eq!(
                done, a,
                "budget {budget} ({packed}): each request completed once"
            );
            assert_eq!(d.in_flight(), 0, "budget {budget}");
            let uniq: BTreeSet<u16> = popped.iter().copied().collect();
            assert_eq!(uniq.len(), popped.len(), "budget {budget}: no repeats");
            points += 1;
            if !killed {
                break;
            }
        }
        eprintln!("{} kill points ({packed})", points);
        assert!(points > 30, "only {points} kill points");
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// The region lives in memory the frontend can write: whatever it holds, attaching it
    /// either fails with an error or yields a queue that pops a bounded number of chains
    /// (never more than the ring holds, each completed once) without panicking.
    #[test]
    fn a_corrupted_region_never_panics_or_loops(
        packed in proptest::bool::ANY,
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2200),
        keep_header in proptest::bool::ANY,
        chains in 0usize..8,
    ) {
        let mut d = MockDriver::with_memory(32, feats(packed), MEM);
        let mem = d.mem().clone();
        let region = InflightRegion::anonymous(32);
        {
            let mut q = d.device_queue();
            q.set_inflight(region.share(), &mem).unwrap();
            add_chains(&mut d, chains);
            for id in pop_ids(&mut q, &mem, 99).into_iter().step_by(2) {
                q.add_used(id, 1);
            }
            q.publish_used();
        }
        let mut image = region.snapshot();
        for (i, b) in bytes.iter().enumerate() {
            let at = if keep_header { i + 16 } else { i };
            if let Some(x) = image.get_mut(at) {
                *x = *b;
            }
        }
        region.restore_snapshot(&image);
        let mut q = restarted_queue(&d);
        if q.set_inflight(region.share(), &mem).is_ok() {
            // A queue error (the ring positions make no sense) is allowed; a panic is not.
            let mut popped = Vec::new();
            while let Ok(Some(c)) = q.pop(&mem) {
                popped.push(c.id());
                if popped.len() > 64 {
                    break;
                }
            }
            proptest::prop_assert!(popped.len() <= 64, "{} chains popped", popped.len());
            for id in popped {
                q.add_used(id, 0);
            }
            q.publish_used();
        }
    }
}
