//! The TLoE frame: header word, flits, frame mask; 22-bit sequence numbers; a frame builder.

use super::ethernet::{EthernetFrame, EthernetRepr, ETHERNET_HEADER_LEN, ETHERTYPE_OMNIXTEND};
use super::tilelink::{Message, MessageRepr};
use super::{bits, field, read_u64, write_u64, Result, WireError, FLIT};

/// Bytes of Ethernet header plus TLoE header: where flit 0 starts.
pub const FLITS_OFFSET: usize = ETHERNET_HEADER_LEN + FLIT;
/// Smallest frame that can be parsed: Ethernet header, TLoE header and mask.
pub const MIN_PARSE_LEN: usize = FLITS_OFFSET + FLIT;
/// A message may only start in the first 64 flits (the mask has 64 bits).
pub const MAX_START_FLIT: usize = 64;

/// A 22-bit TLoE sequence number; arithmetic wraps modulo 2^22.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(u32);

impl Seq {
    /// Number of distinct sequence numbers.
    pub const MODULUS: u32 = 1 << 22;
    /// The largest sequence number (also the initial "nothing received" value).
    pub const MAX: Seq = Seq(Self::MODULUS - 1);
    /// Half the space: the window bound and the duplicate test of §3.1.
    pub const HALF: u32 = 1 << 21;

    /// Wraps `v` into the 22-bit space.
    pub const fn new(v: u32) -> Seq {
        Seq(v & (Self::MODULUS - 1))
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// `self + n` modulo 2^22.
    pub const fn add(self, n: u32) -> Seq {
        Seq::new(self.0.wrapping_add(n))
    }

    /// The next sequence number.
    pub const fn next(self) -> Seq {
        self.add(1)
    }

    /// The previous sequence number.
    pub const fn prev(self) -> Seq {
        Seq::new(self.0.wrapping_sub(1))
    }

    /// `(self - other) mod 2^22`: how far `self` is ahead of `other`.
    pub const fn since(self, other: Seq) -> u32 {
        self.0.wrapping_sub(other.0) & (Self::MODULUS - 1)
    }
}

/// The TLoE message type (bits 60:57, the proposed OmniXtend 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Carries TileLink messages (possibly none) and consumes a sequence number.
    Normal = 0,
    /// Acknowledges only; carries the next unused sequence number without consuming it.
    AckOnly = 1,
    /// Opens a connection; carries sequence number 0.
    Open = 2,
    /// Closes a connection.
    Close = 3,
}

impl MessageType {
    fn from_bits(v: u32) -> Result<MessageType> {
        Ok(match v {
            0 => MessageType::Normal,
            1 => MessageType::AckOnly,
            2 => MessageType::Open,
            3 => MessageType::Close,
            #[allow(clippy::cast_possible_truncation)] // 4 bits
            other => return Err(WireError::MessageType(other as u8)),
        })
    }
}

/// The TLoE header word (omnixtend.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TloeHeader {
    /// Virtual channel (always 0 in practice).
    pub vc: u8,
    /// Message type.
    pub msg_type: MessageType,
    /// Sequence number of this frame.
    pub seq: Seq,
    /// Last sequence number received in order.
    pub seq_ack: Seq,
    /// true = ACK, false = NAK.
    pub ack: bool,
    /// Channel the credit refers to: 0 = none, 1..=5 = A..E.
    pub chan: u8,
    /// log2 of the credits granted.
    pub credit: u8,
}

impl TloeHeader {
    /// Decodes the header word.
    #[allow(clippy::cast_possible_truncation)] // every field is masked to its width first
    pub fn from_word(w: u64) -> Result<TloeHeader> {
        Ok(TloeHeader {
            vc: bits(w, 61, 3) as u8,
            msg_type: MessageType::from_bits(bits(w, 57, 4))?,
            seq: Seq::new(bits(w, 32, 22)),
            seq_ack: Seq::new(bits(w, 10, 22)),
            ack: bits(w, 9, 1) == 1,
            chan: bits(w, 5, 3) as u8,
            credit: bits(w, 0, 5) as u8,
        })
    }

    /// Encodes the header word; reserved bits are zero.
    pub fn to_word(&self) -> u64 {
        field(u32::from(self.vc), 61, 3)
            | field(self.msg_type as u32, 57, 4)
            | field(self.seq.get(), 32, 22)
            | field(self.seq_ack.get(), 10, 22)
            | field(u32::from(self.ack), 9, 1)
            | field(u32::from(self.chan), 5, 3)
            | field(u32::from(self.credit), 0, 5)
    }

