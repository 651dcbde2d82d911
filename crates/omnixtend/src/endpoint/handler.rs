//! Executes TileLink requests against the memory region and queues their responses.

use super::lent::Lent;
use super::memory::Memory;
use crate::link::{MessageSink, MessageSource, TxCredits};
use crate::wire::data::{from_wire, to_wire, wire_pos};
use crate::wire::tilelink::{op_a, op_d, MAX_SIZE};
use crate::wire::{
    Channel, FrameBuilder, LaneOrder, MacAddr, Message, MessageHeader, MessageRepr, FLIT,
};
use std::collections::{HashMap, VecDeque};

/// Read responses of at least this many bytes are sent from the memory region without a copy
/// (see `lent`); smaller ones are copied into the frame, which costs less than the
/// bookkeeping.
pub(crate) const ZERO_COPY_MIN: usize = 2048;

/// A queued response.
#[derive(Debug, Clone)]
pub(crate) enum Response {
    /// AccessAck, HintAck or a denied Grant: header only.
    Ack(MessageHeader),
    /// AccessAckData read from memory when the frame is built.
    Read { header: MessageHeader, addr: u64 },
    /// AccessAckData with data captured when the request ran (atomics) or zero (denied).
    Owned {
        header: MessageHeader,
        addr: u64,
        data: [u8; 8],
    },
}

impl Response {
    fn header(&self) -> &MessageHeader {
        match self {
            Response::Ack(h)
            | Response::Read { header: h, .. }
            | Response::Owned { header: h, .. } => h,
        }
    }
}

/// Counters of the requests served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerStats {
    /// Requests executed.
    pub requests: u64,
    /// Requests answered as denied.
    pub denied: u64,
    /// Bytes read by Gets.
    pub bytes_read: u64,
    /// Bytes written by Puts.
    pub bytes_written: u64,
    /// Messages on channels B, C and E, which a memory node does not serve.
    pub ignored: u64,
}

/// Per-peer queue of responses, with its flit count for back-pressure.
#[derive(Debug, Default)]
pub(crate) struct Responses {
    /// Each response with the flits of the request it answers (credited back once sent).
    pub queue: VecDeque<(Response, usize)>,
    pub flits: usize,
    /// Request flits per channel whose buffers were freed, not yet credited back.
    pub released: [u64; 5],
}

/// The sink a link delivers a peer's requests to.
pub(crate) struct Executor<'a> {
    pub mem: &'a mut Memory,
    /// Read payloads lent to every peer's unacknowledged frames (a write saves what it would
    /// change in them first).
    pub lent: &'a mut HashMap<MacAddr, Lent>,
    /// The peer whose requests these are.
    pub peer: MacAddr,
    pub order: LaneOrder,
    pub out: &'a mut Responses,
    pub stats: &'a mut HandlerStats,
    /// Largest transfer whose response fits a frame (log2 bytes).
    pub max_size: u8,
    /// Most response flits queued before frames are deferred.
    pub cap_flits: usize,
}

impl MessageSink for Executor<'_> {
    fn ready(&mut self) -> bool {
        self.out.flits < self.cap_flits
    }

    fn credits_on_delivery(&self) -> bool {
        // A request's credits come back when its response leaves (Responder::fill).
        false
    }

    fn released(&mut self, key: u64) {
        if let Some(l) = self.lent.get_mut(&self.peer) {
            l.release(key);
        }
    }

    fn deliver(&mut self, msg: &Message<'_>) {
        if msg.header.chan != Channel::A {
            self.stats.ignored += 1;
            self.out.released[msg.header.chan.index()] += msg.flits() as u64;
            return;
        }
        self.stats.requests += 1;
        let r = self.execute(msg);
        if r.header().denied {
            self.stats.denied += 1;
        }
        self.out.flits += r.header().flits().unwrap_or(1);
        self.out.queue.push_back((r, msg.flits()));
    }
}

