//! Fuzzing entry points (feature `fuzzing`), shared by `fuzz/fuzz_targets/nbd_*.rs` and the
//! unit tests that replay and write their seed corpora.
//!
//! Untrusted bytes play the client: [`session`] runs negotiation and then transmission on
//! them; [`transmission`] goes straight to the transmission phase in the mode the first byte
//! picks, as the kernel attach path does. The stream ends at the input's end (EOF), so every
//! run terminates; replies are discarded. Any panic, hang or runaway allocation is a bug.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use oxio_block::memory::MemoryBackend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::{
    negotiate, serve_transmission, ConnStats, Export, ExportSet, Shutdown, TransmissionMode,
};

/// Size of the fuzzed exports: small, so range checks reject huge requests before any
/// buffer is allocated for them.
const EXPORT_SIZE: u64 = 1 << 20;

/// A client that sends `input` in small, uneven pieces and ignores replies.
struct Scripted<'a> {
    input: &'a [u8],
    step: usize,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Vary the chunk size so partial headers and payloads are exercised.
        self.step = self.step.wrapping_mul(31).wrapping_add(7);
        let n = self
            .input
            .len()
            .min(buf.remaining())
            .min(1 + self.step % 4096);
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl crate::server::Transport for Scripted<'_> {}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn exports() -> ExportSet {
    let mk = |name: &str, min: u32| {
        let backend = Arc::new(
            MemoryBackend::new(EXPORT_SIZE).unwrap_or_else(|_| unreachable!("1 MiB fits")),
        );
        Arc::new(
            Export::new(name, backend)
                .description("fuzz")
                .min_block_size(min),
        )
    };
    ExportSet::new(vec![mk("a", 1), mk("b", 512)])
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

/// A whole session: fixed-newstyle negotiation, then transmission if an export was chosen.
pub fn session(input: &[u8]) {
    run_session(input);
}

/// [`session`], returning the connection's statistics when it got to transmission and ended
/// without error.
fn run_session(input: &[u8]) -> Option<ConnStats> {
    let rt = runtime()?;
    rt.block_on(async {
        let exports = exports();
        let mut stream = Scripted { input, step: 0 };
        let n = negotiate(&mut stream, &exports, &Shutdown::never())
            .await
            .ok()??;
        serve_transmission(stream, n.export, n.mode, Shutdown::never())
            .await
            .ok()
    })
}

/// The transmission phase alone; `input[0]` picks simple, structured or extended replies
/// and whether `base:allocation` is active.
pub fn transmission(input: &[u8]) {
    run_transmission(input);
}

fn run_transmission(input: &[u8]) -> Option<ConnStats> {
    let (&mode, rest) = input.split_first()?;
    let ctx = (mode & 4 != 0).then_some(1);
    let mode = match mode % 3 {
        0 => TransmissionMode::simple(),
        1 => TransmissionMode::structured(ctx),
        _ => TransmissionMode::extended(ctx),
    };
    let rt = runtime()?;
    let export = exports().find("b").cloned()?;
    rt.block_on(async {
        let stream = Scripted {
            input: rest,
            step: 0,
        };
        serve_transmission(stream, export, mode, Shutdown::never())
            .await
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{cflags, opt, Command, OptionHeader, RequestHeader};

    fn option(out: &mut Vec<u8>, o: u32, data: &[u8]) {
        OptionHeader {
            option: o,
            length: u32::try_from(data.len()).unwrap(),
        }
        .emit(out);
        out.extend_from_slice(data);
    }

    fn requests(out: &mut Vec<u8>, ext: bool) {
        let reqs = [
            (Command::Write, 0, 0, 512),
            (Command::Read, cflags::DF, 0, 512),
            (Command::BlockStatus, cflags::REQ_ONE, 0, 4096),
            (Command::WriteZeroes, cflags::NO_HOLE, 512, 512),
            (Command::Trim, cflags::FUA, 1024, 512),
            (Command::Read, 0, EXPORT_SIZE, 512),
            (Command::Unknown(9), 0, 0, 0),
            (Command::Flush, 0, 0, 0),
            (Command::Disc, 0, 0, 0),
        ];
        for (i, (command, flags, offset, length)) in reqs.into_iter().enumerate() {
            RequestHeader {
                flags,
                command,
                cookie: i as u64,
                offset,
                length,
            }
            .emit(out, ext);
            if command == Command::Write {
                out.extend(std::iter::repeat_n(0xa5, 512));
            }
        }
    }

    /// Seed inputs: a full GO session with structured replies and contexts, an
    /// EXPORT_NAME session, and raw transmission streams in each mode.
    fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut go = 3u32.to_be_bytes().to_vec();
        option(&mut go, opt::LIST, &[]);
        option(&mut go, opt::STRUCTURED_REPLY, &[]);
        let mut meta = 1u32.to_be_bytes().to_vec();
        meta.extend_from_slice(b"b");
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        option(&mut go, opt::SET_META_CONTEXT, &meta);
        let mut info = 1u32.to_be_bytes().to_vec();
        info.extend_from_slice(b"b");
        info.extend_from_slice(&[0, 2, 0, 1, 0, 3]);
        option(&mut go, opt::INFO, &info);
        option(&mut go, 99, b"x");
        option(&mut go, opt::GO, &info);
        requests(&mut go, false);
        let mut old = 1u32.to_be_bytes().to_vec();
        option(&mut old, opt::EXPORT_NAME, b"a");
        requests(&mut old, false);
        let mut v = vec![
            ("nbd_session", "go".into(), go),
            ("nbd_session", "export_name".into(), old),
        ];
        for mode in 0u8..6 {
            let mut t = vec![mode];
            requests(&mut t, mode % 3 == 2);
            v.push(("nbd_transmission", format!("mode{mode}"), t));
        }
        v
    }

    #[test]
    fn seeds_replay_cleanly_and_are_written_to_the_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (target, name, data) in seeds() {
            let stats = match target {
                "nbd_session" => run_session(&data),
                _ => run_transmission(&data),
            };
            // Eight requests answered (DISC has no reply), and the client said goodbye.
            let stats = stats.unwrap_or_else(|| panic!("{target}/{name} did not complete"));
            assert_eq!(
                (stats.requests, stats.clean_disconnect),
                (8, true),
                "{target}/{name}"
            );
            // Every prefix too: truncation anywhere must end the session cleanly.
            for cut in (0..data.len()).step_by(7) {
                session(&data[..cut]);
                transmission(&data[..cut]);
            }
            let dir = root.join(target);
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::write(dir.join(name), &data);
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0usize, 1, 17, 28, 33, 200, 5000] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect();
            session(&data);
            transmission(&data);
        }
    }
}
