//! The ceiling of a link for the OmniXtend benchmark (`benches/omnixtend-veth.sh`): a raw
//! AF_PACKET blaster and echo that move frames of the same sizes and in the same pattern as
//! the requester and the memory node, through the same batched transport, with no protocol
//! work at all.
//!
//! ```text
//! raw_ceiling echo IF
//! raw_ceiling blast IF PEER_MAC REQ_BYTES RESP_BYTES RESP_PER_REQ WINDOW SECONDS COUNT_REQ(0|1)
//! ```
//! Each request frame asks for RESP_PER_REQ response frames of RESP_BYTES. The blaster keeps
//! WINDOW requests outstanding and prints one JSON line: payload MB/s in the measured
//! direction (request payload if COUNT_REQ=1, the write pattern; response payload otherwise,
//! the read pattern). Payload = frame bytes minus the TLoE framing of a 1-message frame.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)] // a benchmark tool

use oxio_omnixtend::transport::packet::PacketSocket;
use oxio_omnixtend::transport::Transport;
use oxio_omnixtend::wire::MacAddr;
use std::time::{Duration, Instant};

fn header(buf: &mut [u8], dst: MacAddr, src: MacAddr) {
    buf[..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
    buf[12..14].copy_from_slice(&[0xaa, 0xaa]);
}

fn echo(ifname: &str) {
    let mut sock = PacketSocket::open(ifname).unwrap();
    let me = sock.mac();
    // Response frames are built in reused buffers and sent straight from them (`send_batch`,
    // the zero-copy path the link uses), so the echo does no more work per frame than the
    // memory node and stays a ceiling.
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut used = 0;
        sock.recv(Some(Duration::from_millis(100)), &mut |f| {
            if f.len() < 22 || f[..6] != me.0 {
                return;
            }
            let k = u32::from_be_bytes(f[14..18].try_into().unwrap());
            let size = u32::from_be_bytes(f[18..22].try_into().unwrap()) as usize;
            let mut src = [0u8; 6];
            src.copy_from_slice(&f[6..12]);
            for i in 0..k.min(64) {
                if used == bufs.len() {
                    bufs.push(Vec::new());
                }
                let r = &mut bufs[used];
                r.resize(size.clamp(22, 9014), 0);
                header(r, MacAddr(src), me);
                r[14..18].copy_from_slice(&i.to_be_bytes());
                used += 1;
            }
        })
        .unwrap();
        let frames: Vec<&[u8]> = bufs[..used].iter().map(Vec::as_slice).collect();
        sock.send_batch(&frames).unwrap();
        sock.flush().unwrap();
    }
}

#[allow(clippy::too_many_arguments)]
fn blast(
    ifname: &str,
    peer: MacAddr,
    req: usize,
    resp: usize,
    per: u32,
    window: usize,
    secs: f64,
    count_req: bool,
) {
    let mut sock = PacketSocket::open(ifname).unwrap();
    let me = sock.mac();
    let mut frame = vec![0x5au8; req.max(22)];
    header(&mut frame, peer, me);
    frame[14..18].copy_from_slice(&per.to_be_bytes());
    frame[18..22].copy_from_slice(&u32::try_from(resp).unwrap().to_be_bytes());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut received, mut outstanding) = (0u64, 0u64, 0usize);
    let mut last_rx = Instant::now();
    while Instant::now() < end {
        let mut n = 0;
        while outstanding < window * per as usize {
            n += 1;
            outstanding += per as usize;
        }
        // Straight from our buffer, as the link sends (no copy into the transport's buffers).
        sock.send_batch(&vec![&frame[..]; n]).unwrap();
        sent += n as u64;
        sock.flush().unwrap();
        let n = sock
            .recv(Some(Duration::from_millis(5)), &mut |f| {
                if f.len() == resp && f[..6] == me.0 {
                    received += 1;
                }
            })
            .unwrap();
        outstanding = outstanding.saturating_sub(n);
        if n > 0 {
            last_rx = Instant::now();
        } else if last_rx.elapsed() > Duration::from_millis(20) {
            outstanding = 0; // frames were dropped; refill the window
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (frames, payload) = if count_req {
        (sent, req - 46)
    } else {
        (received, resp - 38)
    };
    let mbps = frames as f64 * payload as f64 / secs / 1e6;
    println!(
        "{{\"req_bytes\":{req},\"resp_bytes\":{resp},\"per_req\":{per},\"window\":{window},\"sent\":{sent},\"received\":{received},\"seconds\":{secs:.3},\"payload_mb_per_s\":{mbps:.1}}}"
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("echo") => echo(&a[2]),
        Some("blast") => blast(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
            a[6].parse().unwrap(),
            a[7].parse().unwrap(),
            a[8].parse().unwrap(),
            a[9] == "1",
        ),
        _ => eprintln!(
            "usage: raw_ceiling echo IF | blast IF PEER REQ RESP PER WINDOW SECS COUNT_REQ"
        ),
    }
}
