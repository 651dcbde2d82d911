//! [`Export`]: a named backend as clients see it, and [`TransmissionMode`]: what a
//! connection negotiated.

use std::sync::Arc;
use std::time::Duration;

use oxio_block::{BlockSizes, Capabilities, SharedBackend};

use super::stats::ExportStats;
use crate::wire::tflags;

/// Largest payload this server accepts or sends in one request (the kernel's maximum).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// One named export.
#[derive(Debug)]
pub struct Export {
    name: String,
    description: Option<String>,
    backend: SharedBackend,
    caps: Capabilities,
    stats: Arc<ExportStats>,
    busy_poll: Duration,
}

impl Export {
    /// An export called `name` (may be empty) on `backend`, writable if the backend is.
    pub fn new(name: impl Into<String>, backend: SharedBackend) -> Self {
        let mut caps = backend.capabilities();
        caps.block_size.max = caps.block_size.max.min(MAX_PAYLOAD);
        Export {
            name: name.into(),
            description: None,
            backend,
            caps,
            stats: Arc::default(),
            busy_poll: Duration::ZERO,
        }
    }

    /// Sets the description shown by `nbdinfo` and `OPT_LIST`.
    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Lets each connection busy-poll its socket for up to `max` before sleeping, adapting
    /// the window to the traffic (zero, the default, never polls). Trades some CPU on a busy
    /// connection for fewer wake-ups on both sides: the client pays less per request.
    #[must_use]
    pub fn busy_poll(mut self, max: Duration) -> Self {
        self.busy_poll = max;
        self
    }

    /// The configured polling maximum per wait.
    pub fn busy_poll_max(&self) -> Duration {
        self.busy_poll
    }

    /// Refuses writes, trims and zeroing with `EPERM`, and says so in the flags.
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.caps.read_only |= read_only;
        self
    }

    /// Requires offsets and lengths to be multiples of `min` (a power of two ≤ 64 KiB,
    /// advertised in `NBD_INFO_BLOCK_SIZE`); misaligned requests get `EINVAL`.
    #[must_use]
    pub fn min_block_size(mut self, min: u32) -> Self {
        if min.is_power_of_two() && min <= 65536 {
            let b = &mut self.caps.block_size;
            b.min = b.min.max(min);
            b.preferred = b.preferred.max(b.min);
        }
        self
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The export's description, if any.
    pub fn description_text(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The capabilities clients see (the backend's, narrowed by this export's settings).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Block size constraints as advertised.
    pub fn block_sizes(&self) -> BlockSizes {
        self.caps.block_size
    }

    /// Counters shared by every connection to this export.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// The 16-bit transmission flags for a connection in `mode`: what `NBD_INFO_EXPORT`
    /// carries, and what kernel attach passes to `NBD_SET_FLAGS`.
    pub fn transmission_flags(&self, mode: &TransmissionMode) -> u16 {
        let c = &self.caps;
        let writable = !c.read_only;
        let mut f = tflags::HAS_FLAGS | tflags::SEND_CACHE;
        let set = |f: &mut u16, on: bool, bit: u16| {
            if on {
                *f |= bit;
            }
        };
        set(&mut f, c.read_only, tflags::READ_ONLY);
        set(&mut f, c.flush, tflags::SEND_FLUSH);
        set(&mut f, c.fua, tflags::SEND_FUA);
        set(&mut f, c.rotational, tflags::ROTATIONAL);
        set(&mut f, writable && c.discard, tflags::SEND_TRIM);
        set(
            &mut f,
            writable && c.write_zeroes,
            tflags::SEND_WRITE_ZEROES,
        );
        set(
            &mut f,
            writable && c.write_zeroes && c.fast_zero,
            tflags::SEND_FAST_ZERO,
        );
        set(&mut f, c.multi_conn, tflags::CAN_MULTI_CONN);
        // Every READ is answered with one data chunk, so DF always holds; it may only be
        // advertised once structured replies are negotiated.
        set(&mut f, mode.structured_replies(), tflags::SEND_DF);
        f
    }
}

/// The exports a server offers. The first one is the default (empty-name) export unless
/// one is actually named "".
#[derive(Debug, Clone, Default)]
pub struct ExportSet {
    exports: Vec<Arc<Export>>,
}

impl ExportSet {
    /// A set of `exports`, in `OPT_LIST` order.
    pub fn new(exports: Vec<Arc<Export>>) -> Self {
        ExportSet { exports }
    }

    /// Finds an export by name; the empty name selects the default export.
    pub fn find(&self, name: &str) -> Option<&Arc<Export>> {
        self.exports.iter().find(|e| e.name() == name).or_else(|| {
            if name.is_empty() {
                self.exports.first()
            } else {
                None
            }
        })
    }

    /// Every export, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Export>> {
        self.exports.iter()
    }

    /// Whether there are no exports.
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }
}

