//! Driver notifications with `VIRTIO_F_NOTIFICATION_DATA` (VIRTIO 1.2 §2.9).

/// A decoded driver notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationData {
    /// The queue the driver notified.
    pub queue: u16,
    /// Split: the low 15 bits of the avail index. Packed: the ring slot where the next
    /// available descriptor will be written.
    pub next_off: u16,
    /// Split: bit 15 of the avail index. Packed: the driver's wrap counter at `next_off`.
    pub next_wrap: bool,
}

impl NotificationData {
    /// Decodes the 32-bit notification value (`le32 { vqn: 16; next_off: 15; next_wrap: 1 }`).
    /// Without the feature, the value is just the queue index.
    pub fn decode(value: u32, notification_data: bool) -> Self {
        let queue = (value & 0xffff) as u16; // masked to 16 bits
        if !notification_data {
            return Self {
                queue,
                next_off: 0,
                next_wrap: false,
            };
        }
        Self {
            queue,
            next_off: ((value >> 16) & 0x7fff) as u16,
            next_wrap: value & (1 << 31) != 0,
        }
    }

    /// Split ring: the avail index the notification announces.
    pub fn split_avail_idx(&self) -> u16 {
        self.next_off | if self.next_wrap { 0x8000 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_forms() {
        let v = 3 | (0x1234 << 16) | (1 << 31);
        let n = NotificationData::decode(v, true);
        assert_eq!(
            n,
            NotificationData {
                queue: 3,
                next_off: 0x1234,
                next_wrap: true
            }
        );
        assert_eq!(n.split_avail_idx(), 0x9234);
        assert_eq!(NotificationData::decode(v, false).queue, 3);
        assert_eq!(NotificationData::decode(v, false).next_off, 0);
    }
}