    /// A header with no credit and the given sequence fields.
    pub fn new(msg_type: MessageType, seq: Seq, seq_ack: Seq, ack: bool) -> TloeHeader {
        TloeHeader {
            vc: 0,
            msg_type,
            seq,
            seq_ack,
            ack,
            chan: 0,
            credit: 0,
        }
    }
}

/// A zero-copy view of a whole OmniXtend Ethernet frame (FCS excluded).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checks; accessors may then panic.
    pub fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps a buffer after checking the length, the flit alignment, the EtherType and the
    /// message type. The messages are checked by [`Frame::messages`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Frame::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// The checks `new_checked` makes.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_PARSE_LEN {
            return Err(WireError::Truncated);
        }
        if (len - ETHERNET_HEADER_LEN) % FLIT != 0 {
            return Err(WireError::NotFlitAligned);
        }
        let eth = EthernetFrame::new_unchecked(self.buffer.as_ref());
        if eth.ethertype() != ETHERTYPE_OMNIXTEND {
            return Err(WireError::EtherType(eth.ethertype()));
        }
        self.header().map(|_| ())
    }

    /// The Ethernet header.
    pub fn ethernet(&self) -> EthernetRepr {
        EthernetRepr::parse(&EthernetFrame::new_unchecked(self.buffer.as_ref()))
    }

    /// The TLoE header.
    pub fn header(&self) -> Result<TloeHeader> {
        TloeHeader::from_word(
            read_u64(self.buffer.as_ref(), ETHERNET_HEADER_LEN).ok_or(WireError::Truncated)?,
        )
    }

    /// The flits between the TLoE header and the mask (messages and padding).
    pub fn flits(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(FLITS_OFFSET..b.len().saturating_sub(FLIT))
            .unwrap_or(&[])
    }

    /// Number of flits between header and mask.
    pub fn flit_count(&self) -> usize {
        self.flits().len() / FLIT
    }

    /// The frame mask: bit i set = a message starts at flit i.
    pub fn mask(&self) -> u64 {
        let b = self.buffer.as_ref();
        read_u64(b, b.len().saturating_sub(FLIT)).unwrap_or(0)
    }

    /// The TileLink messages, in order. Stops after the first error.
    pub fn messages(&self) -> Messages<'_> {
        Messages {
            flits: self.flits(),
            mask: self.mask(),
            pos: 0,
            failed: false,
        }
    }

    /// Checks every message; `Ok(n)` is how many there are.
    pub fn validate(&self) -> Result<usize> {
        let mut n = 0;
        for m in self.messages() {
            m?;
            n += 1;
        }
        Ok(n)
    }
}

impl<'a> Frame<&'a [u8]> {
    /// The messages, borrowing the underlying buffer rather than the view.
    pub fn into_messages(self) -> Messages<'a> {
        let mask = self.mask();
        let b = self.buffer;
        let flits = b
            .get(FLITS_OFFSET..b.len().saturating_sub(FLIT))
            .unwrap_or(&[]);
        Messages {
            flits,
            mask,
            pos: 0,
            failed: false,
        }
    }
}

/// Iterator over the messages of a frame.
#[derive(Debug)]
pub struct Messages<'a> {
    flits: &'a [u8],
    mask: u64,
    /// First flit not yet covered by a returned message.
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.mask == 0 {
            return None;
        }
        let start = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        let result = self.parse_at(start);
        self.failed = result.is_err();
        Some(result)
    }
}

impl<'a> Messages<'a> {
    fn parse_at(&mut self, start: usize) -> Result<Message<'a>> {
        if start < self.pos {
            return Err(WireError::Overrun);
        }
        let from = start * FLIT;
        let rest = self
            .flits
            .get(from..)
            .filter(|r| !r.is_empty())
            .ok_or(WireError::BadMask)?;
        let msg = Message::parse(rest)?;
        self.pos = start + msg.flits();
        Ok(msg)
    }
}

/// A message payload left out of a frame's buffer: `len` bytes named by `key` (for the
/// memory node, the bus address they are read from) belong at byte `at` of the buffer, so the
/// frame on the wire is the buffer with every such piece inserted in order. A transport then
/// sends the payload from where it lives (one iovec per piece) instead of from a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalData {
    /// Offset in the frame's buffer where the bytes are inserted.
    pub at: usize,
    /// The owner's name for the bytes.
    pub key: u64,
    /// How many bytes.
    pub len: usize,
}

/// Builds a frame in a caller-owned buffer: Ethernet and TLoE headers, messages, padding, mask.
#[derive(Debug)]
pub struct FrameBuilder<'a> {
    buf: &'a mut Vec<u8>,
    /// Payloads left out of `buf` ([`FrameBuilder::push_external`]), if the caller allows it.
    external: Option<&'a mut Vec<ExternalData>>,
    /// Their total length.
    external_len: usize,
    max_len: usize,
    mask: u64,
    flits: usize,
}

