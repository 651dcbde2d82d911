//! `oxio make-increment-file`: the seed's test pattern (`make-increment-file.c`) — a file of
//! incrementing native-endian 32-bit counters, the counter at byte offset `o` being `o / 4`
//! (wrapping every 16 GiB) — plus `--verify`, which checks a file or block device against it.
//! Used with dd or any NBD client to prove that data written through a device reads back
//! at the right offsets.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CmdError;

/// Bytes per write or read (a multiple of 4, so every chunk starts on a counter).
const CHUNK: usize = 1 << 20;

/// Write (or verify) a file of incrementing 32-bit counters.
#[derive(Debug, Args)]
#[command(
    long_about = "Writes SIZE bytes of incrementing native-endian 32-bit counters \
(0, 1, 2, ... one every 4 bytes) to PATH, the test pattern of the original oxmem-nbd's \
make-increment-file. With --verify, reads PATH (a file or a block device such as /dev/nbd0) \
and reports every range that differs from the pattern.\n\n\
Examples:\n  oxio make-increment-file /tmp/pattern 64M\n  \
dd if=/tmp/pattern of=/dev/nbd0 bs=1M oflag=direct\n  \
oxio make-increment-file --verify /dev/nbd0 64M"
)]
pub struct IncrementArgs {
    /// File to write, or file/device to verify.
    pub path: PathBuf,
    /// Bytes to write or check (K/M/G/T suffixes are binary). Verify defaults to the whole
    /// file or device.
    pub size: Option<String>,
    /// Check PATH against the pattern instead of writing it.
    #[arg(long)]
    pub verify: bool,
    /// Do not draw a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Fills `buf` with the pattern as it appears at byte `offset` (a multiple of 4).
fn fill(buf: &mut [u8], offset: u64) {
    for (counter, word) in (offset / 4..).zip(buf.chunks_mut(4)) {
        // The C tool's counter is a uint32_t: keep the low 32 bits (it wraps every 16 GiB).
        let v = u32::try_from(counter & u64::from(u32::MAX)).unwrap_or(0);
        word.copy_from_slice(&v.to_ne_bytes()[..word.len()]);
    }
}

fn progress(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// Runs the command.
pub fn run(args: IncrementArgs) -> Result<(), CmdError> {
    let size = args
        .size
        .as_deref()
        .map(oxio_block::parse_size)
        .transpose()?;
    if args.verify {
        verify(&args, size)
    } else {
        let size = size.ok_or("make-increment-file needs a SIZE, e.g. 64M")?;
        write(&args, size)
    }
}

fn write(args: &IncrementArgs, size: u64) -> Result<(), CmdError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&args.path)
        .map_err(|e| format!("cannot open {} for writing: {e}", args.path.display()))?;
    let bar = progress(size, args.quiet, "writing");
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from(size - at).unwrap_or(CHUNK).min(CHUNK);
        fill(&mut buf[..n], at);
        file.write_all(&buf[..n])
            .map_err(|e| format!("write at byte {at} failed: {e}"))?;
        at += n as u64;
        bar.set_position(at);
    }
    file.sync_all().map_err(|e| format!("sync failed: {e}"))?;
    bar.finish();
    println!(
        "wrote {size} bytes of incrementing 32-bit counters to {}",
        args.path.display()
    );
    Ok(())
}

fn verify(args: &IncrementArgs, size: Option<u64>) -> Result<(), CmdError> {
    let mut file =
        File::open(&args.path).map_err(|e| format!("cannot open {}: {e}", args.path.display()))?;
    let available = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let size = size.unwrap_or(available);
    if size > available {
        return Err(format!(
            "{} has only {available} bytes, fewer than {size}",
            args.path.display()
        )
        .into());
    }
    let bar = progress(size, args.quiet, "verifying");
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut at, mut bad_bytes, mut first_bad) = (0u64, 0u64, None);
    while at < size {
        let n = usize::try_from(size - at).unwrap_or(CHUNK).min(CHUNK);
        file.read_exact(&mut got[..n])
            .map_err(|e| format!("read at byte {at} failed: {e}"))?;
        fill(&mut want[..n], at);
        if got[..n] != want[..n] {
            let diff = got[..n]
                .iter()
                .zip(&want[..n])
                .filter(|(a, b)| a != b)
                .count() as u64;
            let first = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            first_bad.get_or_insert(at + first as u64);
            bad_bytes += diff;
        }
        at += n as u64;
        bar.set_position(at);
    }
    bar.finish();
    match first_bad {
        None => {
            println!("{}: {size} bytes match the increment pattern", args.path.display());
            Ok(())
        }
        Some(first) => Err(format!(
            "{}: {bad_bytes} of {size} bytes differ from the increment pattern; first at byte {first}",
            args.path.display()
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_seed_tool() {
        let mut b = [0u8; 12];
        fill(&mut b, 4096);
        assert_eq!(&b[..4], &1024u32.to_ne_bytes());
        assert_eq!(&b[8..], &1026u32.to_ne_bytes());
        fill(&mut b, 16 << 30);
        assert_eq!(
            &b[..4],
            &0u32.to_ne_bytes(),
            "the counter wraps like a uint32_t"
        );
    }

    #[test]
    fn write_then_verify_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let args = |verify| IncrementArgs {
            path: path.clone(),
            size: Some("3M".into()),
            verify,
            quiet: true,
        };
        run(args(false)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
        run(args(true)).unwrap();
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(1_500_001)).unwrap();
        f.write_all(&[0xee]).unwrap();
        let err = run(args(true)).unwrap_err().to_string();
        assert!(err.contains("first at byte 1500001"), "{err}");
        let too_big = IncrementArgs {
            size: Some("4M".into()),
            ..args(true)
        };
        assert!(run(too_big).is_err());
    }
}
