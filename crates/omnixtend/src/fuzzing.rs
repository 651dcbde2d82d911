//! Harnesses for the fuzz targets in `fuzz/` (feature `fuzzing`); unit tests replay them and
//! write their seed corpora.

use crate::endpoint::{EndpointConfig, EndpointCore, Memory};
use crate::link::{Compat, Link, LinkConfig, MessageSink};
use crate::requester::{OpKind, RequesterConfig, RequesterCore};
use crate::wire::{Frame, FrameBuilder, MacAddr, Message, ETHERNET_HEADER_LEN};
use std::time::{Duration, Instant};

/// Parses `data` as a frame; every message that parses is re-emitted and parsed again, and
/// must come back the same.
pub fn frame(data: &[u8]) {
    let Ok(frame) = Frame::new_checked(data) else {
        return;
    };
    let Ok(header) = frame.header() else { return };
    let eth = frame.ethernet();
    let _ = frame.validate();
    let mut buf = Vec::new();
    let mut b = FrameBuilder::new(&mut buf, &eth, &header, 1 << 16);
    let mut originals = Vec::new();
    for msg in frame.messages() {
        let Ok(msg) = msg else { break };
        let _ = msg.groups().count();
        let repr = msg.repr();
        if b.push(&repr, |p| p.copy_from_slice(msg.payload)).is_err() {
            break;
        }
        originals.push(msg);
    }
    b.finish(0);
    let again =
        Frame::new_checked(&buf[..]).map(|f| f.into_messages().collect::<Result<Vec<_>, _>>());
    match again {
        Ok(Ok(msgs)) => {
            assert_eq!(msgs.len(), originals.len());
            for (a, o) in msgs.iter().zip(&originals) {
                assert_eq!(a.repr(), o.repr());
                assert_eq!(a.payload, o.payload);
            }
        }
        other => panic!("re-emitted frame does not parse: {other:?}"),
    }
}

struct Null;

impl MessageSink for Null {
    fn deliver(&mut self, msg: &Message<'_>) {
        let _ = msg.groups().count();
    }
}

const REQ: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const NODE: MacAddr = MacAddr([4, 0, 0, 0, 0, 0]);

/// Splits fuzz input into frames: a 2-byte length, then that many bytes (bounded).
fn frames(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&ctl, r) = rest.split_first()?;
        let (&len, r) = r.split_first()?;
        let n = (usize::from(len) * 8 + 30).min(r.len());
        let (f, r) = r.split_at(n);
        rest = r;
        Some((ctl, f))
    })
}

/// Makes a frame plausible enough to reach the link's sequence logic: right EtherType and
/// MACs unless the control byte says otherwise.
fn dress(ctl: u8, f: &[u8], dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut v = f.to_vec();
    if ctl & 1 == 0 && v.len() >= ETHERNET_HEADER_LEN {
        v[..6].copy_from_slice(&dst.0);
        v[6..12].copy_from_slice(&src.0);
        v[12..14].copy_from_slice(&[0xaa, 0xaa]);
    }
    v
}

/// Feeds untrusted frames to the three receive paths: a link (strict or tolerant), a memory
/// node and a requester with requests in flight. Nothing may panic, and what each side keeps
/// must stay bounded.
pub fn link_rx(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let mut cfg = LinkConfig::new(REQ, NODE);
    cfg.rx_window = [1 << 10; 5];
    cfg.window = 32;
    cfg.compat = if mode & 1 == 0 {
        Compat::SPEC
    } else {
        Compat::C_PEER
    };
    let mut link = Link::new(cfg, now);
    link.accept(now);
    let mut ncfg = EndpointConfig::new(NODE);
    ncfg.compat = cfg_compat(mode);
    let Ok(mem) = Memory::anonymous(1 << 16, 0x1000) else {
        return;
    };
    let mut node = EndpointCore::new(ncfg, mem);
    let mut rcfg = RequesterConfig::new(REQ, NODE, 1 << 16);
    rcfg.max_inflight = 16;
    let mut req = RequesterCore::new(rcfg, now);
    req.open(now);
    req.submit(1, OpKind::Read, 100, vec![0; 5000]);
    req.submit(2, OpKind::Write, 7, vec![1; 3000]);
    for (ctl, f) in frames(data) {
        now += Duration::from_micros(u64::from(ctl >> 4) * 997);
        let _ = link.receive(now, &dress(ctl, f, REQ, NODE), &mut Null);
        node.receive(now, &dress(ctl, f, NODE, REQ));
        req.receive(now, &dress(ctl, f, REQ, NODE));
        let mut n = 0;
        link.poll_transmit(now, &mut (), 64, &mut |_| n += 1);
        node.poll_transmit(now, 64, &mut |_| n += 1);
        req.poll_transmit(now, 64, &mut |_| n += 1);
        assert!(link.in_flight() <= 32);
        let _ = req.drain_completions().count();
    }
}

fn cfg_compat(mode: u8) -> Compat {
    if mode & 2 == 0 {
        Compat::SPEC
    } else {
        Compat::C_PEER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fault::{FaultInjector, Faults};

    /// Records a short exchange between a requester and a node: every frame both ways.
    fn exchange() -> Vec<Vec<u8>> {
        let now = Instant::now();
        let mut req = RequesterCore::new(RequesterConfig::new(REQ, NODE, 1 << 16), now);
        req.open(now);
        let mut node = EndpointCore::new(
            EndpointConfig::new(NODE),
            Memory::anonymous(1 << 16, 0).unwrap(),
        );
        req.submit(1, OpKind::Write, 3, vec![5; 2000]);
        req.submit(2, OpKind::Read, 0, vec![0; 4096]);
        let mut all = Vec::new();
        let mut inj = FaultInjector::new(Faults::NONE, 1);
        for step in 0..20u64 {
            let t = now + Duration::from_micros(step * 100);
            let mut a = Vec::new();
            req.poll_transmit(t, 64, &mut |f| a.push(f.to_vec()));
            for f in &a {
                inj.inject(t, f, &mut |_, _| ());
                node.receive(t, f);
            }
            let mut b = Vec::new();
            node.poll_transmit(t, 64, &mut |f| b.push(f.to_vec()));
            for f in &b {
                req.receive(t, f);
            }
            all.extend(a);
            all.extend(b);
        }
        all
    }

    #[test]
    fn harnesses_accept_real_traffic_and_write_seed_corpora() {
        let frames = exchange();
        assert!(frames.len() > 4);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let fdir = root.join("omnixtend_frame");
        let ldir = root.join("omnixtend_link_rx");
        let _ = std::fs::create_dir_all(&fdir);
        let _ = std::fs::create_dir_all(&ldir);
        let mut stream = vec![0u8];
        for (i, f) in frames.iter().enumerate() {
            frame(f);
            let _ = std::fs::write(fdir.join(format!("seed-{i}")), f);
            let flits = u8::try_from((f.len().saturating_sub(30)) / 8).unwrap_or(255);
            stream.push(0x10);
            stream.push(flits);
            stream.extend_from_slice(f);
        }
        link_rx(&stream);
        let _ = std::fs::write(ldir.join("seed-exchange"), &stream);
        stream[0] = 3;
        link_rx(&stream);
        let _ = std::fs::write(ldir.join("seed-exchange-compat"), &stream);
    }

    #[test]
    fn garbage_does_not_panic() {
        frame(&[0xaa; 100]);
        link_rx(&[0xff; 300]);
        link_rx(&[]);
        frame(&[]);
    }
}
