//! Transmission-phase request headers: 28-byte simple and 32-byte extended.

use super::{be, check_len, WireError, EXTENDED_REQUEST_MAGIC, REQUEST_MAGIC};

/// Length of a simple request header.
pub const SIMPLE_REQUEST_LEN: usize = 28;
/// Length of an extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;

/// A command number (`NBD_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read.
    Read,
    /// Write (payload follows the header).
    Write,
    /// Soft disconnect (no reply).
    Disc,
    /// Flush.
    Flush,
    /// Trim / discard.
    Trim,
    /// Prefetch.
    Cache,
    /// Write zeroes.
    WriteZeroes,
    /// Query metadata contexts.
    BlockStatus,
    /// Anything else (including `RESIZE`, which this server does not support).
    Unknown(u16),
}

impl Command {
    /// Decodes a command number.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// Encodes the command number.
    pub fn to_u16(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Unknown(v) => v,
        }
    }

    /// A short name for logs and statistics.
    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "read",
            Command::Write => "write",
            Command::Disc => "disc",
            Command::Flush => "flush",
            Command::Trim => "trim",
            Command::Cache => "cache",
            Command::WriteZeroes => "write_zeroes",
            Command::BlockStatus => "block_status",
            Command::Unknown(_) => "unknown",
        }
    }
}

/// A request header, simple or extended. `length` is 64-bit in both (a simple header's
/// 32-bit field widens losslessly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command.
    pub command: Command,
    /// Opaque cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes (payload length for writes).
    pub length: u64,
}

impl RequestHeader {
    /// Parses a header of exactly [`SIMPLE_REQUEST_LEN`] or, with `extended`,
    /// [`EXTENDED_REQUEST_LEN`] bytes.
    pub fn parse(buf: &[u8], extended: bool) -> Result<Self, WireError> {
        let (len, magic) = match extended {
            false => (SIMPLE_REQUEST_LEN, REQUEST_MAGIC),
            true => (EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC),
        };
        check_len(buf, len)?;
        let got = u32::from_be_bytes(be(buf, 0));
        if got != magic {
            return Err(WireError::Magic {
                expected: magic.into(),
                got: got.into(),
            });
        }
        let length = match extended {
            false => u32::from_be_bytes(be(buf, 24)).into(),
            true => u64::from_be_bytes(be(buf, 24)),
        };
        Ok(RequestHeader {
            flags: u16::from_be_bytes(be(buf, 4)),
            command: Command::from_u16(u16::from_be_bytes(be(buf, 6))),
            cookie: u64::from_be_bytes(be(buf, 8)),
            offset: u64::from_be_bytes(be(buf, 16)),
            length,
        })
    }

    /// Appends the header in simple or extended form (clients and tests use this). A simple
    /// header carries only the low 32 bits of `length`.
    pub fn emit(&self, out: &mut Vec<u8>, extended: bool) {
        let magic = if extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        out.extend_from_slice(&magic.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.command.to_u16().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        if extended {
            out.extend_from_slice(&self.length.to_be_bytes());
        } else {
            let low = u32::try_from(self.length & u64::from(u32::MAX)).unwrap_or(u32::MAX);
            out.extend_from_slice(&low.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel-style WRITE: cookie = (counter << 32) | tag, FUA in the flags half-word.
    const SIMPLE: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,
    ];

    #[test]
    fn parse_and_emit_a_simple_header() {
        let h = RequestHeader::parse(&SIMPLE, false).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                flags: 1,
                command: Command::Write,
                cookie: (7 << 32) | 42,
                offset: 0x10_0000,
                length: 4096
            }
        );
        let mut out = Vec::new();
        h.emit(&mut out, false);
        assert_eq!(out, SIMPLE);
    }

    #[test]
    fn extended_headers_carry_64_bit_lengths() {
        let h = RequestHeader {
            flags: 0,
            command: Command::WriteZeroes,
            cookie: 1,
            offset: 0,
            length: 5 << 32,
        };
        let mut out = Vec::new();
        h.emit(&mut out, true);
        assert_eq!(out.len(), EXTENDED_REQUEST_LEN);
        assert_eq!(RequestHeader::parse(&out, true).unwrap(), h);
        assert!(matches!(
            RequestHeader::parse(&out, false),
            Err(WireError::Length { .. })
        ));
    }

    #[test]
    fn bad_magic_and_unknown_commands() {
        let mut bad = SIMPLE;
        bad[0] = 0;
        assert!(matches!(
            RequestHeader::parse(&bad, false),
            Err(WireError::Magic { .. })
        ));
        let mut unknown = SIMPLE;
        unknown[7] = 99;
        assert_eq!(
            RequestHeader::parse(&unknown, false).unwrap().command,
            Command::Unknown(99)
        );
        for v in 0..=8 {
            assert_eq!(Command::from_u16(v).to_u16(), v);
        }
    }
}
