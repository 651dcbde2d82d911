//! Option haggling messages: the client's option header and the server's option replies.

use super::{be, check_len, WireError, IHAVEOPT, OPTION_REPLY_MAGIC};

/// Length of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;

/// The header of an option the client sends; `length` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number (`opt::*`).
    pub option: u32,
    /// Data length.
    pub length: u32,
}

impl OptionHeader {
    /// Parses exactly [`OPTION_HEADER_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, OPTION_HEADER_LEN)?;
        let magic = u64::from_be_bytes(be(buf, 0));
        if magic != IHAVEOPT {
            return Err(WireError::Magic {
                expected: IHAVEOPT,
                got: magic,
            });
        }
        Ok(OptionHeader {
            option: u32::from_be_bytes(be(buf, 8)),
            length: u32::from_be_bytes(be(buf, 12)),
        })
    }

    /// Appends the header (for clients and tests).
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// An option reply header; `length` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option being answered.
    pub option: u32,
    /// Reply type (`rep::*`).
    pub kind: u32,
    /// Data length.
    pub length: u32,
}

impl OptionReply {
    /// Length of the header.
    pub const LEN: usize = 20;

    /// Appends a reply header and its data. Option data is bounded by the server's own
    /// messages (names and descriptions ≤ 4 KiB), so the length always fits.
    pub fn emit(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
        out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// Parses exactly [`OptionReply::LEN`] bytes (for clients and tests).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        let magic = u64::from_be_bytes(be(buf, 0));
        if magic != OPTION_REPLY_MAGIC {
            return Err(WireError::Magic {
                expected: OPTION_REPLY_MAGIC,
                got: magic,
            });
        }
        Ok(OptionReply {
            option: u32::from_be_bytes(be(buf, 8)),
            kind: u32::from_be_bytes(be(buf, 12)),
            length: u32::from_be_bytes(be(buf, 16)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{opt, rep};

    #[test]
    fn option_header_round_trip() {
        let h = OptionHeader {
            option: opt::GO,
            length: 10,
        };
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(&out[..8], b"IHAVEOPT");
        assert_eq!(OptionHeader::parse(&out).unwrap(), h);
        out[0] = b'X';
        assert!(OptionHeader::parse(&out).is_err());
    }

    #[test]
    fn option_reply_round_trip() {
        let mut out = Vec::new();
        OptionReply::emit(&mut out, opt::LIST, rep::SERVER, b"abc");
        let r = OptionReply::parse(&out[..OptionReply::LEN]).unwrap();
        assert_eq!(
            r,
            OptionReply {
                option: opt::LIST,
                kind: rep::SERVER,
                length: 3
            }
        );
        assert_eq!(&out[OptionReply::LEN..], b"abc");
        assert_eq!(rep::ERR_UNSUP, 0x8000_0001);
    }
}
