//! Byte-exact encode and decode of every vector in omnixtend.md §6.

use super::data::{from_wire, to_wire};
use super::tilelink::{op_a, op_d};
use super::*;

const DRIVER: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const NODE: MacAddr = MacAddr([4, 0, 0, 0, 0, 0]);

pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn eth(to_node: bool) -> EthernetRepr {
    let (dst, src) = if to_node {
        (NODE, DRIVER)
    } else {
        (DRIVER, NODE)
    };
    EthernetRepr {
        dst,
        src,
        ethertype: ETHERTYPE_OMNIXTEND,
    }
}

/// The expected frame: Ethernet header, TLoE header, flits, `pad` zero words, mask.
fn expected(to_node: bool, header: &str, flits: &[&str], pad: usize, mask: u64) -> Vec<u8> {
    let mut f = Vec::new();
    let e = eth(to_node);
    f.extend_from_slice(&e.dst.0);
    f.extend_from_slice(&e.src.0);
    f.extend_from_slice(&[0xaa, 0xaa]);
    f.extend(hex(header));
    for w in flits {
        f.extend(hex(w));
    }
    f.extend(std::iter::repeat_n(0u8, pad * 8));
    f.extend_from_slice(&mask.to_be_bytes());
    f
}

fn hdr(t: MessageType, seq: u32, seq_ack: u32, ack: bool, chan: u8, credit: u8) -> TloeHeader {
    TloeHeader {
        vc: 0,
        msg_type: t,
        seq: Seq::new(seq),
        seq_ack: Seq::new(seq_ack),
        ack,
        chan,
        credit,
    }
}

/// Builds a frame from reprs; each message is (repr, memory bytes for its data).
fn build(
    to_node: bool,
    h: TloeHeader,
    msgs: &[(MessageRepr, &[u8])],
    order: LaneOrder,
    min: usize,
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = FrameBuilder::new(&mut buf, &eth(to_node), &h, 2048);
    for (m, data) in msgs {
        b.push(m, |p| to_wire(order, m.address, data, p)).unwrap();
    }
    b.finish(min);
    buf
}

fn empty(to_node: bool, h: TloeHeader) -> Vec<u8> {
    build(to_node, h, &[], LaneOrder::Raw, 5)
}

fn parse(bytes: &[u8]) -> (TloeHeader, Vec<Message<'_>>) {
    let f = Frame::new_checked(bytes).unwrap();
    let h = f.header().unwrap();
    (h, f.into_messages().collect::<Result<_>>().unwrap())
}

fn a(opcode: u8, size: u8, source: u32, address: u64) -> MessageRepr {
    MessageRepr {
        header: MessageHeader::new(Channel::A, opcode, size, source),
        address,
        sink: 0,
    }
}

fn d(opcode: u8, size: u8, source: u32) -> MessageRepr {
    MessageRepr {
        header: MessageHeader::new(Channel::D, opcode, size, source),
        address: 0,
        sink: 0,
    }
}

fn c4_words() -> Vec<String> {
    (0u8..8)
        .map(|w| (0..8).map(|i| format!("{:02x}", w * 8 + i)).collect())
        .collect()
}

/// Checks an empty frame both ways.
fn check_empty(to_node: bool, header_hex: &str, h: TloeHeader) {
    let exp = expected(to_node, header_hex, &[], 5, 0);
    assert_eq!(exp.len(), 70);
    assert_eq!(empty(to_node, h), exp);
    let (got, msgs) = parse(&exp);
    assert_eq!(got, h);
    assert!(msgs.is_empty());
}

#[test]
fn c1_open() {
    check_empty(
        true,
        "04000000fffffc34",
        hdr(MessageType::Open, 0, 0x3FFFFF, false, 1, 20),
    );
}

#[test]
fn m1_m2_node_replies() {
    check_empty(
        false,
        "000000000000022a",
        hdr(MessageType::Normal, 0, 0, true, 1, 10),
    );
    check_empty(
        false,
        "000000010000062a",
        hdr(MessageType::Normal, 1, 1, true, 1, 10),
    );
}

#[test]
fn c2_c3_c5_c7_c8_driver_control_frames() {
    check_empty(
        true,
        "0000000100000294",
        hdr(MessageType::Normal, 1, 0, true, 4, 20),
    );
    check_empty(
        true,
        "0000000200000600",
        hdr(MessageType::Normal, 2, 1, true, 0, 0),
    );
    check_empty(
        true,
        "0000000400000a80",
        hdr(MessageType::Normal, 4, 2, true, 4, 0),
    );
    check_empty(
        true,
        "0000000600000e83",
        hdr(MessageType::Normal, 6, 3, true, 4, 3),
    );
    check_empty(
        true,
        "0600000700000e80",
        hdr(MessageType::Close, 7, 3, true, 4, 0),
    );
}