impl Executor<'_> {
    /// Keeps the bytes of lent read payloads that `len` bytes at `addr` are about to change.
    fn before_write(&mut self, addr: u64, len: usize) {
        for l in self.lent.values_mut() {
            l.before_write(self.mem, addr, len);
        }
    }

    fn execute(&mut self, msg: &Message<'_>) -> Response {
        let h = msg.header;
        let addr = msg.address.unwrap_or(0);
        let reply = |opcode| MessageHeader {
            chan: Channel::D,
            opcode,
            param: 0,
            ..h
        };
        let size_ok = h.size <= self.max_size;
        let len = 1usize << h.size.min(MAX_SIZE);
        let ok = size_ok && addr % len as u64 == 0 && self.mem.slice(addr, len).is_some();
        match h.opcode {
            op_a::GET if ok => {
                self.stats.bytes_read += len as u64;
                Response::Read {
                    header: reply(op_d::ACCESS_ACK_DATA),
                    addr,
                }
            }
            op_a::GET if !size_ok => Response::Ack(denied(reply(op_d::ACCESS_ACK))),
            op_a::PUT_FULL | op_a::PUT_PARTIAL if ok => {
                self.write(msg, addr, len);
                Response::Ack(reply(op_d::ACCESS_ACK))
            }
            op_a::PUT_FULL | op_a::PUT_PARTIAL => Response::Ack(denied(reply(op_d::ACCESS_ACK))),
            op_a::ARITHMETIC | op_a::LOGICAL if ok && h.size <= 3 => {
                let old = self.atomic(msg, addr, len);
                Response::Owned {
                    header: reply(op_d::ACCESS_ACK_DATA),
                    addr,
                    data: old,
                }
            }
            op_a::INTENT => Response::Ack(MessageHeader {
                denied: !ok,
                ..reply(op_d::HINT_ACK)
            }),
            op_a::ACQUIRE_BLOCK | op_a::ACQUIRE_PERM => {
                // Coherent caching (TL-C) is not offered: deny, capping permissions at None.
                Response::Ack(MessageHeader {
                    param: 2,
                    size: h.size,
                    ..denied(reply(op_d::GRANT))
                })
            }
            _ => Response::Owned {
                header: denied(reply(op_d::ACCESS_ACK_DATA)),
                addr,
                data: [0; 8],
            },
        }
    }

    fn write(&mut self, msg: &Message<'_>, addr: u64, len: usize) {
        let order = self.order;
        let partial = msg.header.opcode == op_a::PUT_PARTIAL;
        self.before_write(addr, len);
        let Some(dst) = self.mem.slice_mut(addr, len) else {
            return;
        };
        self.stats.bytes_written += len as u64;
        if !partial {
            from_wire(order, addr, msg.payload, dst);
            return;
        }
        // Each group: a mask word, then up to 64 data bytes; mask bit k enables the byte at
        // offset k of the group (the lane for transfers below a flit).
        let lane0 = if len < FLIT {
            wire_pos(LaneOrder::Raw, addr)
        } else {
            0
        };
        for (g, (mask, data)) in msg.groups().enumerate() {
            let base = g * 64;
            for (i, d) in dst.iter_mut().enumerate().skip(base).take(64) {
                let k = i - base + lane0;
                if mask & (1u64 << k) == 0 {
                    continue;
                }
                let byte_addr = addr + i as u64;
                let pos = (k / FLIT) * FLIT + wire_pos(order, byte_addr);
                if let Some(b) = data.get(pos) {
                    *d = *b;
                }
            }
        }
    }

    fn atomic(&mut self, msg: &Message<'_>, addr: u64, len: usize) -> [u8; 8] {
        let mut operand = [0u8; 8];
        from_wire(self.order, addr, msg.payload, &mut operand[..len]);
        self.before_write(addr, len);
        let Some(mem) = self.mem.slice_mut(addr, len) else {
            return [0; 8];
        };
        let mut old = [0u8; 8];
        old[..len].copy_from_slice(mem);
        let new = apply_atomic(
            msg.header.opcode,
            msg.header.param,
            len,
            u64::from_le_bytes(old),
            u64::from_le_bytes(operand),
        );
        mem.copy_from_slice(&new.to_le_bytes()[..len]);
        old
    }
}

fn denied(h: MessageHeader) -> MessageHeader {
    MessageHeader {
        denied: true,
        corrupt: h.opcode == op_d::ACCESS_ACK_DATA || h.opcode == op_d::GRANT_DATA,
        ..h
    }
}

