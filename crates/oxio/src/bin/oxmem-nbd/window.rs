//! A window onto another backend: `--num N` splits one memory into N devices, each a range
//! `[offset, offset + len)` of the same backend (one OmniXtend connection serves them all).
//! Every request is checked against the window before it is translated, so no device ever
//! reaches a neighbour's bytes.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::BorrowedFd;

use oxio_block::{
    BlockBackend, BlockError, BlockQueue, Capabilities, Completion, DirectAccess, Extent, Op,
    QueueFull, Request, SharedBackend,
};

/// Bytes `[offset, offset + len)` of `inner`, as a device of `len` bytes.
#[derive(Debug)]
pub struct Window {
    inner: SharedBackend,
    offset: u64,
    len: u64,
}

impl Window {
    /// Fails if the window does not fit inside `inner`.
    pub fn new(inner: SharedBackend, offset: u64, len: u64) -> Result<Self, String> {
        let size = inner.capabilities().size;
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= size => Ok(Window { inner, offset, len }),
            _ => Err(format!(
                "window {offset:#x}+{len} does not fit a {size}-byte backend"
            )),
        }
    }
}

impl BlockBackend for Window {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            size: self.len,
            ..self.inner.capabilities()
        }
    }

    fn open_queue(&self, depth: usize) -> oxio_block::Result<Box<dyn BlockQueue>> {
        Ok(Box::new(WindowQueue {
            inner: self.inner.open_queue(depth)?,
            offset: self.offset,
            len: self.len,
            refused: Vec::new(),
        }))
    }

    fn extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> oxio_block::Result<()> {
        self.capabilities().check_range(offset, len)?;
        self.inner.extents(self.offset + offset, len, out)
    }

    fn describe(&self) -> String {
        format!(
            "{} [{:#x}+{}]",
            self.inner.describe(),
            self.offset,
            self.len
        )
    }

    fn direct(&self) -> Option<&dyn DirectAccess> {
        self.inner.direct().map(|_| self as &dyn DirectAccess)
    }
}

impl Window {
    /// The inner backend's range for `[offset, offset + len)` of the window, cut at the
    /// window's end (callers range-check first; this keeps neighbours out regardless).
    fn inner_range(&self, offset: u64, len: u64) -> (u64, u64) {
        let len = len.min(self.len.saturating_sub(offset));
        (self.offset + offset.min(self.len), len)
    }
}