/// Which reply format a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    Simple,
    Structured,
    Extended,
}

/// What a connection negotiated before transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionMode {
    reply: ReplyMode,
    /// The `base:allocation` context id, when selected.
    allocation_context: Option<u32>,
}

impl TransmissionMode {
    /// Simple replies, no metadata contexts: what the Linux kernel speaks.
    pub fn simple() -> Self {
        TransmissionMode {
            reply: ReplyMode::Simple,
            allocation_context: None,
        }
    }

    /// Structured replies, with `base:allocation` under `context` if selected.
    pub fn structured(context: Option<u32>) -> Self {
        TransmissionMode {
            reply: ReplyMode::Structured,
            allocation_context: context,
        }
    }

    /// Extended headers (which imply structured replies).
    pub fn extended(context: Option<u32>) -> Self {
        TransmissionMode {
            reply: ReplyMode::Extended,
            allocation_context: context,
        }
    }

    /// Structured (or extended) replies are in use.
    pub fn structured_replies(&self) -> bool {
        self.reply != ReplyMode::Simple
    }

    /// 32-byte extended headers are in use.
    pub fn extended_headers(&self) -> bool {
        self.reply == ReplyMode::Extended
    }

    /// The `base:allocation` context id, if selected.
    pub fn allocation_context(&self) -> Option<u32> {
        self.allocation_context
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxio_block::memory::MemoryBackend;

    fn export() -> Export {
        Export::new("a", Arc::new(MemoryBackend::new(1 << 20).unwrap()))
    }

    #[test]
    fn flags_follow_capabilities_and_mode() {
        let e = export();
        let simple = e.transmission_flags(&TransmissionMode::simple());
        for bit in [
            tflags::HAS_FLAGS,
            tflags::SEND_FLUSH,
            tflags::SEND_FUA,
            tflags::SEND_TRIM,
        ] {
            assert_ne!(simple & bit, 0);
        }
        assert_eq!(simple & (tflags::SEND_DF | tflags::READ_ONLY), 0);
        assert_ne!(simple & tflags::CAN_MULTI_CONN, 0);
        let sr = e.transmission_flags(&TransmissionMode::structured(None));
        assert_ne!(sr & tflags::SEND_DF, 0);
        let ro = export()
            .read_only(true)
            .transmission_flags(&TransmissionMode::simple());
        assert_ne!(ro & tflags::READ_ONLY, 0);
        assert_eq!(
            ro & (tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_FAST_ZERO),
            0
        );
    }

    #[test]
    fn default_export_and_lookup() {
        let set = ExportSet::new(vec![
            Arc::new(export()),
            Arc::new(Export::new("b", export().backend().clone())),
        ]);
        assert_eq!(set.find("").unwrap().name(), "a");
        assert_eq!(set.find("b").unwrap().name(), "b");
        assert!(set.find("c").is_none());
        let e = export().min_block_size(512).min_block_size(3);
        assert_eq!(e.block_sizes().min, 512);
    }
}
