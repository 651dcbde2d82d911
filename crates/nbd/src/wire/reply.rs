//! Transmission-phase reply headers: simple, structured chunks and extended chunks.

use super::{
    be, check_len, WireError, EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Length of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

/// A simple reply: errno (0 = success) and cookie; READ data follows on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 or an errno.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Parses exactly [`SIMPLE_REPLY_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, SIMPLE_REPLY_LEN)?;
        let magic = u32::from_be_bytes(be(buf, 0));
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(WireError::Magic {
                expected: SIMPLE_REPLY_MAGIC.into(),
                got: magic.into(),
            });
        }
        Ok(SimpleReply {
            error: u32::from_be_bytes(be(buf, 4)),
            cookie: u64::from_be_bytes(be(buf, 8)),
        })
    }
}

/// Appends a simple reply header.
pub fn emit_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A structured or extended chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `chunk::FLAG_DONE` or 0.
    pub flags: u16,
    /// Chunk type (`chunk::*`).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Extended chunks only: the request's offset.
    pub offset: u64,
    /// Payload length that follows the header.
    pub length: u64,
}

impl ChunkHeader {
    /// Parses a structured (20-byte) or extended (32-byte) chunk header.
    pub fn parse(buf: &[u8], extended: bool) -> Result<Self, WireError> {
        let (len, magic) = match extended {
            false => (STRUCTURED_REPLY_LEN, STRUCTURED_REPLY_MAGIC),
            true => (EXTENDED_REPLY_LEN, EXTENDED_REPLY_MAGIC),
        };
        check_len(buf, len)?;
        let got = u32::from_be_bytes(be(buf, 0));
        if got != magic {
            return Err(WireError::Magic {
                expected: magic.into(),
                got: got.into(),
            });
        }
        let (offset, length) = match extended {
            false => (0, u32::from_be_bytes(be(buf, 16)).into()),
            true => (
                u64::from_be_bytes(be(buf, 16)),
                u64::from_be_bytes(be(buf, 24)),
            ),
        };
        Ok(ChunkHeader {
            flags: u16::from_be_bytes(be(buf, 4)),
            kind: u16::from_be_bytes(be(buf, 6)),
            cookie: u64::from_be_bytes(be(buf, 8)),
            offset,
            length,
        })
    }
}

/// Appends a structured (or, with `extended`, extended) chunk header. A structured header's
/// length is 32 bits: callers keep payloads within the negotiated maximum, far below 4 GiB.
pub fn emit_chunk_header(out: &mut Vec<u8>, extended: bool, h: &ChunkHeader) {
    let magic = if extended {
        EXTENDED_REPLY_MAGIC
    } else {
        STRUCTURED_REPLY_MAGIC
    };
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&h.flags.to_be_bytes());
    out.extend_from_slice(&h.kind.to_be_bytes());
    out.extend_from_slice(&h.cookie.to_be_bytes());
    if extended {
        out.extend_from_slice(&h.offset.to_be_bytes());
        out.extend_from_slice(&h.length.to_be_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(h.length).unwrap_or(u32::MAX).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::chunk;

    #[test]
    fn simple_reply_round_trip() {
        let mut out = Vec::new();
        emit_simple_reply(&mut out, 22, 0xdead_beef_0000_0001);
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]
        );
        let r = SimpleReply::parse(&out).unwrap();
        assert_eq!((r.error, r.cookie), (22, 0xdead_beef_0000_0001));
    }

    #[test]
    fn chunk_headers_in_both_forms() {
        let h = ChunkHeader {
            flags: chunk::FLAG_DONE,
            kind: chunk::OFFSET_DATA,
            cookie: 9,
            offset: 4096,
            length: 8 + 512,
        };
        for extended in [false, true] {
            let mut out = Vec::new();
            emit_chunk_header(&mut out, extended, &h);
            let len = if extended {
                EXTENDED_REPLY_LEN
            } else {
                STRUCTURED_REPLY_LEN
            };
            assert_eq!(out.len(), len);
            let back = ChunkHeader::parse(&out, extended).unwrap();
            assert_eq!(back.length, h.length);
            assert_eq!(back.offset, if extended { 4096 } else { 0 });
        }
    }
}
