//! An in-memory transport pair, with a seeded fault injector on each direction.

use super::fault::{FaultInjector, FaultStats, Faults};
use super::{Transport, Waker};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inbox {
    frames: VecDeque<(Instant, Vec<u8>)>,
    woken: bool,
}

#[derive(Debug, Default)]
struct Wire {
    inbox: Mutex<Inbox>,
    ready: Condvar,
}

impl Wire {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // A panic while holding this lock leaves only a queue of byte vectors behind, which
        // stays consistent; keep going.
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One end of an in-memory pair. Frames sent here arrive at the other end after passing the
/// sender's fault injector.
#[derive(Debug)]
pub struct MemTransport {
    peer: Arc<Wire>,
    own: Arc<Wire>,
    faults: FaultInjector,
    /// Frames queued for the peer's inbox since the last flush.
    pending: Vec<(Instant, Vec<u8>)>,
    /// Most frames an inbox holds; more are dropped, as a NIC ring would.
    capacity: usize,
}

/// A connected pair; `ab` applies to frames from the first end to the second.
pub fn pair(ab: Faults, ba: Faults, seed: u64) -> (MemTransport, MemTransport) {
    let (w1, w2) = (Arc::new(Wire::default()), Arc::new(Wire::default()));
    let end = |peer: &Arc<Wire>, own: &Arc<Wire>, f, s| MemTransport {
        peer: peer.clone(),
        own: own.clone(),
        faults: FaultInjector::new(f, s),
        pending: Vec::new(),
        capacity: 1 << 16,
    };
    (
        end(&w2, &w1, ab, seed),
        end(&w1, &w2, ba, seed ^ 0x9e37_79b9_7f4a_7c15),
    )
}

impl MemTransport {
    /// What the fault injector did to frames sent from this end.
    pub fn fault_stats(&self) -> FaultStats {
        self.faults.stats()
    }
}

impl Transport for MemTransport {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let pending = &mut self.pending;
        self.faults
            .inject(Instant::now(), frame, &mut |at, f| pending.push((at, f)));
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut inbox = self.peer.lock();
        for f in self.pending.drain(..) {
            if inbox.frames.len() < self.capacity {
                inbox.frames.push_back(f);
            }
        }
        drop(inbox);
        self.peer.ready.notify_all();
        Ok(())
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inbox = self.own.lock();
        loop {
            let now = Instant::now();
            let ready = matches!(inbox.frames.front(), Some((at, _)) if *at <= now);
            if ready || inbox.woken {
                break;
            }
            let mut wait_until = deadline;
            if let Some((at, _)) = inbox.frames.front() {
                wait_until = Some(wait_until.map_or(*at, |d| d.min(*at)));
            }
            inbox = match wait_until {
                None => self
                    .own
                    .ready
                    .wait(inbox)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(t) if t <= now => return Ok(0),
                Some(t) => {
                    self.own
                        .ready
                        .wait_timeout(inbox, t - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        inbox.woken = false;
        let now = Instant::now();
        let mut batch = Vec::new();
        while matches!(inbox.frames.front(), Some((at, _)) if *at <= now) && batch.len() < 256 {
            if let Some((_, f)) = inbox.frames.pop_front() {
                batch.push(f);
            }
        }
        drop(inbox);
        for f in &batch {
            on_frame(f);
        }
        Ok(batch.len())
    }

    fn waker(&self) -> Waker {
        let own = self.own.clone();
        Waker::new(move || {
            own.lock().woken = true;
            own.ready.notify_all();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_wakers_interrupt() {
        let (mut a, mut b) = pair(Faults::NONE, Faults::NONE, 1);
        a.send(b"hello").unwrap();
        a.flush().unwrap();
        let mut got = Vec::new();
        assert_eq!(
            b.recv(Some(Duration::from_secs(1)), &mut |f| got.push(f.to_vec()))
                .unwrap(),
            1
        );
        assert_eq!(got, vec![b"hello".to_vec()]);
        assert_eq!(
            b.recv(Some(Duration::from_millis(1)), &mut |_| ()).unwrap(),
            0
        );
        let w = b.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        assert_eq!(b.recv(None, &mut |_| ()).unwrap(), 0);
        t.join().unwrap();
    }
}
