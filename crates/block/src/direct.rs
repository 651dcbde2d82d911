//! [`DirectAccess`]: storage that lives in this process's memory, lent to a front-end so it
//! can move bytes between a socket and the storage with no buffer in between.
//!
//! Why: for a RAM-backed export the queue path copies every payload twice in user space
//! (socket → request buffer → storage, storage → request buffer → socket) and hands large
//! copies to worker threads. With direct access the kernel's own socket copy is the only one:
//! `readv` lands WRITE payloads in the storage and `writev` sends READ data from it. Profiles
//! of 1 MiB requests showed the user-space copies and the thread hand-offs to be about half
//! of the server's CPU time.
//!
//! Locking: the storage is locked for the duration of the callback only (one non-blocking
//! system call), readers shared and writers exclusive, in ascending address order, so
//! concurrent requests on other connections never see a torn 64 KiB chunk mid-copy.

use std::io::{self, IoSlice, IoSliceMut};

use crate::Result;

/// Most slices a [`DirectAccess`] callback receives at once (a longer range is offered in
/// several calls). With 64 KiB chunks this is 4 MiB per call.
pub const DIRECT_MAX_SLICES: usize = 64;

/// Byte-level access to a backend's storage (see the module documentation). Offsets and
/// lengths must already be range-checked against the backend's capabilities.
pub trait DirectAccess: Send + Sync {
    /// Calls `f` with the bytes from `offset` (at most `len`, possibly fewer when the range
    /// spans more than [`DIRECT_MAX_SLICES`] pieces) as consecutive slices, locked against
    /// writers; never-written bytes appear as zeroes. Returns what `f` returns: the number of
    /// bytes it consumed.
    fn read_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize>;

    /// Calls `f` with the storage for the bytes from `offset` (at most `len`, possibly fewer
    /// as for [`DirectAccess::read_with`]) as consecutive slices to fill, locked exclusively
    /// and allocated if needed. `f` returns how many bytes it wrote; those bytes are stored
    /// (they become visible to readers when the call returns). The outer error is the
    /// storage's (no memory for new chunks); the inner one is `f`'s.
    fn write_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    ) -> Result<io::Result<usize>>;

    /// Copies the bytes at `offset` into `dst` (never-written bytes read as zero).
    fn read_into(&self, offset: u64, dst: &mut [u8]) {
        let mut at = 0;
        while at < dst.len() {
            let copied =
                self.read_with(offset + at as u64, (dst.len() - at) as u64, &mut |slices| {
                    let mut n = 0;
                    for s in slices {
                        dst[at + n..at + n + s.len()].copy_from_slice(s);
                        n += s.len();
                    }
                    Ok(n)
                });
            match copied {
                Ok(n) if n > 0 => at += n,
                // The copying callback cannot fail and the range is checked, so this is
                // unreachable; stop rather than spin.
                _ => break,
            }
        }
    }

    /// Stores `src` at `offset`.
    fn write_from(&self, offset: u64, src: &[u8]) -> Result<()> {
        let mut at = 0;
        while at < src.len() {
            let stored =
                self.write_with(offset + at as u64, (src.len() - at) as u64, &mut |slices| {
                    let mut n = 0;
                    for s in slices.iter_mut() {
                        let len = s.len();
                        s.copy_from_slice(&src[at + n..at + n + len]);
                        n += len;
                    }
                    Ok(n)
                })?;
            match stored {
                Ok(n) if n > 0 => at += n,
                _ => break,
            }
        }
        Ok(())
    }
}
