//! Page-aligned I/O buffers, reused by the thread that last dropped one.
//!
//! Direct I/O (`O_DIRECT`, see `file.rs`) needs buffers aligned in memory; a `Vec<u8>` is not.
//! The hot paths (a FUSE read, a copy piece) take an [`IoBuf`] instead, so the device can hand
//! it to the kernel as it is, without a bounce copy. A buffer of up to [`KEEP_BYTES`] goes back
//! to its thread when dropped and is reused by the next request on that thread: no allocation,
//! no page faults and no zeroing per request (the request threads are long-lived).
//!
//! The content of a new `IoBuf` is whatever the buffer held before (zeroes when freshly
//! allocated): callers fill it completely before reading it, as every read into it does.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every buffer: a page, which satisfies the memory alignment of direct I/O on
/// any device.
pub const IO_ALIGN: usize = 4096;

/// Buffers up to this capacity are kept per thread for reuse: a FUSE request is at most 1 MiB
/// with the default `max_pages_limit`, and so is the copy piece of a 1 MiB write. Larger ones
/// are freed on drop. Memory kept: at most [`SPARES`] of these per request thread, 1 MiB each
/// in practice.
const KEEP_BYTES: usize = 2 << 20;

/// An aligned allocation, zero-initialised when made.
struct Block {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Block` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for Block {}
// SAFETY: shared access only reads the memory (`IoBuf`'s `Deref`); writing needs `&mut`.
unsafe impl Sync for Block {}

impl Block {
    fn new(cap: usize) -> Block {
        let cap = cap.max(1).next_multiple_of(IO_ALIGN);
        let layout = Layout::from_size_align(cap, IO_ALIGN).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Block { ptr, cap }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, IO_ALIGN).expect("buffer layout");
        // SAFETY: allocated in `Block::new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Buffers kept per thread: a request may hold two at once (its own and a span or bounce).
const SPARES: usize = 2;

thread_local! {
    static SPARE: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// `len` bytes of page-aligned memory; see the module documentation for its content.
pub struct IoBuf {
    block: Option<Block>,
    len: usize,
}

impl IoBuf {
    pub fn new(len: usize) -> IoBuf {
        let spare = SPARE
            .try_with(|s| {
                let mut spares = s.borrow_mut();
                // The smallest that fits.
                let i = (0..spares.len())
                    .filter(|&i| spares[i].cap >= len)
                    .min_by_key(|&i| spares[i].cap)?;
                Some(spares.swap_remove(i))
            })
            .ok()
            .flatten();
        IoBuf {
            block: Some(spare.unwrap_or_else(|| Block::new(len))),
            len,
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let b = self.block.as_ref().expect("present until drop");
        // SAFETY: `len <= cap`, the memory was initialised at allocation and is only ever
        // written through `&mut [u8]`.
        unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let b = self.block.as_mut().expect("present until drop");
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        if block.cap > KEEP_BYTES {
            return;
        }
        // Keep the largest buffers. During thread exit the thread-local may be gone: the
        // buffer is then simply freed.
        let _ = SPARE.try_with(|s| {
            let mut spares = s.borrow_mut();
            if spares.len() < SPARES {
                spares.push(block);
            } else if let Some(smallest) = spares.iter_mut().min_by_key(|b| b.cap)
                && smallest.cap < block.cap
            {
                *smallest = block;
            }
        });
    }
}

/// Whether `buf` starts at an address aligned to `align` (a power of two).
pub fn is_aligned(buf: &[u8], align: usize) -> bool {
    (buf.as_ptr() as usize) & (align - 1) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_reused_and_sized() {
        let mut a = IoBuf::new(10_000);
        assert_eq!(a.len(), 10_000);
        assert!(is_aligned(&a, IO_ALIGN));
        assert!(a.iter().all(|&b| b == 0), "fresh buffers are zeroed");
        a[9_999] = 7;
        let ptr = a.as_ptr();
        drop(a);
        let b = IoBuf::new(5_000);
        assert_eq!(b.as_ptr(), ptr, "the thread's spare is reused");
        let spare2 = IoBuf::new(64);
        let spare2_ptr = spare2.as_ptr();
        drop(spare2);
        assert_eq!(b.len(), 5_000);
        let c = IoBuf::new(100);
        assert_ne!(c.as_ptr(), ptr, "a buffer in use is not handed out twice");
        assert_eq!(c.as_ptr(), spare2_ptr, "the second spare is reused");
        assert!(is_aligned(&c, IO_ALIGN));
        drop(b);
        let big = IoBuf::new(KEEP_BYTES + 1);
        assert_eq!(big.len(), KEEP_BYTES + 1);
        drop(big);
        let d = IoBuf::new(0);
        assert!(d.is_empty());
    }
}