impl<'a> FrameBuilder<'a> {
    /// Starts a frame of at most `max_len` bytes (FCS excluded) in `buf` (cleared first).
    pub fn new(
        buf: &'a mut Vec<u8>,
        eth: &EthernetRepr,
        header: &TloeHeader,
        max_len: usize,
    ) -> Self {
        buf.clear();
        buf.resize(FLITS_OFFSET, 0);
        eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        buf[ETHERNET_HEADER_LEN..FLITS_OFFSET].copy_from_slice(&header.to_word().to_be_bytes());
        FrameBuilder {
            buf,
            external: None,
            external_len: 0,
            max_len: max_len.max(MIN_PARSE_LEN),
            mask: 0,
            flits: 0,
        }
    }

    /// [`FrameBuilder::new`], also allowing payloads kept out of `buf` and listed in
    /// `external` (cleared first): see [`FrameBuilder::push_external`].
    pub fn with_external(
        buf: &'a mut Vec<u8>,
        external: &'a mut Vec<ExternalData>,
        eth: &EthernetRepr,
        header: &TloeHeader,
        max_len: usize,
    ) -> Self {
        external.clear();
        let mut b = FrameBuilder::new(buf, eth, header, max_len);
        b.external = Some(external);
        b
    }

    /// Whether [`FrameBuilder::push_external`] is available.
    pub fn allows_external(&self) -> bool {
        self.external.is_some()
    }

    /// Flits a new message may still occupy (0 once no message may start).
    pub fn room(&self) -> usize {
        if self.flits >= MAX_START_FLIT {
            return 0;
        }
        ((self.max_len - MIN_PARSE_LEN) / FLIT).saturating_sub(self.flits)
    }

    /// Messages added so far.
    pub fn message_count(&self) -> u32 {
        self.mask.count_ones()
    }

    /// Flits used so far by messages.
    pub fn flits_used(&self) -> usize {
        self.flits
    }

    /// Replaces the TLoE header (e.g. to add a credit decided after the messages).
    pub fn set_header(&mut self, header: &TloeHeader) {
        self.buf[ETHERNET_HEADER_LEN..FLITS_OFFSET]
            .copy_from_slice(&header.to_word().to_be_bytes());
    }

    /// Appends a message; `fill` writes its payload (data, or masks and data) into a zeroed
    /// slice of exactly `msg.payload_len()` bytes. `Err(NoRoom)` leaves the frame unchanged.
    pub fn push(&mut self, msg: &MessageRepr, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        let flits = msg.flits();
        if flits > self.room() {
            return Err(WireError::NoRoom);
        }
        let at = self.buf.len();
        self.buf.resize(at + flits * FLIT, 0);
        let payload_at = msg.emit_header(&mut self.buf[at..])?;
        fill(&mut self.buf[at + payload_at..]);
        self.mask |= 1u64 << self.flits;
        self.flits += flits;
        Ok(())
    }

    /// Appends a message whose payload is `data` as is (raw lane order), zero-padded if
    /// shorter: [`FrameBuilder::push`] without zero-filling what is then overwritten.
    /// `Err(NoRoom)` leaves the frame unchanged.
    pub fn push_data(&mut self, msg: &MessageRepr, data: &[u8]) -> Result<()> {
        let flits = msg.flits();
        if flits > self.room() {
            return Err(WireError::NoRoom);
        }
        let at = self.buf.len();
        let end = at + flits * FLIT;
        let head = msg.header.layout()?.head_flits() * FLIT;
        self.buf.resize(at + head, 0);
        msg.emit_header(&mut self.buf[at..])?;
        let n = data.len().min(end - at - head);
        self.buf.extend_from_slice(&data[..n]);
        self.buf.resize(end, 0);
        self.mask |= 1u64 << self.flits;
        self.flits += flits;
        Ok(())
    }

    /// Appends a message whose payload, exactly `len` bytes as they go on the wire, is not
    /// copied into the buffer but recorded as [`ExternalData`] named `key`: whoever sends the
    /// frame supplies those bytes. `Err(NoRoom)` (leaving the frame unchanged) if the message
    /// does not fit, its payload is not exactly `len` bytes, or the builder was not made
    /// [`FrameBuilder::with_external`].
    pub fn push_external(&mut self, msg: &MessageRepr, key: u64, len: usize) -> Result<()> {
        let flits = msg.flits();
        let head = msg.header.layout()?.head_flits() * FLIT;
        if flits > self.room() || flits * FLIT != head + len {
            return Err(WireError::NoRoom);
        }
        let Some(external) = self.external.as_mut() else {
            return Err(WireError::NoRoom);
        };
        let at = self.buf.len();
        self.buf.resize(at + head, 0);
        msg.emit_header(&mut self.buf[at..])?;
        external.push(ExternalData {
            at: at + head,
            key,
            len,
        });
        self.external_len += len;
        self.mask |= 1u64 << self.flits;
        self.flits += flits;
        Ok(())
    }

