//! Places fuser's request buffers so that a WRITE request's data lands page-aligned.
//!
//! fuser reads each request from `/dev/fuse` into a buffer of its own (one per request thread,
//! `vec![0; 16 MiB + 4096]`). A WRITE request's data follows the 40-byte `fuse_in_header` and
//! the 40-byte `fuse_write_in`, so it starts 80 bytes into that buffer. Direct I/O needs the
//! memory aligned to the device's DMA alignment (512 bytes on most disks, a page where the
//! kernel does not say), so every write was copied once more into an aligned bounce buffer.
//! [`RequestBufferAlloc`], installed as the global allocator by the `snapfs` binary, serves
//! allocations of exactly that size at an address 80 bytes before an `IO_ALIGN` (page)
//! boundary, the strictest alignment `FileDevice` asks for, and passes every other allocation to
//! the system allocator unchanged. If fuser's buffer size ever changes, nothing is placed and writes are
//! copied as before: the arrangement can lose its speed, never correctness.

use crate::device::IO_ALIGN;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// The size of fuser's request buffer (`MAX_WRITE_SIZE + 4096` in fuser 0.18).
pub const FUSER_REQUEST_BUFFER_BYTES: usize = (16 << 20) + 4096;
/// Where a WRITE request's data starts in the buffer: `fuse_in_header` + `fuse_write_in`.
pub const WRITE_DATA_OFFSET: usize = 80;
/// The alignment the placed buffer gives the write data: any memory alignment `FileDevice`
/// accepts for direct I/O divides it.
pub const WRITE_DATA_ALIGN: usize = IO_ALIGN;
/// Room for the placement and for the word before the buffer that records it.
const SLACK: usize = 2 * WRITE_DATA_ALIGN;

/// The global allocator of the `snapfs` binary: see the module documentation.
pub struct RequestBufferAlloc;

fn placed(layout: Layout) -> bool {
    layout.size() == FUSER_REQUEST_BUFFER_BYTES && layout.align() <= 16
}

fn raw_layout(layout: Layout) -> Layout {
    // Cannot fail: the size is fixed and far from overflowing, the alignment 16.
    Layout::from_size_align(layout.size() + SLACK, 16).expect("placed layout")
}

/// The placed address inside the raw block at `raw`, with its distance from `raw` stored in
/// the word just before it. Invariant: `raw + 8 <= placed`, `placed + layout.size()` is inside
/// the block, and `placed + WRITE_DATA_OFFSET` is a multiple of `WRITE_DATA_ALIGN`.
unsafe fn place(raw: *mut u8) -> *mut u8 {
    let addr = raw as usize;
    let data = (addr + 8 + WRITE_DATA_OFFSET).next_multiple_of(WRITE_DATA_ALIGN);
    let offset = data - WRITE_DATA_OFFSET - addr;
    // SAFETY: 8 <= offset < 8 + WRITE_DATA_ALIGN <= SLACK, so the word before the buffer and
    // the buffer itself are inside the raw block. The buffer is 16-aligned, as its layout asks:
    // the data boundary is WRITE_DATA_ALIGN-aligned and WRITE_DATA_OFFSET is a multiple of 16.
    unsafe {
        let placed = raw.add(offset);
        (placed as *mut usize).sub(1).write(offset);
        placed
    }
}

unsafe fn raw_of(placed: *mut u8) -> *mut u8 {
    // SAFETY: `placed` came from `place`, which wrote the distance just before it.
    unsafe {
        let offset = (placed as *mut usize).sub(1).read();
        placed.sub(offset)
    }
}

/// Allocates through `system` (the system allocator's `alloc` or `alloc_zeroed`), placing
/// fuser's buffers.
unsafe fn alloc_through(layout: Layout, system: unsafe fn(&System, Layout) -> *mut u8) -> *mut u8 {
    // SAFETY: the caller's contract is GlobalAlloc's; `place` stays inside the raw block.
    unsafe {
        if !placed(layout) {
            return system(&System, layout);
        }
        let raw = system(&System, raw_layout(layout));
        if raw.is_null() { raw } else { place(raw) }
    }
}

