//! The guest-side helper, statically linked into every initramfs as `/bin/oxio-guest`.
//!
//! ```text
//! oxio-guest exit RC                       report RC to the host through isa-debug-exit
//! oxio-guest fill  PATH OFFSET LEN SEED    write the shared test pattern, then fsync
//! oxio-guest check PATH OFFSET LEN SEED    read and compare with the pattern
//! oxio-guest fill-direct PATH OFFSET LEN SEED BS
//!                                          the pattern in O_DIRECT writes of BS, printing
//!                                          `written END` after each one completes
//! oxio-guest bench PATH read|write BS TOTAL  sequential O_DIRECT I/O at queue depth 1;
//!                                          prints `bench OP bs=BS MB/s IOPS`
//! ```
//! Numbers accept a `0x` prefix and `K`/`M`/`G` suffixes.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;

use oxio_guest_harness::pattern;

/// The isa-debug-exit port the harness configures (`iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["exit", rc] => parse(rc).and_then(debug_exit),
        ["fill", path, offset, len, seed] => {
            (|| fill(path, parse(offset)?, parse(len)?, parse(seed)?))()
        }
        ["check", path, offset, len, seed] => {
            (|| check(path, parse(offset)?, parse(len)?, parse(seed)?))()
        }
        ["fill-direct", path, offset, len, seed, bs] => {
            (|| fill_direct(path, parse(offset)?, parse(len)?, parse(seed)?, parse(bs)?))()
        }
        ["bench", path, op @ ("read" | "write"), bs, total] => {
            (|| bench(path, *op == "write", parse(bs)?, parse(total)?))()
        }
        _ => Err(
            "usage: oxio-guest exit RC | fill|check PATH OFFSET LEN SEED | \
                  fill-direct PATH OFFSET LEN SEED BS | bench PATH read|write BS TOTAL"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("oxio-guest: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn parse(text: &str) -> Result<u64, String> {
    let (digits, scale) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    value
        .ok()
        .and_then(|v| v.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a number"))
}

/// Writes `rc + 1` (at most 127) to the isa-debug-exit port; QEMU exits at once.
fn debug_exit(rc: u64) -> Result<(), String> {
    let value = u8::try_from(rc.saturating_add(1).min(127)).unwrap_or(127);
    // SAFETY: ioperm(2) only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(u64::from(DEBUG_EXIT_PORT), 1, 1) } != 0 {
        return Err(format!("ioperm: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the port was granted above; writing to isa-debug-exit makes QEMU exit, and on
    // hardware without it the write is ignored.
    unsafe { std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") value) };
    Err("isa-debug-exit is not present (QEMU did not exit)".to_string())
}

const CHUNK: usize = 1 << 20;

fn fill(path: &str, offset: u64, len: u64, seed: u64) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("seek {path}: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = offset;
    let end = offset.checked_add(len).ok_or("offset + length overflows")?;
    while pos < end {
        let n = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
        pattern::fill(&mut buf[..n], pos, seed);
        file.write_all(&buf[..n])
            .map_err(|e| format!("write {path} at {pos}: {e}"))?;
        pos += n as u64;
    }
    file.sync_all().map_err(|e| format!("fsync {path}: {e}"))
}

fn check(path: &str, offset: u64, len: u64, seed: u64) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("seek {path}: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = offset;
    let end = offset.checked_add(len).ok_or("offset + length overflows")?;
    while pos < end {
        let n = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact(&mut buf[..n])
            .map_err(|e| format!("read {path} at {pos}: {e}"))?;
        if let Some(bad) = pattern::first_mismatch(&buf[..n], pos, seed) {
            return Err(format!(
                "{path}: byte {bad} differs from pattern seed {seed}"
            ));
        }
        pos += n as u64;
    }
    println!("oxio-guest: {path} {offset}+{len} matches pattern seed {seed}");
    Ok(())
}

/// Sequential O_DIRECT reads or writes of `bs` bytes over the first `total` bytes, one at a
/// time (what a single synchronous writer sees through the block layer).
fn bench(path: &str, write: bool, bs: u64, total: u64) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    if bs == 0 || bs % 4096 != 0 || total < bs {
        return Err("BS must be a positive multiple of 4096 and at most TOTAL".into());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let len = usize::try_from(bs).map_err(|_| "BS too large")?;
    let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
    // SAFETY: the layout has a non-zero size (checked above); the buffer is freed below and
    // only used as a byte slice of exactly `len` bytes in between.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err("out of memory".into());
    }
    // SAFETY: `ptr` is a live allocation of `len` zeroed bytes, owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    pattern::fill(buf, 0, 1);
    let ops = total / bs;
    let start = std::time::Instant::now();
    let mut result = Ok(());
    for i in 0..ops {
        let at = i * bs;
        let r = if write {
            file.write_all_at(buf, at)
        } else {
            file.read_exact_at(buf, at)
        };
        if let Err(e) = r {
            result = Err(format!("{path} at {at}: {e}"));
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: allocated above with this layout; `buf` is not used after this.
    unsafe { std::alloc::dealloc(ptr, layout) };
    result?;
    let bytes = (ops * bs) as f64;
    println!(
        "bench {} bs={bs} {:.1} MB/s {:.0} IOPS ({ops} ops in {secs:.2} s)",
        if write { "write" } else { "read" },
        bytes / secs / 1e6,
        ops as f64 / secs
    );
    Ok(())
}

/// A 4 KiB-aligned heap buffer of `len` bytes for O_DIRECT, freed on drop.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: u64) -> Result<Self, String> {
        let len = usize::try_from(len).map_err(|_| "buffer too large")?;
        if len == 0 || len % 4096 != 0 {
            return Err("the I/O size must be a positive multiple of 4096".into());
        }
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, zero-initialised allocation of `layout.size()` bytes owned
        // by `self`; the borrow of `self` keeps it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Writes the pattern with O_DIRECT, one `bs` write at a time, and reports each completed one
/// on stdout, so a test knows exactly which writes the device acknowledged.
fn fill_direct(path: &str, offset: u64, len: u64, seed: u64, bs: u64) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut buf = AlignedBuf::new(bs)?;
    let end = offset.checked_add(len).ok_or("offset + length overflows")?;
    let mut at = offset;
    let stdout = std::io::stdout();
    while at < end {
        let n = (end - at).min(bs);
        let chunk = &mut buf.as_mut()[..usize::try_from(n).unwrap_or(0)];
        pattern::fill(chunk, at, seed);
        file.write_all_at(chunk, at)
            .map_err(|e| format!("write {path} at {at}: {e}"))?;
        at += n;
        let mut out = stdout.lock();
        writeln!(out, "written {at}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
