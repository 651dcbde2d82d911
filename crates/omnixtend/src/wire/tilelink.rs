//! TileLink message headers for channels A–E, their layouts and flit counts (§1.3–1.4, §2).

use super::{bits, field, read_u64, write_u64, Result, WireError, FLIT};

/// A TileLink channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Requests from a master (Get, Put, atomics, Intent, Acquire).
    A = 1,
    /// Requests to a master (Probe and forwarded accesses).
    B = 2,
    /// Responses from a master (ProbeAck, Release).
    C = 3,
    /// Responses to a master (AccessAck, AccessAckData, Grant).
    D = 4,
    /// GrantAck.
    E = 5,
}

impl Channel {
    /// All channels in wire order.
    pub const ALL: [Channel; 5] = [Channel::A, Channel::B, Channel::C, Channel::D, Channel::E];

    /// The channel for a wire value 1..=5.
    pub fn from_bits(v: u8) -> Option<Channel> {
        Channel::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    /// 0 for A through 4 for E (an array index).
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The wire value 1..=5.
    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// Channel A/B opcodes.
pub mod op_a {
    /// PutFullData.
    pub const PUT_FULL: u8 = 0;
    /// PutPartialData.
    pub const PUT_PARTIAL: u8 = 1;
    /// ArithmeticData.
    pub const ARITHMETIC: u8 = 2;
    /// LogicalData.
    pub const LOGICAL: u8 = 3;
    /// Get.
    pub const GET: u8 = 4;
    /// Intent.
    pub const INTENT: u8 = 5;
    /// AcquireBlock (A) / ProbeBlock (B).
    pub const ACQUIRE_BLOCK: u8 = 6;
    /// AcquirePerm (A) / ProbePerm (B).
    pub const ACQUIRE_PERM: u8 = 7;
}

/// Channel D opcodes (channel C uses the same numbers for its acks).
pub mod op_d {
    /// AccessAck.
    pub const ACCESS_ACK: u8 = 0;
    /// AccessAckData.
    pub const ACCESS_ACK_DATA: u8 = 1;
    /// HintAck.
    pub const HINT_ACK: u8 = 2;
    /// Grant.
    pub const GRANT: u8 = 4;
    /// GrantData.
    pub const GRANT_DATA: u8 = 5;
    /// ReleaseAck.
    pub const RELEASE_ACK: u8 = 6;
}

/// Largest size field the header can carry: 2^15 bytes.
pub const MAX_SIZE: u8 = 15;

/// The header word of a message (for channel E, `source` holds the sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Channel.
    pub chan: Channel,
    /// Opcode (0 for channel E).
    pub opcode: u8,
    /// Param (4 bits).
    pub param: u8,
    /// log2 of the transfer size in bytes.
    pub size: u8,
    /// Ordering domain.
    pub domain: u8,
    /// d_denied.
    pub denied: bool,
    /// *_corrupt.
    pub corrupt: bool,
    /// Source ID (26 bits), or the sink for channel E.
    pub source: u32,
}

impl MessageHeader {
    /// Largest source ID.
    pub const MAX_SOURCE: u32 = (1 << 26) - 1;

    /// A header with no param, domain or error bits.
    pub fn new(chan: Channel, opcode: u8, size: u8, source: u32) -> MessageHeader {
        MessageHeader {
            chan,
            opcode,
            param: 0,
            size,
            domain: 0,
            denied: false,
            corrupt: false,
            source,
        }
    }

    /// Decodes a header word; channel 0 (padding), 6 and 7 are errors.
    #[allow(clippy::cast_possible_truncation)] // every field is masked to its width first
    pub fn from_word(w: u64) -> Result<MessageHeader> {
        let chan_bits = bits(w, 60, 3) as u8;
        let opcode = bits(w, 57, 3) as u8;
        let chan = Channel::from_bits(chan_bits).ok_or(WireError::UnknownMessage {
            chan: chan_bits,
            opcode,
        })?;
        Ok(MessageHeader {
            chan,
            opcode: if chan == Channel::E { 0 } else { opcode },
            param: bits(w, 52, 4) as u8,
            size: bits(w, 48, 4) as u8,
            domain: bits(w, 40, 8) as u8,
            denied: bits(w, 39, 1) == 1,
            corrupt: bits(w, 38, 1) == 1,
            source: bits(w, 0, 26),
        })
    }

    /// Encodes the header word; reserved bits are zero.
    pub fn to_word(&self) -> u64 {
        field(u32::from(self.chan.bits()), 60, 3)
            | field(u32::from(self.opcode), 57, 3)
            | field(u32::from(self.param), 52, 4)
            | field(u32::from(self.size), 48, 4)
            | field(u32::from(self.domain), 40, 8)
            | field(u32::from(self.denied), 39, 1)
            | field(u32::from(self.corrupt), 38, 1)
            | field(self.source, 0, 26)
    }

    /// The layout this channel/opcode pair has on the wire.
    pub fn layout(&self) -> Result<Layout> {
        Layout::of(self.chan, self.opcode)
    }