#[test]
fn m5_close() {
    check_empty(
        false,
        "0600000400001e8a",
        hdr(MessageType::Close, 4, 7, true, 4, 10),
    );
}

#[test]
fn c4_put_full_data_raw() {
    let words = c4_words();
    let mut flits = vec!["1006000000000001", "0000000000001000"];
    flits.extend(words.iter().map(String::as_str));
    let exp = expected(true, "0000000300000600", &flits, 0, 1);
    assert_eq!(exp.len(), 110);
    let full = "040000000000020000000001aaaa000000030000060010060000000000010000000000001000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f0000000000000001";
    assert_eq!(exp, hex(full));
    let data: Vec<u8> = (0..64).collect();
    let h = hdr(MessageType::Normal, 3, 1, true, 0, 0);
    let put = a(op_a::PUT_FULL, 6, 1, 0x1000);
    assert_eq!(build(true, h, &[(put, &data)], LaneOrder::Raw, 5), exp);
    let (got, msgs) = parse(&exp);
    assert_eq!(got, h);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].repr(), put);
    assert_eq!(msgs[0].payload, &data[..]);
}

#[test]
fn m3_access_ack() {
    let exp = expected(false, "0000000200000e23", &["4006000000000001"], 4, 1);
    assert_eq!(exp.len(), 70);
    let h = hdr(MessageType::Normal, 2, 3, true, 1, 3);
    assert_eq!(
        build(
            false,
            h,
            &[(d(op_d::ACCESS_ACK, 6, 1), &[])],
            LaneOrder::Raw,
            5
        ),
        exp
    );
    let (got, msgs) = parse(&exp);
    assert_eq!(got, h);
    assert_eq!(msgs[0].repr(), d(op_d::ACCESS_ACK, 6, 1));
    assert_eq!(msgs[0].flits(), 1);
}

#[test]
fn c6_get() {
    let exp = expected(
        true,
        "0000000500000a00",
        &["1806000000000002", "0000000000001000"],
        3,
        1,
    );
    assert_eq!(exp.len(), 70);
    let h = hdr(MessageType::Normal, 5, 2, true, 0, 0);
    let get = a(op_a::GET, 6, 2, 0x1000);
    assert_eq!(build(true, h, &[(get, &[])], LaneOrder::Raw, 5), exp);
    assert_eq!(parse(&exp).1[0].repr(), get);
}

#[test]
fn m4_access_ack_data_raw() {
    let words = c4_words();
    let mut flits = vec!["4206000000000002"];
    flits.extend(words.iter().map(String::as_str));
    let exp = expected(false, "0000000300001620", &flits, 0, 1);
    assert_eq!(exp.len(), 102);
    let data: Vec<u8> = (0..64).collect();
    let h = hdr(MessageType::Normal, 3, 5, true, 1, 0);
    let ack = d(op_d::ACCESS_ACK_DATA, 6, 2);
    assert_eq!(build(false, h, &[(ack, &data)], LaneOrder::Raw, 5), exp);
    let (_, msgs) = parse(&exp);
    let mut back = [0u8; 64];
    from_wire(LaneOrder::Raw, 0x1000, msgs[0].payload, &mut back);
    assert_eq!(back[..], data[..]);
}

#[test]
fn c9_four_gets_in_one_frame() {
    let flits = [
        "180a000000000003",
        "0000000000002000",
        "180a000000000004",
        "0000000000002400",
        "180a000000000005",
        "0000000000002800",
        "180a000000000006",
        "0000000000002c00",
    ];
    let exp = expected(true, "0000000700000e80", &flits, 0, 0x55);
    assert_eq!(exp.len(), 94);
    let h = hdr(MessageType::Normal, 7, 3, true, 4, 0);
    let gets: Vec<(MessageRepr, &[u8])> = (0..4u32)
        .map(|i| {
            (
                a(op_a::GET, 10, 3 + i, 0x2000 + 0x400 * u64::from(i)),
                &[][..],
            )
        })
        .collect();
    assert_eq!(build(true, h, &gets, LaneOrder::Raw, 5), exp);
    let (_, msgs) = parse(&exp);
    assert_eq!(
        msgs.iter().map(|m| m.repr()).collect::<Vec<_>>(),
        gets.iter().map(|g| g.0).collect::<Vec<_>>()
    );
}

const S_HDR: &str = "0002e50d15b52e48";
const S_SOURCE: u32 = 0x10F3355;
const S_ADDR: u64 = 0x7BA80000130EC440;

fn s_header(chan: u8, credit: u8) -> TloeHeader {
    hdr(MessageType::Normal, 0x2E50D, 0x56D4B, true, chan, credit)
}

