//! Credit accounting (omnixtend.md §3.3): one credit is one flit; grants are 2^k flits on one
//! channel per frame.

use crate::wire::Channel;

/// Largest credit exponent we send or honour (Hofmann's counters saturate at 24 bits; we
/// saturate our 64-bit counters instead).
const MAX_CREDIT_LOG2: u32 = 30;

/// What the peer has granted us to send, per channel.
#[derive(Debug, Clone)]
pub struct TxCredits {
    avail: [u64; 5],
    unlimited: bool,
}

impl TxCredits {
    /// `initial` flits per channel; `unlimited` ignores the peer's grants entirely.
    pub fn new(initial: u64, unlimited: bool) -> TxCredits {
        TxCredits {
            avail: [initial; 5],
            unlimited,
        }
    }

    /// Flits we may still send on `ch`.
    pub fn available(&self, ch: Channel) -> u64 {
        if self.unlimited {
            u64::MAX
        } else {
            self.avail[ch.index()]
        }
    }

    /// Takes `flits` credits on `ch` if there are enough.
    pub fn try_take(&mut self, ch: Channel, flits: usize) -> bool {
        if self.unlimited {
            return true;
        }
        let need = u64::try_from(flits).unwrap_or(u64::MAX);
        let slot = &mut self.avail[ch.index()];
        if *slot < need {
            return false;
        }
        *slot -= need;
        true
    }

    /// Applies a grant from a received header (`chan` 0 = none).
    pub fn grant(&mut self, chan: u8, credit: u8) {
        if let Some(ch) = Channel::from_bits(chan) {
            let add = 1u64 << u32::from(credit).min(MAX_CREDIT_LOG2);
            let slot = &mut self.avail[ch.index()];
            *slot = slot.saturating_add(add);
        }
    }
}

/// What we owe the peer: credits to grant as our buffers drain.
#[derive(Debug, Clone)]
pub struct RxCredits {
    window: [u64; 5],
    to_grant: [u64; 5],
}

impl RxCredits {
    /// A receive window of `window[ch]` flits per channel.
    pub fn new(window: [u64; 5]) -> RxCredits {
        RxCredits {
            window,
            to_grant: [0; 5],
        }
    }

    /// At open: grant everything beyond the `initial` credits the peer holds implicitly.
    pub fn start(&mut self, initial: u64) {
        for (g, w) in self.to_grant.iter_mut().zip(self.window) {
            *g = w.saturating_sub(initial);
        }
    }

    /// Forgets every pending grant (a reset link).
    pub fn clear(&mut self) {
        self.to_grant = [0; 5];
    }

    /// `flits` of a message on `ch` were consumed: they are owed back to the peer.
    pub fn consumed(&mut self, ch: Channel, flits: usize) {
        let slot = &mut self.to_grant[ch.index()];
        *slot = slot.saturating_add(u64::try_from(flits).unwrap_or(u64::MAX));
    }

    /// Whether any credit is owed.
    pub fn pending(&self) -> bool {
        self.to_grant.iter().any(|&g| g > 0)
    }

    /// Whether so much is owed on a channel we receive on that the peer may soon stall.
    pub fn urgent(&self) -> bool {
        self.to_grant
            .iter()
            .zip(self.window)
            .any(|(&g, w)| w > 0 && g >= (w / 4).max(1))
    }

    /// Owed flits on `ch`.
    pub fn owed(&self, ch: Channel) -> u64 {
        self.to_grant[ch.index()]
    }

    /// Takes the grant for the next frame: the channel owed most, the largest power of two
    /// not above what is owed. Returns (chan bits, log2 credit), or None.
    pub fn take_grant(&mut self) -> Option<(u8, u8)> {
        let (idx, &owed) = self
            .to_grant
            .iter()
            .enumerate()
            .filter(|(_, &g)| g > 0)
            .max_by_key(|(_, &g)| g)?;
        let k = (63 - owed.leading_zeros()).min(MAX_CREDIT_LOG2);
        self.to_grant[idx] = owed - (1u64 << k);
        let chan = Channel::ALL[idx].bits();
        // k <= 30 fits in the 5-bit field.
        #[allow(clippy::cast_possible_truncation)]
        Some((chan, k as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_credits_bound_sending() {
        let mut t = TxCredits::new(128, false);
        assert!(t.try_take(Channel::A, 100));
        assert!(!t.try_take(Channel::A, 29));
        assert!(t.try_take(Channel::A, 28));
        t.grant(1, 4);
        assert_eq!(t.available(Channel::A), 16);
        t.grant(0, 31); // chan 0: no credit
        assert_eq!(t.available(Channel::A), 16);
        t.grant(1, 31);
        assert_eq!(t.available(Channel::A), 16 + (1 << 30));
        assert!(TxCredits::new(0, true).try_take(Channel::D, 1 << 20));
    }

    #[test]
    fn grants_are_powers_of_two_of_what_is_owed() {
        let mut r = RxCredits::new([0, 0, 0, 1024, 0]);
        r.consumed(Channel::D, 9);
        assert_eq!(r.take_grant(), Some((4, 3)));
        assert_eq!(r.take_grant(), Some((4, 0)));
        assert_eq!(r.take_grant(), None);
        r.start(128);
        assert_eq!(r.owed(Channel::D), 896);
        assert!(r.urgent());
        assert_eq!(r.take_grant(), Some((4, 9)));
        assert_eq!(r.owed(Channel::D), 384);
    }
}
