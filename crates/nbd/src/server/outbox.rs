//! [`Outbox`]: the queue of reply bytes waiting for the socket, and the reply encoders.
//!
//! Small replies (headers, short read data) are appended to one growing buffer so a burst of
//! completions goes out in a single `writev`; large read payloads are queued as their own
//! [`IoBuf`] so they are never copied, or, on a backend with [`DirectAccess`], as a range of
//! the storage that `writev` sends from directly.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use oxio_block::{DirectAccess, IoBuf, DIRECT_MAX_SLICES};

use super::export::TransmissionMode;
use crate::wire::{chunk, emit_chunk_header, emit_simple_reply, ChunkHeader};

/// Read payloads up to this size are copied into the coalescing buffer.
pub(crate) const INLINE_DATA_MAX: usize = 16 << 10;
/// A coalescing buffer is closed (a new one started) beyond this size.
const SEGMENT_MAX: usize = 1 << 20;
/// Buffers kept for reuse.
const POOL_MAX: usize = 64;
/// Largest buffer kept for reuse.
const POOL_BUF_MAX: usize = 1 << 20;
/// Most bytes kept in the pool per connection (bounds idle memory with many connections).
const POOL_BYTES_MAX: usize = 8 << 20;
/// Most slices handed to one `writev`.
pub(crate) const MAX_IOV: usize = 64;

enum Segment {
    Bytes(Vec<u8>),
    Buf(IoBuf),
    /// `len` bytes of the backend's storage at `offset`, read when they are sent.
    Direct {
        offset: u64,
        len: usize,
    },
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Bytes(v) => v.len(),
            Segment::Buf(b) => b.len(),
            Segment::Direct { len, .. } => *len,
        }
    }
}

/// Where a reply goes: which request it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyTo {
    pub cookie: u64,
    pub offset: u64,
}

/// Reply bytes not yet written, plus a pool of reusable buffers.
#[derive(Default)]
pub(crate) struct Outbox {
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already written.
    front_pos: usize,
    /// Total unwritten bytes.
    pending: usize,
    spare: Vec<Vec<u8>>,
    pool: Vec<IoBuf>,
    pool_bytes: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// A buffer of `len` bytes, reused when possible. Its content is unspecified: callers
    /// fill it completely (reads) or overwrite it (write payloads).
    pub(crate) fn take_buf(&mut self, len: usize) -> IoBuf {
        if let Some(pos) = self.pool.iter().rposition(|b| b.capacity() >= len) {
            let mut b = self.pool.swap_remove(pos);
            self.pool_bytes -= b.capacity();
            if b.set_len(len) {
                return b;
            }
        }
        IoBuf::zeroed(len)
    }

    /// Returns a buffer to the pool.
    pub(crate) fn recycle(&mut self, buf: IoBuf) {
        let fits = self.pool_bytes + buf.capacity() <= POOL_BYTES_MAX;
        if buf.capacity() <= POOL_BUF_MAX && self.pool.len() < POOL_MAX && fits {
            self.pool_bytes += buf.capacity();
            self.pool.push(buf);
        }
    }

    fn tail(&mut self) -> &mut Vec<u8> {
        let need_new =
            !matches!(self.segments.back(), Some(Segment::Bytes(v)) if v.len() < SEGMENT_MAX);
        if need_new {
            let v = self.spare.pop().unwrap_or_default();
            self.segments.push_back(Segment::Bytes(v));
        }
        match self.segments.back_mut() {
            Some(Segment::Bytes(v)) => v,
            // Just ensured the tail is a byte segment.
            _ => unreachable!("outbox tail is a byte segment"),
        }
    }

    fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let tail = self.tail();
        let before = tail.len();
        f(tail);
        let added = tail.len() - before;
        self.pending += added;
    }

    fn push_data(&mut self, buf: IoBuf) {
        if buf.len() <= INLINE_DATA_MAX {
            self.push_with(|t| t.extend_from_slice(&buf));
            self.recycle(buf);
        } else {
            self.pending += buf.len();
            self.segments.push_back(Segment::Buf(buf));
        }
    }

    /// Success without data.
    pub(crate) fn ok(&mut self, mode: &TransmissionMode, to: ReplyTo) {
        if mode.extended_headers() {
            self.chunk(mode, to, chunk::FLAG_DONE, chunk::NONE, &[]);
        } else {
            self.push_with(|t| emit_simple_reply(t, 0, to.cookie));
        }
    }

    /// A successful READ with its data.
    pub(crate) fn read_data(&mut self, mode: &TransmissionMode, to: ReplyTo, data: IoBuf) {
        self.read_header(mode, to, data.len());
        self.push_data(data);
    }

    /// A successful READ of `len` bytes whose data `fill` writes into the reply (small reads
    /// from a [`DirectAccess`] backend: one copy, straight from the storage).
    pub(crate) fn read_inline(
        &mut self,
        mode: &TransmissionMode,
        to: ReplyTo,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        self.read_header(mode, to, len);
        self.push_with(|t| {
            let start = t.len();
            t.resize(start + len, 0);
            fill(&mut t[start..]);
        });
    }

    /// A successful READ whose data is sent straight from the [`DirectAccess`] storage at
    /// `offset` when its turn comes (large reads: no copy in user space at all).
    ///
    /// The data is read at send time, not now: a WRITE to the same range that arrives in the
    /// meantime may show. The protocol leaves the result of overlapping requests in flight
    /// unspecified, and a write the client saw acknowledged before it sent this READ has
    /// already landed, so the client cannot tell.
    pub(crate) fn read_direct(
        &mut self,
        mode: &TransmissionMode,
        to: ReplyTo,
        offset: u64,
        len: usize,
    ) {
        self.read_header(mode, to, len);
        self.pending += len;
        self.segments.push_back(Segment::Direct { offset, len });
    }

    fn read_header(&mut self, mode: &TransmissionMode, to: ReplyTo, len: usize) {
        if mode.structured_replies() {
            let h = ChunkHeader {
                flags: chunk::FLAG_DONE,
                kind: chunk::OFFSET_DATA,
                cookie: to.cookie,
                offset: to.offset,
                length: 8 + len as u64,
            };
            let ext = mode.extended_headers();
            self.push_with(|t| {
                emit_chunk_header(t, ext, &h);
                t.extend_from_slice(&to.offset.to_be_bytes());
            });
        } else {
            self.push_with(|t| emit_simple_reply(t, 0, to.cookie));
        }
    }

    /// An error, with a message when the mode can carry one.
    pub(crate) fn error(&mut self, mode: &TransmissionMode, to: ReplyTo, errno: u32, msg: &str) {
        if !mode.structured_replies() {
            self.push_with(|t| emit_simple_reply(t, errno, to.cookie));
            return;
        }
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        let mut payload = Vec::with_capacity(6 + msg.len());
        payload.extend_from_slice(&errno.to_be_bytes());
        payload.extend_from_slice(&u16::try_from(msg.len()).unwrap_or(0).to_be_bytes());
        payload.extend_from_slice(msg);
        self.chunk(mode, to, chunk::FLAG_DONE, chunk::ERROR, &payload);
    }

    /// A structured or extended chunk with `payload`.
    pub(crate) fn chunk(
        &mut self,
        mode: &TransmissionMode,
        to: ReplyTo,
        flags: u16,
        kind: u16,
        payload: &[u8],
    ) {
        let h = ChunkHeader {
            flags,
            kind,
            cookie: to.cookie,
            offset: to.offset,
            length: payload.len() as u64,
        };
        let ext = mode.extended_headers();
        self.push_with(|t| {
            emit_chunk_header(t, ext, &h);
            t.extend_from_slice(payload);
        });
    }

    /// Hands the unwritten bytes, front first, to `write` as one gather list (up to
    /// [`MAX_IOV`] segments, and no further than the first direct segment, whose storage
    /// `direct` lends locked for the duration of the call). Returns what `write` returns.
    pub(crate) fn gather(
        &self,
        direct: Option<&dyn DirectAccess>,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (i, seg) in self.segments.iter().enumerate().take(MAX_IOV) {
            let skip = if i == 0 { self.front_pos } else { 0 };
            let bytes: &[u8] = match seg {
                Segment::Bytes(v) => v,
                Segment::Buf(b) => b,
                Segment::Direct { offset, len } => {
                    let Some(direct) = direct else {
                        return Err(io::Error::other("direct reply without direct access"));
                    };
                    let prefix = &iov[..n];
                    return direct.read_with(
                        offset + skip as u64,
                        (len - skip) as u64,
                        &mut |data| {
                            let mut all = [IoSlice::new(&[]); MAX_IOV + DIRECT_MAX_SLICES];
                            all[..prefix.len()].copy_from_slice(prefix);
                            all[prefix.len()..prefix.len() + data.len()].copy_from_slice(data);
                            write(&all[..prefix.len() + data.len()])
                        },
                    );
                }
            };
            iov[n] = IoSlice::new(&bytes[skip..]);
            n += 1;
        }
        write(&iov[..n])
    }

    /// Marks `n` bytes as written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.pending = self.pending.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let left = front.len() - self.front_pos;
            if n < left {
                self.front_pos += n;
                return;
            }
            n -= left;
            self.front_pos = 0;
            match self.segments.pop_front() {
                Some(Segment::Bytes(mut v)) => {
                    v.clear();
                    if self.spare.len() < 4 {
                        self.spare.push(v);
                    }
                }
                Some(Segment::Buf(b)) => self.recycle(b),
                Some(Segment::Direct { .. }) | None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Outbox) -> Vec<u8> {
        let mut all = Vec::new();
        while !o.is_empty() {
            // Write in awkward pieces to exercise partial advances.
            let n = o
                .gather(None, |iov| {
                    let flat: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
                    let n = flat.len().min(7);
                    all.extend_from_slice(&flat[..n]);
                    Ok(n)
                })
                .unwrap();
            o.advance(n);
        }
        all
    }

    #[test]
    fn simple_read_reply_is_header_then_data() {
        let mut o = Outbox::default();
        let to = ReplyTo {
            cookie: 5,
            offset: 0,
        };
        o.read_data(
            &TransmissionMode::simple(),
            to,
            IoBuf::from_slice(&[9; 20_000]),
        );
        o.ok(
            &TransmissionMode::simple(),
            ReplyTo {
                cookie: 6,
                offset: 0,
            },
        );
        assert_eq!(o.pending_bytes(), 16 + 20_000 + 16);
        let bytes = drain(&mut o);
        assert_eq!(&bytes[..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&bytes[8..16], &5u64.to_be_bytes());
        assert!(bytes[16..20_016].iter().all(|&b| b == 9));
        assert_eq!(&bytes[20_016 + 8..], &6u64.to_be_bytes());
        assert_eq!(o.pending_bytes(), 0);
    }

    #[test]
    fn structured_errors_carry_messages() {
        let mut o = Outbox::default();
        let to = ReplyTo {
            cookie: 1,
            offset: 4096,
        };
        o.error(&TransmissionMode::structured(None), to, 22, "bad");
        let bytes = drain(&mut o);
        let h = ChunkHeader::parse(&bytes[..20], false).unwrap();
        assert_eq!(
            (h.kind, h.flags, h.length),
            (chunk::ERROR, chunk::FLAG_DONE, 9)
        );
        assert_eq!(&bytes[20..], &[0, 0, 0, 22, 0, 3, b'b', b'a', b'd']);
    }

    #[test]
    fn buffers_are_pooled() {
        let mut o = Outbox::default();
        let b = o.take_buf(4096);
        let p = b.as_ptr();
        o.recycle(b);
        assert_eq!(o.take_buf(100).as_ptr(), p);
    }
}
