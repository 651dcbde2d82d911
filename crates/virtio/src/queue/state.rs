//! Saved queue state, so a backend can restart (or a VMM migrate) without losing buffers.

use super::{RingAddresses, RingFeatures};

/// Everything needed to resume a queue. Plain data: serialize it however the VMM likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Queue size.
    pub size: u16,
    /// Whether the driver marked it ready.
    pub ready: bool,
    /// Ring addresses.
    pub addrs: RingAddresses,
    /// Negotiated ring features.
    pub features: RingFeatures,
    /// Next avail index (split) or ring slot (packed) to pop.
    pub next_avail: u16,
    /// Next used index (split) or ring slot (packed) to write.
    pub next_used: u16,
    /// Packed: the driver's wrap counter at `next_avail`.
    pub avail_wrap: bool,
    /// Packed: the device's wrap counter at `next_used`.
    pub used_wrap: bool,
}

impl Default for QueueState {
    fn default() -> Self {
        Self {
            size: 0,
            ready: false,
            addrs: RingAddresses::default(),
            features: RingFeatures::default(),
            next_avail: 0,
            next_used: 0,
            // Both wrap counters start at 1 (§2.8.1).
            avail_wrap: true,
            used_wrap: true,
        }
    }
}