// SAFETY: every allocation either goes to `System` unchanged or is a sub-block of a `System`
// block that is large enough (see `place`) and freed through `raw_of` with the same layout.
unsafe impl GlobalAlloc for RequestBufferAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { alloc_through(layout, <System as GlobalAlloc>::alloc) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // calloc: fresh pages stay untouched until the kernel writes a request into them.
        unsafe { alloc_through(layout, <System as GlobalAlloc>::alloc_zeroed) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if placed(layout) {
                System.dealloc(raw_of(ptr), raw_layout(layout));
            } else {
                System.dealloc(ptr, layout);
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            if !placed(layout) && !placed(new_layout) {
                return System.realloc(ptr, layout, new_size);
            }
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// Notes the alignment of the first large write's data, once per process: an unaligned one
/// means the buffers were not placed (another fuser buffer size, or a program without
/// [`RequestBufferAlloc`]), and every write costs one more copy.
pub fn check_write_data(data: &[u8]) {
    static CHECKED: AtomicBool = AtomicBool::new(false);
    // A load first: every write request passes here, and a plain read keeps the flag's cache
    // line shared between the request threads.
    if data.len() < 4096 || CHECKED.load(Ordering::Relaxed) || CHECKED.swap(true, Ordering::Relaxed)
    {
        return;
    }
    let past = data.as_ptr() as usize % WRITE_DATA_ALIGN;
    if past == 0 {
        log::debug!("write data arrives on a {WRITE_DATA_ALIGN}-byte boundary: no copy needed");
    } else {
        log::info!(
            "write data arrives {past} bytes past a {WRITE_DATA_ALIGN}-byte boundary: the FUSE \
             request buffers are not placed, so each direct write is copied once more"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer_layout() -> Layout {
        Layout::from_size_align(FUSER_REQUEST_BUFFER_BYTES, 1).unwrap()
    }

    fn check_placed(p: *mut u8) {
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0, "the buffer keeps its 16-byte alignment");
        assert_eq!(
            (p as usize + WRITE_DATA_OFFSET) % WRITE_DATA_ALIGN,
            0,
            "a write's data starts on a {WRITE_DATA_ALIGN}-byte boundary"
        );
    }

    #[test]
    fn fuser_sized_buffers_put_write_data_on_a_boundary() {
        let a = RequestBufferAlloc;
        let layout = buffer_layout();
        // Several at once, as the request threads hold them: each placed, none overlapping
        // its neighbour's slack, all writable end to end.
        let ptrs: Vec<*mut u8> = (0..4).map(|_| unsafe { a.alloc(layout) }).collect();
        for (i, &p) in ptrs.iter().enumerate() {
            check_placed(p);
            unsafe {
                p.write_bytes(i as u8 + 1, layout.size());
            }
        }
        for (i, &p) in ptrs.iter().enumerate() {
            let s = unsafe { std::slice::from_raw_parts(p, layout.size()) };
            assert!(s.iter().all(|&b| b == i as u8 + 1), "buffer {i} intact");
            unsafe { a.dealloc(p, layout) };
        }
        let z = unsafe { a.alloc_zeroed(layout) };
        check_placed(z);
        let s = unsafe { std::slice::from_raw_parts(z, layout.size()) };
        assert!(s.iter().all(|&b| b == 0), "alloc_zeroed gives zeros");
        unsafe { a.dealloc(z, layout) };
    }

    #[test]
    fn realloc_across_the_placed_size_keeps_the_contents() {
        let a = RequestBufferAlloc;
        let small = Layout::from_size_align(1000, 1).unwrap();
        let p = unsafe { a.alloc(small) };
        unsafe { p.write_bytes(7, 1000) };
        // Into the placed size and out of it again.
        let q = unsafe { a.realloc(p, small, FUSER_REQUEST_BUFFER_BYTES) };
        check_placed(q);
        let s = unsafe { std::slice::from_raw_parts(q, 1000) };
        assert!(s.iter().all(|&b| b == 7));
        let r = unsafe { a.realloc(q, buffer_layout(), 3000) };
        let s = unsafe { std::slice::from_raw_parts(r, 1000) };
        assert!(s.iter().all(|&b| b == 7));
        unsafe { a.dealloc(r, Layout::from_size_align(3000, 1).unwrap()) };
    }

    #[test]
    fn other_sizes_and_alignments_pass_through() {
        let a = RequestBufferAlloc;
        for layout in [
            Layout::from_size_align(FUSER_REQUEST_BUFFER_BYTES - 1, 1).unwrap(),
            Layout::from_size_align(FUSER_REQUEST_BUFFER_BYTES, 4096).unwrap(),
            Layout::from_size_align(64, 8).unwrap(),
        ] {
            let p = unsafe { a.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % layout.align(), 0);
            unsafe {
                p.write_bytes(1, layout.size());
                a.dealloc(p, layout);
            }
        }
    }
}