    /// Flits of the whole message.
    pub fn flits(&self) -> Result<usize> {
        Ok(self.layout()?.flits(self.size))
    }
}

/// What follows the header word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Nothing.
    None,
    /// ceil(2^size / 8) data flits.
    Data,
    /// Groups of one mask word and up to eight data words (PutPartialData).
    Partial,
}

/// The shape of a message on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// A 64-bit address word follows the header (channels A, B, C).
    pub address: bool,
    /// A sink word follows the header (D Grant, GrantData).
    pub sink: bool,
    /// The payload.
    pub payload: Payload,
}

impl Layout {
    /// The layout of a channel/opcode pair; reserved opcodes are errors.
    pub fn of(chan: Channel, opcode: u8) -> Result<Layout> {
        let unknown = WireError::UnknownMessage {
            chan: chan.bits(),
            opcode,
        };
        let (address, sink, payload) = match chan {
            Channel::A | Channel::B => match opcode {
                0 | 2 | 3 => (true, false, Payload::Data),
                1 => (true, false, Payload::Partial),
                _ => (true, false, Payload::None),
            },
            Channel::C => match opcode {
                0 | 2 | 4 | 6 => (true, false, Payload::None),
                1 | 5 | 7 => (true, false, Payload::Data),
                _ => return Err(unknown),
            },
            Channel::D => match opcode {
                0 | 2 | 6 => (false, false, Payload::None),
                1 => (false, false, Payload::Data),
                4 => (false, true, Payload::None),
                5 => (false, true, Payload::Data),
                _ => return Err(unknown),
            },
            Channel::E => (false, false, Payload::None),
        };
        Ok(Layout {
            address,
            sink,
            payload,
        })
    }

    /// Flits before the payload (header, address or sink).
    pub fn head_flits(&self) -> usize {
        1 + usize::from(self.address) + usize::from(self.sink)
    }

    /// Payload flits for a size field.
    pub fn payload_flits(&self, size: u8) -> usize {
        match self.payload {
            Payload::None => 0,
            Payload::Data => data_flits(size),
            Payload::Partial => partial_flits(size),
        }
    }

    /// Flits of the whole message.
    pub fn flits(&self, size: u8) -> usize {
        self.head_flits() + self.payload_flits(size)
    }
}

/// Data flits of a transfer of 2^size bytes: D = ceil(2^size / 8), at least 1.
pub fn data_flits(size: u8) -> usize {
    (1usize << size.min(MAX_SIZE)).div_ceil(FLIT)
}

/// Payload flits of a PutPartialData: one mask word per 64-byte group plus the data.
pub fn partial_flits(size: u8) -> usize {
    let d = data_flits(size);
    d + d.div_ceil(8)
}

/// A parsed message: a view into the frame's flits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The header word.
    pub header: MessageHeader,
    /// The address (channels A–C).
    pub address: Option<u64>,
    /// The sink (D Grant/GrantData).
    pub sink: Option<u32>,
    /// Payload bytes in wire order (data, or masks and data).
    pub payload: &'a [u8],
    flits: usize,
}

impl<'a> Message<'a> {
    /// Parses the message starting at the first flit of `flits`.
    pub fn parse(flits: &'a [u8]) -> Result<Message<'a>> {
        let header = MessageHeader::from_word(read_u64(flits, 0).ok_or(WireError::Truncated)?)?;
        let layout = header.layout()?;
        let total = layout.flits(header.size);
        let bytes = flits.get(..total * FLIT).ok_or(WireError::Overrun)?;
        let word = |i: usize| read_u64(bytes, i * FLIT).ok_or(WireError::Overrun);
        let address = if layout.address { Some(word(1)?) } else { None };
        #[allow(clippy::cast_possible_truncation)] // masked to 26 bits
        let sink = if layout.sink {
            Some((word(1)? & u64::from(MessageHeader::MAX_SOURCE)) as u32)
        } else {
            None
        };
        let payload = &bytes[layout.head_flits() * FLIT..];
        Ok(Message {
            header,
            address,
            sink,
            payload,
            flits: total,
        })
    }

    /// Flits this message occupies.
    pub fn flits(&self) -> usize {
        self.flits
    }

    /// The owned header part of this message.
    pub fn repr(&self) -> MessageRepr {
        MessageRepr {
            header: self.header,
            address: self.address.unwrap_or(0),
            sink: self.sink.unwrap_or(0),
        }
    }

    /// The (mask, data) groups of a PutPartialData payload; one group for other payloads, with
    /// an all-ones mask.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        let partial = self
            .header
            .layout()
            .map(|l| l.payload == Payload::Partial)
            .unwrap_or(false);
        let payload = self.payload;
        let step = if partial {
            9 * FLIT
        } else {
            payload.len().max(1)
        };
        payload.chunks(step).map(move |chunk| {
            if partial {
                let mask = read_u64(chunk, 0).unwrap_or(0);
                (mask, chunk.get(FLIT..).unwrap_or(&[]))
            } else {
                (u64::MAX, chunk)
            }
        })
    }
}