#[test]
fn s1_get_spec() {
    let exp = expected(true, S_HDR, &["18050000010f3355", "7ba80000130ec440"], 2, 1);
    assert_eq!(exp.len(), 62);
    let get = a(op_a::GET, 5, S_SOURCE, S_ADDR);
    assert_eq!(
        build(true, s_header(2, 8), &[(get, &[])], LaneOrder::Spec, 4),
        exp
    );
    let (h, msgs) = parse(&exp);
    assert_eq!(h, s_header(2, 8));
    assert_eq!(msgs[0].repr(), get);
}

#[test]
fn s2_access_ack_spec() {
    let exp = expected(false, S_HDR, &["40050000010f3355"], 3, 1);
    let ack = d(op_d::ACCESS_ACK, 5, S_SOURCE);
    assert_eq!(
        build(false, s_header(2, 8), &[(ack, &[])], LaneOrder::Spec, 4),
        exp
    );
    assert_eq!(parse(&exp).1[0].repr(), ack);
}

#[test]
fn s3_access_ack_data_spec_lanes() {
    let flits = [
        "42050000010f3355",
        "4746454443424140",
        "4f4e4d4c4b4a4948",
        "5756555453525150",
        "5f5e5d5c5b5a5958",
    ];
    let exp = expected(false, S_HDR, &flits, 0, 1);
    let mem: Vec<u8> = (0x40..0x60).collect();
    let ack = MessageRepr {
        address: S_ADDR,
        ..d(op_d::ACCESS_ACK_DATA, 5, S_SOURCE)
    };
    assert_eq!(
        build(false, s_header(2, 8), &[(ack, &mem)], LaneOrder::Spec, 4),
        exp
    );
    let (_, msgs) = parse(&exp);
    let mut back = [0u8; 32];
    from_wire(LaneOrder::Spec, S_ADDR, msgs[0].payload, &mut back);
    assert_eq!(back[..], mem[..]);
}

#[test]
fn s4_put_full_data_spec_lanes() {
    let words: Vec<String> = (0u8..8)
        .map(|w| {
            (0..8)
                .rev()
                .map(|i| format!("{:02x}", 0x40 + w * 8 + i))
                .collect()
        })
        .collect();
    assert_eq!(words[0], "4746454443424140");
    let mut flits = vec!["10060000010f3355", "7ba80000130ec440"];
    flits.extend(words.iter().map(String::as_str));
    let exp = expected(true, "0002e50d15b52e62", &flits, 0, 1);
    let mem: Vec<u8> = (0x40..0x80).collect();
    let put = a(op_a::PUT_FULL, 6, S_SOURCE, S_ADDR);
    assert_eq!(
        build(true, s_header(3, 2), &[(put, &mem)], LaneOrder::Spec, 4),
        exp
    );
    assert_eq!(parse(&exp).0, s_header(3, 2));
}

#[test]
fn s5_ack_only() {
    let exp = expected(false, "0200000400001a00", &[], 5, 0);
    assert_eq!(exp.len(), 70);
    let h = hdr(MessageType::AckOnly, 4, 6, true, 0, 0);
    assert_eq!(empty(false, h), exp);
    assert_eq!(parse(&exp).0, h);
}

#[test]
fn k1_captured_hardware_frames() {
    let get = expected(
        true,
        "0011aa363401e600",
        &["1803050000000021", "000000000200bff8"],
        2,
        1,
    );
    assert_eq!(get.len(), 62);
    let (h, msgs) = parse(&get);
    assert_eq!(
        (h.seq, h.seq_ack, h.ack, h.chan),
        (Seq::new(0x11aa36), Seq::new(0xD0079), true, 0)
    );
    let m = msgs[0];
    assert_eq!(
        (m.header.chan, m.header.opcode, m.header.size),
        (Channel::A, op_a::GET, 3)
    );
    assert_eq!(
        (m.header.domain, m.header.source, m.address),
        (5, 33, Some(0x200bff8))
    );
    let mut repr = m.repr();
    repr.header.domain = 5;
    assert_eq!(build(true, h, &[(repr, &[])], LaneOrder::Spec, 4), get);

    let data = expected(
        false,
        "000d007a46a8de21",
        &["4203000000000021", "8000000019a19260"],
        2,
        1,
    );
    let (h, msgs) = parse(&data);
    assert_eq!((h.chan, h.credit), (1, 1));
    let mut back = [0u8; 8];
    from_wire(LaneOrder::Spec, 0x200bff8, msgs[0].payload, &mut back);
    assert_eq!(u64::from_le_bytes(back), 0x8000000019a19260);
    let ack = d(op_d::ACCESS_ACK_DATA, 3, 33);
    assert_eq!(build(false, h, &[(ack, &back)], LaneOrder::Spec, 4), data);
}