impl DirectAccess for Window {
    fn read_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let (at, len) = self.inner_range(offset, len);
        match self.inner.direct() {
            Some(d) if len > 0 => d.read_with(at, len, f),
            _ => f(&[]),
        }
    }

    fn write_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    ) -> oxio_block::Result<io::Result<usize>> {
        let (at, len) = self.inner_range(offset, len);
        match self.inner.direct() {
            Some(d) if len > 0 => d.write_with(at, len, f),
            _ => Err(BlockError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }
}

#[derive(Debug)]
struct WindowQueue {
    inner: Box<dyn BlockQueue>,
    offset: u64,
    len: u64,
    /// Requests refused at submission (outside the window), completed at the next reap.
    refused: Vec<Completion>,
}

impl WindowQueue {
    /// Moves every offset of `op` by `delta` (forward into the inner backend, or back).
    fn shift(op: &mut Op, forward: bool, delta: u64) {
        let offset = match op {
            Op::Read { offset, .. }
            | Op::Write { offset, .. }
            | Op::Discard { offset, .. }
            | Op::WriteZeroes { offset, .. }
            | Op::Cache { offset, .. } => offset,
            Op::Flush => return,
        };
        // In range by construction: checked against the window before shifting forward.
        *offset = if forward {
            *offset + delta
        } else {
            *offset - delta
        };
    }
}

impl BlockQueue for WindowQueue {
    fn submit(&mut self, mut req: Request) -> Result<(), QueueFull> {
        if self.in_flight() >= self.depth() {
            return Err(QueueFull(req));
        }
        if let Some((offset, len)) = req.op.range() {
            if offset.checked_add(len).is_none_or(|end| end > self.len) {
                let size = self.len;
                self.refused.push(Completion::new(
                    req,
                    Err(BlockError::OutOfRange { offset, len, size }),
                ));
                return Ok(());
            }
        }
        Self::shift(&mut req.op, true, self.offset);
        self.inner.submit(req).map_err(|QueueFull(mut req)| {
            Self::shift(&mut req.op, false, self.offset);
            QueueFull(req)
        })
    }

    fn commit(&mut self) -> oxio_block::Result<()> {
        self.inner.commit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let refused = self.refused.len();
        out.append(&mut self.refused);
        refused + self.inner.reap(out)
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.inner.notifier()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.refused.len()
    }

    fn depth(&self) -> usize {
        self.inner.depth()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oxio_block::memory::MemoryBackend;
    use oxio_block::{BlockingQueue, IoBuf};

    use super::*;

    fn memory(size: u64) -> SharedBackend {
        Arc::new(MemoryBackend::new(size).unwrap())
    }

    #[test]
    fn windows_see_their_own_bytes_at_the_right_place() {
        let inner = memory(1 << 20);
        let a = Window::new(Arc::clone(&inner), 0, 512 << 10).unwrap();
        let b = Window::new(Arc::clone(&inner), 512 << 10, 512 << 10).unwrap();
        assert_eq!(b.capabilities().size, 512 << 10);
        let mut qb = BlockingQueue::new(b.open_queue(4).unwrap());
        qb.write_at(0, &[0xbb; 4096], false).unwrap();
        let mut whole = BlockingQueue::new(inner.open_queue(4).unwrap());
        assert_eq!(
            &whole.read_at(512 << 10, 4096).unwrap()[..],
            &[0xbb; 4096][..]
        );
        let mut qa = BlockingQueue::new(a.open_queue(4).unwrap());
        let seen = qa.read_at(0, 4096).unwrap();
        assert_eq!(&seen[..], &[0; 4096][..], "window a must not see b's write");
    }

    #[test]
    fn requests_outside_the_window_are_refused_not_forwarded() {
        let inner = memory(1 << 20);
        let a = Window::new(Arc::clone(&inner), 0, 512 << 10).unwrap();
        let mut q = a.open_queue(4).unwrap();
        let op = Op::Write {
            offset: (512 << 10) - 512,
            buf: IoBuf::from_slice(&[1; 4096]),
            fua: false,
        };
        q.submit(Request { tag: 7, op }).unwrap();
        q.submit(Request {
            tag: 8,
            op: Op::Discard {
                offset: u64::MAX,
                len: 2,
            },
        })
        .unwrap();
        q.commit().unwrap();
        let mut done = Vec::new();
        assert_eq!(q.reap(&mut done), 2);
        assert!(done
            .iter()
            .all(|c| matches!(c.result, Err(BlockError::OutOfRange { .. }))));
        assert!(done[0].buf.is_some(), "the write's buffer comes back");
        let mut whole = BlockingQueue::new(inner.open_queue(4).unwrap());
        let next = whole.read_at(512 << 10, 4096).unwrap();
        assert_eq!(
            &next[..],
            &[0; 4096][..],
            "nothing leaked into the next window"
        );
    }

    #[test]
    fn direct_access_is_shifted_and_cut_at_the_window() {
        let inner = memory(1 << 20);
        let b = Window::new(Arc::clone(&inner), 512 << 10, 256 << 10).unwrap();
        let d = b.direct().expect("memory has direct access");
        d.write_from(4096, &[0xcc; 8192]).unwrap();
        let mut whole = BlockingQueue::new(inner.open_queue(4).unwrap());
        let seen = whole.read_at((512 << 10) + 4096, 8192).unwrap();
        assert_eq!(&seen[..], &[0xcc; 8192][..]);
        let mut back = [0u8; 8192];
        d.read_into(4096, &mut back);
        assert_eq!(back, [0xcc; 8192]);
        // A range running past the window's end is cut there; one starting past it is refused.
        let mut offered = 0;
        d.write_with((256 << 10) - 100, 4096, &mut |s| {
            offered = s.iter().map(|s| s.len()).sum();
            Ok(0)
        })
        .unwrap()
        .unwrap();
        assert_eq!(offered, 100);
        assert!(d.write_with(256 << 10, 1, &mut |_| Ok(0)).is_err());
        let n = d.read_with(u64::MAX, 10, &mut |s| Ok(s.len())).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn windows_must_fit() {
        let inner = memory(1 << 20);
        assert!(Window::new(Arc::clone(&inner), 1 << 19, (1 << 19) + 1).is_err());
        assert!(Window::new(Arc::clone(&inner), u64::MAX, 2).is_err());
        assert!(Window::new(inner, 0, 0).is_err());
    }
}
