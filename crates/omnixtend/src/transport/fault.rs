//! A deterministic, seeded fault injector for frames in flight.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

/// Fault probabilities (0.0..=1.0) and delays.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A frame vanishes.
    pub loss: f64,
    /// A frame arrives twice.
    pub duplicate: f64,
    /// A frame is held back and arrives after the next one.
    pub reorder: f64,
    /// A frame arrives late by up to `max_delay`.
    pub delay: f64,
    /// A frame is corrupted on the wire; the receiver's FCS check drops it.
    pub corrupt: f64,
    /// Largest extra delay.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults.
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 0.0,
        corrupt: 0.0,
        max_delay: Duration::ZERO,
    };

    /// The soak profile: 1 % loss, duplication and reordering, 0.1 % FCS drops.
    pub fn soak() -> Faults {
        Faults {
            loss: 0.01,
            duplicate: 0.01,
            reorder: 0.01,
            corrupt: 0.001,
            ..Faults::NONE
        }
    }
}

/// What happened to frames, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames offered.
    pub frames: u64,
    /// Frames lost.
    pub lost: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames reordered.
    pub reordered: u64,
    /// Frames delayed.
    pub delayed: u64,
    /// Frames dropped by the modelled FCS check.
    pub corrupted: u64,
}

/// Applies [`Faults`] to a stream of frames with a seeded RNG: the same seed and the same
/// input give the same output.
#[derive(Debug)]
pub struct FaultInjector {
    faults: Faults,
    rng: ChaCha8Rng,
    held: Option<Vec<u8>>,
    stats: FaultStats,
}

impl FaultInjector {
    /// An injector with `faults`, seeded with `seed`.
    pub fn new(faults: Faults, seed: u64) -> FaultInjector {
        FaultInjector {
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            held: None,
            stats: FaultStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// Passes one frame through; `deliver(at, frame)` receives what arrives, when.
    pub fn inject(
        &mut self,
        now: Instant,
        frame: &[u8],
        deliver: &mut dyn FnMut(Instant, Vec<u8>),
    ) {
        self.stats.frames += 1;
        if self.roll(self.faults.loss) {
            self.stats.lost += 1;
            return self.release_held(now, deliver);
        }
        if self.roll(self.faults.corrupt) {
            // A flipped bit fails the Ethernet FCS check: the NIC drops the frame.
            self.stats.corrupted += 1;
            return self.release_held(now, deliver);
        }
        if self.held.is_none() && self.roll(self.faults.reorder) {
            self.stats.reordered += 1;
            self.held = Some(frame.to_vec());
            return;
        }
        let mut at = now;
        if self.roll(self.faults.delay) {
            self.stats.delayed += 1;
            let max = u64::try_from(self.faults.max_delay.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            at += Duration::from_nanos(self.rng.random_range(0..max));
        }
        deliver(at, frame.to_vec());
        if self.roll(self.faults.duplicate) {
            self.stats.duplicated += 1;
            deliver(at, frame.to_vec());
        }
        self.release_held(at, deliver);
    }

    fn release_held(&mut self, at: Instant, deliver: &mut dyn FnMut(Instant, Vec<u8>)) {
        if let Some(h) = self.held.take() {
            deliver(at, h);
        }
    }

    /// Releases a held-back frame (call when the stream goes idle, so nothing is held forever).
    pub fn flush(&mut self, now: Instant, deliver: &mut dyn FnMut(Instant, Vec<u8>)) {
        self.release_held(now, deliver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64) -> (Vec<Vec<u8>>, FaultStats) {
        let mut f = FaultInjector::new(
            Faults {
                loss: 0.1,
                duplicate: 0.1,
                reorder: 0.1,
                corrupt: 0.05,
                ..Faults::NONE
            },
            seed,
        );
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..1000u32 {
            f.inject(now, &i.to_be_bytes(), &mut |_, v| out.push(v));
        }
        f.flush(now, &mut |_, v| out.push(v));
        (out, f.stats())
    }

    #[test]
    fn same_seed_same_faults() {
        let (a, sa) = run(7);
        let (b, sb) = run(7);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_ne!(run(8).0, a);
        assert!(
            sa.lost > 50 && sa.duplicated > 50 && sa.reordered > 50 && sa.corrupted > 20,
            "{sa:?}"
        );
        let expected = sa.frames - sa.lost - sa.corrupted + sa.duplicated;
        assert_eq!(a.len() as u64, expected);
    }

    #[test]
    fn no_faults_is_transparent() {
        let mut f = FaultInjector::new(Faults::NONE, 1);
        let mut out = Vec::new();
        let now = Instant::now();
        for i in 0..100u8 {
            f.inject(now, &[i], &mut |_, v| out.push(v[0]));
        }
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }
}
