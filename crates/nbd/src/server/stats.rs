//! Counters: per export (shared by its connections, read by `oxio serve`) and per connection.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire::Command;

/// Live counters of one export. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct ExportStats {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
    zeroes: AtomicU64,
    other: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
}

/// A point-in-time copy of [`ExportStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections accepted so far.
    pub connections_total: u64,
    /// Connections in the transmission phase now.
    pub connections_active: u64,
    /// READ requests.
    pub reads: u64,
    /// WRITE requests.
    pub writes: u64,
    /// FLUSH requests.
    pub flushes: u64,
    /// TRIM requests.
    pub trims: u64,
    /// WRITE_ZEROES requests.
    pub zeroes: u64,
    /// CACHE, BLOCK_STATUS and invalid requests.
    pub other: u64,
    /// Bytes sent to clients by READ.
    pub bytes_read: u64,
    /// Bytes received from clients by WRITE.
    pub bytes_written: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

impl ExportStats {
    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    pub(crate) fn request(&self, command: Command, bytes: u64, ok: bool) {
        let counter = match command {
            Command::Read => {
                if ok {
                    self.bytes_read.fetch_add(bytes, Relaxed);
                }
                &self.reads
            }
            Command::Write => {
                if ok {
                    self.bytes_written.fetch_add(bytes, Relaxed);
                }
                &self.writes
            }
            Command::Flush => &self.flushes,
            Command::Trim => &self.trims,
            Command::WriteZeroes => &self.zeroes,
            _ => &self.other,
        };
        counter.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_total: self.connections_total.load(Relaxed),
            connections_active: self.connections_active.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            trims: self.trims.load(Relaxed),
            zeroes: self.zeroes.load(Relaxed),
            other: self.other.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} ({} active), reads {} ({} MiB), writes {} ({} MiB), flushes {}, \
             trims {}, zeroes {}, other {}, errors {}",
            self.connections_total,
            self.connections_active,
            self.reads,
            self.bytes_read >> 20,
            self.writes,
            self.bytes_written >> 20,
            self.flushes,
            self.trims,
            self.zeroes,
            self.other,
            self.errors
        )
    }
}

/// What one connection did, returned when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Requests answered (DISC excluded).
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Bytes read by the client.
    pub bytes_read: u64,
    /// Bytes written by the client.
    pub bytes_written: u64,
    /// The client ended with `NBD_CMD_DISC` (rather than closing or being cut off).
    pub clean_disconnect: bool,
    /// Waits for requests that busy-polling ended (data came while polling)...
    pub poll_hits: u64,
    /// ...and waits that polled (or could have) but still had to sleep.
    pub poll_sleeps: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let s = ExportStats::default();
        s.connection_opened();
        s.request(Command::Read, 4096, true);
        s.request(Command::Write, 512, false);
        s.request(Command::Unknown(9), 0, false);
        let snap = s.snapshot();
        assert_eq!(
            (snap.reads, snap.bytes_read, snap.writes, snap.bytes_written),
            (1, 4096, 1, 0)
        );
        assert_eq!(
            (snap.errors, snap.other, snap.connections_active),
            (2, 1, 1)
        );
        s.connection_closed();
        assert_eq!(s.snapshot().connections_active, 0);
        assert!(snap.to_string().contains("errors 2"));
    }
}
