//! [`Outbox`]: the queue of reply bytes waiting for the socket, and the reply encoders.
//!
//! Small replies (headers, short read data) are appended to one growing buffer so a burst of
//! completions goes out in a single `writev`; large read payloads are queued as their own
//! [`IoBuf`] so they are never copied.

use std::collections::VecDeque;
use std::io::IoSlice;

use oxio_block::IoBuf;

use super::export::TransmissionMode;
use crate::wire::{chunk, emit_chunk_header, emit_simple_reply, ChunkHeader};

/// Read payloads up to this size are copied into the coalescing buffer.
const INLINE_DATA_MAX: usize = 16 << 10;
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
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Bytes(v) => v,
            Segment::Buf(b) => b,
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
        if mode.structured_replies() {
            let len = 8 + data.len() as u64;
            let h = ChunkHeader {
                flags: chunk::FLAG_DONE,
                kind: chunk::OFFSET_DATA,
                cookie: to.cookie,
                offset: to.offset,
                length: len,
            };
            let ext = mode.extended_headers();
            self.push_with(|t| {
                emit_chunk_header(t, ext, &h);
                t.extend_from_slice(&to.offset.to_be_bytes());
            });
        } else {
            self.push_with(|t| emit_simple_reply(t, 0, to.cookie));
        }
        self.push_data(data);
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

    /// Fills `iov` with the unwritten bytes, front first; returns how many slices it used.
    pub(crate) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut n = 0;
        for (slot, (i, seg)) in iov.iter_mut().zip(self.segments.iter().enumerate()) {
            let bytes = seg.bytes();
            *slot = IoSlice::new(if i == 0 {
                &bytes[self.front_pos..]
            } else {
                bytes
            });
            n += 1;
        }
        n
    }

    /// Marks `n` bytes as written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.pending = self.pending.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let left = front.bytes().len() - self.front_pos;
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
                None => {}
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
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let used = o.slices(&mut iov);
            // Write in awkward pieces to exercise partial advances.
            let flat: Vec<u8> = iov[..used].iter().flat_map(|s| s.iter().copied()).collect();
            let n = flat.len().min(7);
            all.extend_from_slice(&flat[..n]);
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
