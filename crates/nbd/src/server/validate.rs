//! Request validation: every check the specification asks of a server, done once, before
//! the backend sees the request, each failure mapped to the errno the specification names
//! (the nbdkit `server/protocol.c` approach).

use oxio_block::Capabilities;

use super::export::{Export, TransmissionMode, MAX_PAYLOAD};
use crate::wire::{cflags, tflags, Command, RequestHeader};

/// Errnos on the wire (Linux values, which the specification adopts).
pub(crate) mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;

    /// Maps a backend errno to one the specification allows (unknown ones become EIO).
    pub fn from_backend(e: i32) -> u32 {
        match u32::try_from(e) {
            Ok(v @ (EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP | ESHUTDOWN)) => v,
            _ => EIO,
        }
    }
}

/// A rejected request: errno and a message for structured error chunks and logs.
pub(crate) type Rejection = (u32, &'static str);

/// The bytes of payload that follow `h` on the wire, whatever its validity.
pub(crate) fn payload_len(h: &RequestHeader, mode: &TransmissionMode) -> u64 {
    let ext = mode.extended_headers();
    match h.command {
        Command::Write => h.length,
        _ if ext && h.flags & cflags::PAYLOAD_LEN != 0 => h.length,
        _ => 0,
    }
}

/// The flags each command accepts in this connection.
fn allowed_flags(cmd: Command, flags: u16, mode: &TransmissionMode) -> Option<u16> {
    let fua = if flags & tflags::SEND_FUA != 0 {
        cflags::FUA
    } else {
        0
    };
    Some(match cmd {
        Command::Read => {
            fua | if mode.structured_replies() {
                cflags::DF
            } else {
                0
            }
        }
        Command::Write => {
            fua | if mode.extended_headers() {
                cflags::PAYLOAD_LEN
            } else {
                0
            }
        }
        Command::Flush | Command::Trim | Command::Cache => fua,
        Command::WriteZeroes => {
            let fast = if flags & tflags::SEND_FAST_ZERO != 0 {
                cflags::FAST_ZERO
            } else {
                0
            };
            fua | cflags::NO_HOLE | fast
        }
        Command::BlockStatus => fua | cflags::REQ_ONE,
        Command::Disc => u16::MAX,
        Command::Unknown(_) => return None,
    })
}

/// Checks `h` against the export and the negotiated mode.
pub(crate) fn validate(
    h: &RequestHeader,
    export: &Export,
    mode: &TransmissionMode,
) -> Result<(), Rejection> {
    let flags = export.transmission_flags(mode);
    let caps = export.capabilities();
    let Some(allowed) = allowed_flags(h.command, flags, mode) else {
        return Err((errno::EINVAL, "unknown command"));
    };
    if h.flags & !allowed != 0 {
        return Err((errno::EINVAL, "flag not supported for this command"));
    }
    match h.command {
        Command::Disc => Ok(()),
        Command::Flush if h.offset != 0 || h.length != 0 => {
            Err((errno::EINVAL, "flush must have zero offset and length"))
        }
        Command::Flush => Ok(()),
        Command::Read | Command::Write => {
            check_length(h)?;
            check_range(h, caps)?;
            check_alignment(h, caps)?;
            if h.command == Command::Write {
                check_writable(caps)?;
            }
            Ok(())
        }
        Command::Trim | Command::WriteZeroes | Command::Cache | Command::BlockStatus => {
            if h.length == 0 {
                return Err((errno::EINVAL, "zero-length request"));
            }
            check_range(h, caps)?;
            check_alignment(h, caps)?;
            check_feature(h.command, flags, mode)
        }
        Command::Unknown(_) => Err((errno::EINVAL, "unknown command")),
    }
}

fn check_length(h: &RequestHeader) -> Result<(), Rejection> {
    if h.length == 0 {
        return Err((errno::EINVAL, "zero-length request"));
    }
    if h.length > u64::from(MAX_PAYLOAD) {
        return Err(match h.command {
            Command::Read => (
                errno::EOVERFLOW,
                "read larger than the 32 MiB maximum payload",
            ),
            _ => (
                errno::EINVAL,
                "write larger than the 32 MiB maximum payload",
            ),
        });
    }
    Ok(())
}

fn check_range(h: &RequestHeader, caps: &Capabilities) -> Result<(), Rejection> {
    let inside = h
        .offset
        .checked_add(h.length)
        .is_some_and(|end| end <= caps.size);
    if inside {
        return Ok(());
    }
    Err(match h.command {
        Command::Write | Command::WriteZeroes => {
            (errno::ENOSPC, "request beyond the end of the export")
        }
        _ => (errno::EINVAL, "request beyond the end of the export"),
    })
}

fn check_alignment(h: &RequestHeader, caps: &Capabilities) -> Result<(), Rejection> {
    let min = u64::from(caps.block_size.min.max(1));
    if h.offset % min != 0 || h.length % min != 0 {
        return Err((
            errno::EINVAL,
            "request not aligned to the minimum block size",
        ));
    }
    Ok(())
}

fn check_writable(caps: &Capabilities) -> Result<(), Rejection> {
    if caps.read_only {
        return Err((errno::EPERM, "the export is read-only"));
    }
    Ok(())
}

fn check_feature(cmd: Command, flags: u16, mode: &TransmissionMode) -> Result<(), Rejection> {
    match cmd {
        Command::Trim | Command::WriteZeroes if flags & tflags::READ_ONLY != 0 => {
            Err((errno::EPERM, "the export is read-only"))
        }
        Command::Trim if flags & tflags::SEND_TRIM == 0 => {
            Err((errno::EINVAL, "trim not supported"))
        }
        Command::WriteZeroes if flags & tflags::SEND_WRITE_ZEROES == 0 => {
            Err((errno::EINVAL, "write zeroes not supported"))
        }
        Command::BlockStatus if mode.allocation_context().is_none() => {
            Err((errno::EINVAL, "no metadata context was negotiated"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oxio_block::memory::MemoryBackend;

    use super::*;

    fn hdr(command: Command, flags: u16, offset: u64, length: u64) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn check(e: &Export, mode: &TransmissionMode, h: RequestHeader) -> u32 {
        validate(&h, e, mode).map_or_else(|(errno, _)| errno, |()| 0)
    }

    #[test]
    fn every_rejection_has_the_spec_errno() {
        let e = Export::new("", Arc::new(MemoryBackend::new(1 << 20).unwrap())).min_block_size(512);
        let m = TransmissionMode::simple();
        let size = 1 << 20;
        assert_eq!(check(&e, &m, hdr(Command::Read, 0, 0, 4096)), 0);
        assert_eq!(
            check(&e, &m, hdr(Command::Read, 0, size, 512)),
            errno::EINVAL
        );
        assert_eq!(
            check(&e, &m, hdr(Command::Write, 0, size - 512, 1024)),
            errno::ENOSPC
        );
        assert_eq!(
            check(&e, &m, hdr(Command::WriteZeroes, 0, u64::MAX, 512)),
            errno::ENOSPC
        );
        assert_eq!(check(&e, &m, hdr(Command::Read, 0, 1, 512)), errno::EINVAL);
        assert_eq!(check(&e, &m, hdr(Command::Read, 0, 0, 0)), errno::EINVAL);
        assert_eq!(
            check(&e, &m, hdr(Command::Read, 0, 0, 64 << 20)),
            errno::EOVERFLOW
        );
        assert_eq!(
            check(&e, &m, hdr(Command::Write, 0, 0, 64 << 20)),
            errno::EINVAL
        );
        assert_eq!(
            check(&e, &m, hdr(Command::Unknown(42), 0, 0, 0)),
            errno::EINVAL
        );
        assert_eq!(
            check(&e, &m, hdr(Command::Read, 1 << 9, 0, 512)),
            errno::EINVAL
        );
        assert_eq!(
            check(&e, &m, hdr(Command::Read, cflags::DF, 0, 512)),
            errno::EINVAL
        );
        assert_eq!(check(&e, &m, hdr(Command::Write, cflags::FUA, 0, 512)), 0);
        assert_eq!(check(&e, &m, hdr(Command::Flush, 0, 1, 0)), errno::EINVAL);
        assert_eq!(
            check(&e, &m, hdr(Command::BlockStatus, 0, 0, 512)),
            errno::EINVAL
        );
        let sr = TransmissionMode::structured(Some(1));
        assert_eq!(check(&e, &sr, hdr(Command::Read, cflags::DF, 0, 512)), 0);
        assert_eq!(
            check(&e, &sr, hdr(Command::BlockStatus, cflags::REQ_ONE, 0, 512)),
            0
        );
        let ro = Export::new("", e.backend().clone()).read_only(true);
        assert_eq!(check(&ro, &m, hdr(Command::Write, 0, 0, 512)), errno::EPERM);
        assert_eq!(check(&ro, &m, hdr(Command::Trim, 0, 0, 512)), errno::EPERM);
    }

    #[test]
    fn payload_lengths_keep_the_stream_in_sync() {
        let ext = TransmissionMode::extended(None);
        let m = TransmissionMode::simple();
        assert_eq!(payload_len(&hdr(Command::Write, 0, 0, 77), &m), 77);
        assert_eq!(
            payload_len(&hdr(Command::Read, cflags::PAYLOAD_LEN, 0, 77), &m),
            0
        );
        assert_eq!(
            payload_len(&hdr(Command::Read, cflags::PAYLOAD_LEN, 0, 77), &ext),
            77
        );
        assert_eq!(errno::from_backend(libc::EBADF), errno::EIO);
        assert_eq!(errno::from_backend(libc::ENOSPC), errno::ENOSPC);
    }
}