/// ArithmeticData (MIN, MAX, MINU, MAXU, ADD) and LogicalData (XOR, OR, AND, SWAP) on a
/// little-endian value of `len` bytes; returns the new value.
fn apply_atomic(opcode: u8, param: u8, len: usize, old: u64, arg: u64) -> u64 {
    let bits = u32::try_from(len * 8).unwrap_or(64);
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let signed = |v: u64| -> i64 {
        let shift = 64 - bits;
        // Reinterpreting the bits is the point: sign-extend a `bits`-wide value.
        #[allow(clippy::cast_possible_wrap)]
        let s = ((v << shift) as i64) >> shift;
        s
    };
    let (a, b) = (old & mask, arg & mask);
    let v = match (opcode, param) {
        (op_a::ARITHMETIC, 0) => {
            if signed(b) < signed(a) {
                b
            } else {
                a
            }
        }
        (op_a::ARITHMETIC, 1) => {
            if signed(b) > signed(a) {
                b
            } else {
                a
            }
        }
        (op_a::ARITHMETIC, 2) => a.min(b),
        (op_a::ARITHMETIC, 3) => a.max(b),
        (op_a::ARITHMETIC, _) => a.wrapping_add(b),
        (_, 0) => a ^ b,
        (_, 1) => a | b,
        (_, 2) => a & b,
        _ => b,
    };
    v & mask
}

/// The source a link takes a peer's responses from.
pub(crate) struct Responder<'a> {
    pub mem: &'a Memory,
    /// This peer's read payloads sent from memory.
    pub lent: &'a mut Lent,
    pub order: LaneOrder,
    pub out: &'a mut Responses,
}

impl MessageSource for Responder<'_> {
    fn fill(&mut self, frame: &mut FrameBuilder<'_>, credits: &mut TxCredits) {
        while let Some((r, req_flits)) = self.out.queue.front() {
            let req_flits = *req_flits;
            let h = *r.header();
            let repr = MessageRepr {
                header: h,
                address: 0,
                sink: 0,
            };
            let flits = repr.flits();
            if flits > frame.room() || !credits.try_take(Channel::D, flits) {
                break;
            }
            let (mem, order) = (self.mem, self.order);
            let len = 1usize << h.size.min(MAX_SIZE);
            let raw_read = match r {
                Response::Read { addr, .. } if order == LaneOrder::Raw && len >= FLIT => {
                    mem.slice(*addr, len).map(|s| (*addr, s))
                }
                _ => None,
            };
            let pushed = if let Some((addr, src)) =
                raw_read.filter(|_| len >= ZERO_COPY_MIN && frame.allows_external())
            {
                // Sent from the memory region by the transport (see `lent`).
                let key = self.lent.lend(addr, src.len());
                let pushed = frame.push_external(&repr, key, src.len());
                if pushed.is_err() {
                    self.lent.release(key);
                }
                pushed
            } else if let Some((_, src)) = raw_read {
                frame.push_data(&repr, src)
            } else {
                frame.push(&repr, |p| match r {
                    Response::Ack(_) => {}
                    Response::Read { addr, .. } => {
                        if let Some(src) = mem.slice(*addr, len) {
                            to_wire(order, *addr, src, p);
                        }
                    }
                    Response::Owned { addr, data, .. } => {
                        to_wire(order, *addr, &data[..len.min(8)], p);
                    }
                })
            };
            if pushed.is_err() {
                break;
            }
            self.out.flits = self.out.flits.saturating_sub(flits);
            self.out.released[Channel::A.index()] += req_flits as u64;
            self.out.queue.pop_front();
        }
    }

    fn has_pending(&self) -> bool {
        !self.out.queue.is_empty()
    }

    fn take_released(&mut self) -> [u64; 5] {
        std::mem::take(&mut self.out.released)
    }

    fn external(&self, key: u64, _len: usize) -> Option<&[u8]> {
        self.lent.bytes(self.mem, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomics() {
        assert_eq!(apply_atomic(op_a::ARITHMETIC, 4, 4, 0xffff_ffff, 1), 0);
        assert_eq!(apply_atomic(op_a::ARITHMETIC, 0, 1, 0x7f, 0x80), 0x80); // -128 < 127
        assert_eq!(apply_atomic(op_a::ARITHMETIC, 2, 1, 0x7f, 0x80), 0x7f);
        assert_eq!(apply_atomic(op_a::ARITHMETIC, 1, 8, 5, u64::MAX), 5);
        assert_eq!(apply_atomic(op_a::ARITHMETIC, 3, 8, 5, u64::MAX), u64::MAX);
        assert_eq!(apply_atomic(op_a::LOGICAL, 0, 2, 0xff00, 0x0ff0), 0xf0f0);
        assert_eq!(apply_atomic(op_a::LOGICAL, 1, 2, 0xff00, 0x0ff0), 0xfff0);
        assert_eq!(apply_atomic(op_a::LOGICAL, 2, 2, 0xff00, 0x0ff0), 0x0f00);
        assert_eq!(apply_atomic(op_a::LOGICAL, 3, 2, 0xff00, 0x0ff0), 0x0ff0);
    }
}
