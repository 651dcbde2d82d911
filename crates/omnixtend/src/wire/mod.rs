//! TLoE wire formats: zero-copy views plus small owned reprs (the smoltcp `wire/` pattern).
//!
//! Layout of a frame (omnixtend.md §1): Ethernet header (14 bytes), TLoE header (one 64-bit
//! word), TileLink messages made of 64-bit flits with optional all-zero padding words, and the
//! frame mask (the last 8 bytes). Every word is big-endian on the wire.
//!
//! Panic contract: once a view's `new_checked` succeeds, no accessor panics; parsing a message
//! from a checked frame returns an error instead of reading past the end; emitting into a
//! buffer of at least `buffer_len` bytes never panics. Nothing here trusts a length or an index
//! taken from the wire.

pub mod data;
pub mod ethernet;
pub mod tilelink;
pub mod tloe;
#[cfg(test)]
mod vectors;

pub use data::LaneOrder;
pub use ethernet::{
    EthernetFrame, EthernetRepr, MacAddr, ETHERNET_HEADER_LEN, ETHERTYPE_OMNIXTEND,
};
pub use tilelink::{Channel, Layout, Message, MessageHeader, MessageRepr, Payload};
pub use tloe::{ExternalData, Frame, FrameBuilder, MessageType, Seq, TloeHeader};

/// Bytes in one flit, the TileLink beat and credit unit.
pub const FLIT: usize = 8;

/// Why a frame or a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the smallest valid frame or message.
    #[error("Frame is truncated")]
    Truncated,
    /// The TLoE part of the frame is not a whole number of 8-byte words.
    #[error("Frame is not a whole number of flits")]
    NotFlitAligned,
    /// The EtherType is not 0xAAAA.
    #[error("EtherType {0:#06x} is not OmniXtend")]
    EtherType(u16),
    /// The TLoE message type is not Normal, ACK_only, Open or Close.
    #[error("Unknown TLoE message type {0}")]
    MessageType(u8),
    /// A message header names channel 6 or 7, or a channel/opcode pair that does not exist.
    #[error("Unknown TileLink message (channel {chan}, opcode {opcode})")]
    UnknownMessage {
        /// Channel field.
        chan: u8,
        /// Opcode field.
        opcode: u8,
    },
    /// A message runs past the end of the frame, or overlaps the next message.
    #[error("TileLink message overruns its frame")]
    Overrun,
    /// The frame mask marks a message start on a padding word or inside another message.
    #[error("Frame mask does not match the messages")]
    BadMask,
    /// The frame does not fit the buffer or the frame size limit.
    #[error("Frame does not fit")]
    NoRoom,
}

/// Result of wire operations.
pub type Result<T> = core::result::Result<T, WireError>;

/// Reads the big-endian 64-bit word at `off`; `None` past the end.
pub(crate) fn read_u64(buf: &[u8], off: usize) -> Option<u64> {
    let bytes = buf.get(off..off.checked_add(FLIT)?)?;
    let mut word = [0u8; FLIT];
    word.copy_from_slice(bytes);
    Some(u64::from_be_bytes(word))
}

/// Writes `value` big-endian at `off`; `Err(NoRoom)` past the end.
pub(crate) fn write_u64(buf: &mut [u8], off: usize, value: u64) -> Result<()> {
    let end = off.checked_add(FLIT).ok_or(WireError::NoRoom)?;
    let dst = buf.get_mut(off..end).ok_or(WireError::NoRoom)?;
    dst.copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Extracts `width` bits of `word` starting at bit `lo`.
#[allow(clippy::cast_possible_truncation)] // masked to at most 32 bits first
pub(crate) fn bits(word: u64, lo: u32, width: u32) -> u32 {
    ((word >> lo) & ((1u64 << width) - 1)) as u32
}

/// Places the low `width` bits of `value` at bit `lo`.
pub(crate) fn field(value: u32, lo: u32, width: u32) -> u64 {
    (u64::from(value) & ((1u64 << width) - 1)) << lo
}
