//! The NBD wire format: constants from the specification (`doc/proto.md` and its
//! `extension-ext-header` branch — never from C headers, which disagree in places), request
//! headers, reply headers and option haggling messages.
//!
//! Parsers take exactly-sized byte slices and never panic: a wrong length or magic is an
//! error. Emitters append to a `Vec<u8>` so a reply and its payload can be batched.

mod option;
mod reply;
mod request;

pub use option::{OptionHeader, OptionReply, OPTION_HEADER_LEN};
pub use reply::{
    emit_chunk_header, emit_simple_reply, ChunkHeader, SimpleReply, EXTENDED_REPLY_LEN,
    SIMPLE_REPLY_LEN, STRUCTURED_REPLY_LEN,
};
pub use request::{Command, RequestHeader, EXTENDED_REQUEST_LEN, SIMPLE_REQUEST_LEN};

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Simple (28-byte) request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended (32-byte) request magic.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flags (server → client, 16 bits).
pub mod handshake {
    /// Fixed newstyle negotiation.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can omit the 124 zero bytes after `EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
    /// Client flag: fixed newstyle.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client flag: omit the zero padding.
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Option numbers (`NBD_OPT_*`).
pub mod opt {
    /// Choose an export the old way (no error path).
    pub const EXPORT_NAME: u32 = 1;
    /// End negotiation without choosing an export.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Withdrawn.
    pub const PEEK_EXPORT: u32 = 4;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe and choose an export.
    pub const GO: u32 = 7;
    /// Negotiate structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Negotiate 32-byte extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    /// Success / end of a list.
    pub const ACK: u32 = 1;
    /// One export in a `LIST` reply.
    pub const SERVER: u32 = 2;
    /// One `NBD_INFO_*` item.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    /// Unknown or unsupported option.
    pub const ERR_UNSUP: u32 = ERR | 1;
    /// Refused by policy.
    pub const ERR_POLICY: u32 = ERR | 2;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = ERR | 3;
    /// Not available on this platform.
    pub const ERR_PLATFORM: u32 = ERR | 4;
    /// TLS required.
    pub const ERR_TLS_REQD: u32 = ERR | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR | 7;
    /// Block size negotiation required.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR | 8;
    /// Option payload too large.
    pub const ERR_TOO_BIG: u32 = ERR | 9;
    /// Extended headers required.
    pub const ERR_EXT_HEADER_REQD: u32 = ERR | 10;
}

/// `NBD_INFO_*` item types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (`NBD_FLAG_*`, 16 bits).
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `CMD_FLUSH` supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `CMD_FLAG_FUA` supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational media hint.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `CMD_TRIM` supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `CMD_WRITE_ZEROES` (and `NO_HOLE`) supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `CMD_FLAG_DF` honoured.
    pub const SEND_DF: u16 = 1 << 7;
    /// Multiple connections are consistent.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `CMD_CACHE` supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `CMD_FLAG_FAST_ZERO` supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (`NBD_CMD_FLAG_*`, 16 bits).
pub mod cflags {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES`: do not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ`: do not fragment the reply.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES`: fail fast unless zeroing is fast.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the length field is a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured/extended reply chunk types and flags.
pub mod chunk {
    /// Flag: the final chunk of a reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// No payload.
    pub const NONE: u16 = 0;
    /// u64 offset + data.
    pub const OFFSET_DATA: u16 = 1;
    /// u64 offset + u32 hole size.
    pub const OFFSET_HOLE: u16 = 2;
    /// u32 context id + (u32 length, u32 flags) descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// u32 context id + u32 count + (u64 length, u64 flags) descriptors.
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// u32 error + u16 message length + message.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// As `ERROR`, plus a u64 offset.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// `base:allocation` extent flags.
pub mod state {
    /// Unallocated.
    pub const HOLE: u32 = 1 << 0;
    /// Reads as zero.
    pub const ZERO: u32 = 1 << 1;
}

/// The only metadata context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer has the wrong length for the message.
    #[error("Message is {got} bytes, expected {expected}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The magic number is wrong: the stream is out of sync.
    #[error("Bad magic {got:#x}, expected {expected:#x}")]
    Magic {
        /// Expected magic.
        expected: u64,
        /// Received magic.
        got: u64,
    },
}

/// Reads a big-endian integer at `at` from a slice whose length the caller has checked.
fn be<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn check_len(buf: &[u8], expected: usize) -> Result<(), WireError> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(WireError::Length {
            expected,
            got: buf.len(),
        })
    }
}