    /// Pads to at least `min_flits` flits after the header, appends the mask and returns the
    /// frame length (on the wire, external payloads included).
    pub fn finish(self, min_flits: usize) -> usize {
        // Every external payload lies before the padding, so the buffer holds the rest of the
        // frame shifted back by their total length.
        let padded = FLITS_OFFSET + self.flits.max(min_flits) * FLIT - self.external_len;
        self.buf.resize(padded + FLIT, 0);
        // The buffer was just sized to hold the mask word.
        let _ = write_u64(self.buf, padded, self.mask);
        self.buf.len() + self.external_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_arithmetic_wraps() {
        assert_eq!(Seq::MAX.next(), Seq::new(0));
        assert_eq!(Seq::new(0).prev(), Seq::MAX);
        assert_eq!(Seq::new(2).since(Seq::MAX), 3);
        assert_eq!(Seq::MAX.since(Seq::new(2)), Seq::MODULUS - 3);
        assert_eq!(Seq::new(5).add(Seq::MODULUS), Seq::new(5));
    }

    #[test]
    fn header_round_trip_all_fields() {
        let h = TloeHeader {
            vc: 5,
            msg_type: MessageType::Close,
            seq: Seq::new(0x2E50D),
            seq_ack: Seq::new(0x3FFFFF),
            ack: true,
            chan: 7,
            credit: 31,
        };
        assert_eq!(TloeHeader::from_word(h.to_word()).unwrap(), h);
    }

    #[test]
    fn unknown_message_type_is_rejected() {
        assert_eq!(
            TloeHeader::from_word(4 << 57),
            Err(WireError::MessageType(4))
        );
    }

    #[test]
    fn short_and_misaligned_frames_are_rejected() {
        let mut f = vec![0u8; 30];
        f[12] = 0xaa;
        f[13] = 0xaa;
        assert!(Frame::new_checked(&f[..]).is_ok());
        assert_eq!(
            Frame::new_checked(&f[..29]).unwrap_err(),
            WireError::Truncated
        );
        f.push(0);
        assert_eq!(
            Frame::new_checked(&f[..]).unwrap_err(),
            WireError::NotFlitAligned
        );
        f.pop();
        f[12] = 0x89;
        assert_eq!(
            Frame::new_checked(&f[..]).unwrap_err(),
            WireError::EtherType(0x89aa)
        );
    }

    #[test]
    fn push_data_matches_push() {
        use crate::wire::tilelink::{op_a, op_d};
        use crate::wire::{Channel, MacAddr, MessageHeader};
        let eth = EthernetRepr {
            dst: MacAddr::local(1),
            src: MacAddr::local(2),
            ethertype: ETHERTYPE_OMNIXTEND,
        };
        let h = TloeHeader::new(MessageType::Normal, Seq::new(7), Seq::new(3), true);
        let data: Vec<u8> = (0..64u8).collect();
        let msgs = [
            MessageRepr {
                header: MessageHeader::new(Channel::A, op_a::PUT_FULL, 6, 9),
                address: 0x1000,
                sink: 0,
            },
            MessageRepr {
                header: MessageHeader::new(Channel::D, op_d::ACCESS_ACK_DATA, 6, 9),
                address: 0,
                sink: 0,
            },
        ];
        for m in msgs {
            for len in [64, 10] {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut fa = FrameBuilder::new(&mut a, &eth, &h, 1514);
                fa.push(&m, |p| p[..len].copy_from_slice(&data[..len]))
                    .unwrap();
                fa.finish(5);
                let mut fb = FrameBuilder::new(&mut b, &eth, &h, 1514);
                fb.push_data(&m, &data[..len]).unwrap();
                fb.finish(5);
                assert_eq!(a, b);
            }
        }
        let mut c = Vec::new();
        let mut fc = FrameBuilder::new(&mut c, &eth, &h, 100);
        let before = fc.flits_used();
        assert_eq!(fc.push_data(&msgs[0], &data), Err(WireError::NoRoom));
        assert_eq!(fc.flits_used(), before);
    }

    #[test]
    fn mask_beyond_flits_is_rejected() {
        let mut f = [0u8; 30 + 8];
        f[12] = 0xaa;
        f[13] = 0xaa;
        f[37] = 0b10; // a message at flit 1, but there is only flit 0
        let frame = Frame::new_checked(&f[..]).unwrap();
        assert_eq!(frame.validate(), Err(WireError::BadMask));
    }
}
