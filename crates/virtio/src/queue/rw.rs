//! Byte-stream access to a chain: [`Reader`] over the device-readable segments and
//! [`Writer`] over the device-writable ones.
//!
//! Copies go straight between guest memory and the caller's buffer (no bounce buffer). A
//! short read or write means the chain ran out of space; typed helpers turn that into an
//! `UnexpectedEof`/`WriteZero` error so devices cannot misparse a truncated request.

use std::io;

use vm_memory::ByteValued;

use super::chain::Segment;

/// Cursor over a list of segments.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    segs: &'a [Segment<'a>],
    /// Offset into `segs[0]`.
    offset: u32,
    /// Bytes left in all segments.
    left: u32,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [Segment<'a>], total: u32) -> Self {
        Self {
            segs,
            offset: 0,
            left: total,
        }
    }

    /// Calls `f(host_ptr, len)` for consecutive pieces covering up to `want` bytes and
    /// advances past them. Returns the number of bytes covered.
    fn advance_with(&mut self, want: usize, mut f: impl FnMut(*mut u8, usize, usize)) -> usize {
        let want = want.min(self.left as usize);
        let mut done = 0usize;
        while done < want {
            let Some(seg) = self.segs.first() else { break };
            let avail = (seg.len() - self.offset) as usize;
            let n = avail.min(want - done);
            // SAFETY: `offset + n <= seg.len()`, so the pointer stays inside the segment,
            // which lies inside guest memory that is mapped while `'a` is alive.
            let p = unsafe { seg.as_ptr().add(self.offset as usize) };
            f(p, n, done);
            done += n;
            // `n <= avail <= u32::MAX` because segment lengths are `u32`.
            let n32 = u32::try_from(n).unwrap_or(u32::MAX);
            self.offset += n32;
            self.left -= n32;
            if self.offset == seg.len() {
                self.segs = &self.segs[1..];
                self.offset = 0;
            }
        }
        done
    }

    fn skip(&mut self, n: usize) -> usize {
        self.advance_with(n, |_, _, _| {})
    }
}

/// Reads the device-readable part of a chain.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    cur: Cursor<'a>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(segs: &'a [Segment<'a>], total: u32) -> Self {
        Self {
            cur: Cursor::new(segs, total),
        }
    }

    /// Bytes not yet read.
    pub fn available(&self) -> usize {
        self.cur.left as usize
    }

    /// Reads a plain-data object (a request header, say) or fails with `UnexpectedEof`.
    pub fn read_obj<T: ByteValued + Default>(&mut self) -> io::Result<T> {
        let mut obj = T::default();
        io::Read::read_exact(self, obj.as_mut_slice())?;
        Ok(obj)
    }

    /// Skips `n` bytes; returns how many were skipped.
    pub fn consume(&mut self, n: usize) -> usize {
        self.cur.skip(n)
    }

    /// The segments not yet read, for zero-copy I/O, limited to `max` bytes; consumes them.
    /// Each item is `(host pointer, length)`.
    pub fn take_slices(&mut self, max: usize) -> Vec<(*const u8, usize)> {
        let mut out = Vec::new();
        self.cur
            .advance_with(max, |p, n, _| out.push((p.cast_const(), n)));
        out
    }
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let dst = buf.as_mut_ptr();
        Ok(self.cur.advance_with(buf.len(), |src, n, done| {
            // SAFETY: `src..src+n` is inside guest memory (see `advance_with`);
            // `dst+done..dst+done+n` is inside `buf` because `done + n <= buf.len()`. Guest
            // memory and `buf` never overlap (`buf` is a Rust allocation).
            unsafe { std::ptr::copy_nonoverlapping(src, dst.add(done), n) }
        }))
    }
}

/// Writes the device-writable part of a chain.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    cur: Cursor<'a>,
    written: u32,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(segs: &'a [Segment<'a>], total: u32) -> Self {
        Self {
            cur: Cursor::new(segs, total),
            written: 0,
        }
    }

    /// Bytes of space left.
    pub fn available(&self) -> usize {
        self.cur.left as usize
    }

    /// Bytes written so far: the used length to report for the chain.
    pub fn bytes_written(&self) -> u32 {
        self.written
    }

    /// Writes a plain-data object or fails with `WriteZero` (nothing is written then).
    pub fn write_obj<T: ByteValued>(&mut self, obj: T) -> io::Result<()> {
        if self.available() < std::mem::size_of::<T>() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::Write::write_all(self, obj.as_slice())
    }

    /// Skips `n` bytes of space (counted as written, as a device does after filling them
    /// by zero-copy I/O); returns how many were skipped.
    pub fn skip(&mut self, n: usize) -> usize {
        let n = self.cur.skip(n);
        self.written += u32::try_from(n).unwrap_or(u32::MAX);
        n
    }

    /// Splits off a writer for the first `n` bytes (or fewer, if fewer are left); `self`
    /// continues after them. Used to fill data before a trailing status byte.
    pub fn split_at(&mut self, n: usize) -> Writer<'a> {
        let mut head = self.clone();
        head.cur.left = u32::try_from(n).unwrap_or(u32::MAX).min(self.cur.left);
        head.written = 0;
        self.cur.skip(n);
        head
    }

    /// The space not yet written, for zero-copy I/O, limited to `max` bytes; consumes it and
    /// counts it as written. Each item is `(host pointer, length)`.
    pub fn take_slices(&mut self, max: usize) -> Vec<(*mut u8, usize)> {
        let mut out = Vec::new();
        let n = self.cur.advance_with(max, |p, n, _| out.push((p, n)));
        self.written += u32::try_from(n).unwrap_or(u32::MAX);
        out
    }
}

impl io::Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let src = buf.as_ptr();
        let n = self.cur.advance_with(buf.len(), |dst, n, done| {
            // SAFETY: `dst..dst+n` is inside guest memory (see `advance_with`);
            // `src+done..src+done+n` is inside `buf`. They never overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst, n) }
        });
        self.written += u32::try_from(n).unwrap_or(u32::MAX);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
