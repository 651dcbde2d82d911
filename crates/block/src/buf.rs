//! [`IoBuf`]: an owned byte buffer aligned to 4 KiB.
//!
//! Why not `Vec<u8>`: `O_DIRECT` needs the memory address aligned to the logical block size,
//! and io_uring needs the buffer to stay put until the kernel completes the request. An
//! `IoBuf` is a single heap allocation whose address never changes while it is owned by a
//! request, and whose start is always 4096-aligned.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`IoBuf`]: the largest logical block size in practice.
pub const IO_ALIGN: usize = 4096;

/// An owned, 4 KiB-aligned, zero-initialised byte buffer with a fixed capacity and a length
/// that can shrink and grow within it (so buffers can be reused from a pool).
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: `IoBuf` owns its allocation exclusively (like `Vec<u8>`); nothing else aliases it.
unsafe impl Send for IoBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is safe to share between threads.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A buffer of `len` zero bytes.
    ///
    /// # Panics
    /// Only if the allocation itself fails (as `Vec` does) or `len` is near `isize::MAX`.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return IoBuf {
                ptr: Self::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        IoBuf { ptr, len, cap: len }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// Bytes the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length to `len` (≤ capacity). New bytes keep whatever they held before
    /// (zero for a fresh buffer). Returns `false`, changing nothing, if `len` is too big.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.cap {
            return false;
        }
        self.len = len;
        true
    }

    /// Start address, for I/O submission.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start address for writing, for I/O submission.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, IO_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("I/O buffer of {cap} bytes is too large"),
        }
    }

    fn dangling() -> NonNull<u8> {
        // An aligned, non-null, never-dereferenced address for empty buffers.
        NonNull::new(std::ptr::without_provenance_mut::<u8>(IO_ALIGN))
            .unwrap_or(NonNull::dangling())
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout and not freed since.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `cap` ≥ `len` initialised bytes owned by `self` (or is a
        // dangling aligned pointer with `len` 0, which is valid for an empty slice).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for IoBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl PartialEq for IoBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_resizable() {
        for len in [0, 1, 511, 4096, 65537] {
            let mut b = IoBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
            b.iter_mut().for_each(|x| *x = 7);
            assert!(b.set_len(len / 2));
            assert!(!b.set_len(len + 1));
            assert!(b.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn clone_and_from_slice_copy() {
        let b = IoBuf::from_slice(b"hello");
        let c = b.clone();
        assert_eq!(&*c, b"hello");
        assert_eq!(b, c);
    }
}