/// The owned header part of a message, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRepr {
    /// The header word.
    pub header: MessageHeader,
    /// The address (ignored unless the layout has one).
    pub address: u64,
    /// The sink (ignored unless the layout has one).
    pub sink: u32,
}

impl MessageRepr {
    /// The layout; a [`MessageRepr`] built by this crate always has a valid one.
    fn layout(&self) -> Layout {
        self.header.layout().unwrap_or(Layout {
            address: false,
            sink: false,
            payload: Payload::None,
        })
    }

    /// Flits of the whole message.
    pub fn flits(&self) -> usize {
        self.layout().flits(self.header.size)
    }

    /// Bytes of payload the caller must provide.
    pub fn payload_len(&self) -> usize {
        self.layout().payload_flits(self.header.size) * FLIT
    }

    /// Bytes of the whole message.
    pub fn buffer_len(&self) -> usize {
        self.flits() * FLIT
    }

    /// Writes the header (and address or sink word) and returns where the payload starts.
    pub fn emit_header(&self, buf: &mut [u8]) -> Result<usize> {
        let layout = self.header.layout()?;
        write_u64(buf, 0, self.header.to_word())?;
        if layout.address {
            write_u64(buf, FLIT, self.address)?;
        }
        if layout.sink {
            write_u64(buf, FLIT, u64::from(self.sink & MessageHeader::MAX_SOURCE))?;
        }
        Ok(layout.head_flits() * FLIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flit_counts_match_the_table() {
        let f = |c, o, s| Layout::of(c, o).unwrap().flits(s);
        assert_eq!(f(Channel::A, op_a::GET, 10), 2);
        assert_eq!(f(Channel::A, op_a::INTENT, 6), 2);
        assert_eq!(f(Channel::A, op_a::PUT_FULL, 6), 10);
        assert_eq!(f(Channel::A, op_a::PUT_FULL, 10), 130);
        assert_eq!(f(Channel::A, op_a::PUT_FULL, 0), 3);
        assert_eq!(f(Channel::A, op_a::ARITHMETIC, 3), 3);
        assert_eq!(f(Channel::A, op_a::PUT_PARTIAL, 3), 4);
        assert_eq!(f(Channel::A, op_a::PUT_PARTIAL, 6), 11);
        assert_eq!(f(Channel::A, op_a::PUT_PARTIAL, 10), 2 + 16 + 128);
        assert_eq!(f(Channel::C, 1, 6), 10);
        assert_eq!(f(Channel::C, 0, 6), 2);
        assert_eq!(f(Channel::D, op_d::ACCESS_ACK, 6), 1);
        assert_eq!(f(Channel::D, op_d::ACCESS_ACK_DATA, 6), 9);
        assert_eq!(f(Channel::D, op_d::ACCESS_ACK_DATA, 2), 2);
        assert_eq!(f(Channel::D, op_d::GRANT, 6), 2);
        assert_eq!(f(Channel::D, op_d::GRANT_DATA, 6), 10);
        assert_eq!(f(Channel::E, 0, 6), 1);
        assert_eq!(f(Channel::A, op_a::PUT_FULL, 15), 2 + 4096);
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        assert!(Layout::of(Channel::C, 3).is_err());
        assert!(Layout::of(Channel::D, 3).is_err());
        assert!(Layout::of(Channel::D, 7).is_err());
        assert!(MessageHeader::from_word(0).is_err());
        assert!(MessageHeader::from_word(0x6000_0000_0000_0000).is_err());
    }

    #[test]
    fn header_round_trip() {
        let h = MessageHeader {
            chan: Channel::D,
            opcode: op_d::ACCESS_ACK_DATA,
            param: 0xf,
            size: 0xa,
            domain: 0x5a,
            denied: true,
            corrupt: true,
            source: MessageHeader::MAX_SOURCE,
        };
        assert_eq!(MessageHeader::from_word(h.to_word()).unwrap(), h);
    }

    #[test]
    fn truncated_message_is_an_error() {
        let word = MessageHeader::new(Channel::A, op_a::PUT_FULL, 6, 1)
            .to_word()
            .to_be_bytes();
        let mut buf = word.to_vec();
        buf.extend_from_slice(&[0; 8 * 8]);
        assert_eq!(Message::parse(&buf), Err(WireError::Overrun));
        buf.extend_from_slice(&[0; 8]);
        assert_eq!(Message::parse(&buf).unwrap().flits(), 10);
    }

    #[test]
    fn partial_groups() {
        let repr = MessageRepr {
            header: MessageHeader::new(Channel::A, op_a::PUT_PARTIAL, 7, 9),
            address: 0x80,
            sink: 0,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        let at = repr.emit_header(&mut buf).unwrap();
        buf[at + 7] = 0x01; // first mask: byte 0
        buf[at + 9 * 8 + 7] = 0x80; // second mask: byte 7
        let msg = Message::parse(&buf).unwrap();
        let groups: Vec<_> = msg.groups().map(|(m, d)| (m, d.len())).collect();
        assert_eq!(groups, vec![(1, 64), (0x80, 64)]);
    }
}
