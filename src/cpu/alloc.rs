//! A global allocator that starts every large allocation on a cache line, for programs that
//! train on the CPU.
//!
//! Why: a `Vec<f32>` is aligned to 4 bytes by contract and to 16 by glibc's `malloc`, so a
//! tensor's data usually starts inside a 64-byte line, and then every 16-lane vector load or
//! store of a fast CPU loop spans two lines. Measured on this project's 2-vCPU Xeon (AVX-512):
//! the GEMM's packed B panel at such an offset ran at 50-65% of its aligned speed (hence
//! `sgemm`'s own aligned buffers), and with this allocator installed LeNet-5's training step at
//! batch 256 went from 21-26 to 17-22 ms. PyTorch aligns its CPU tensors to 64 bytes for the
//! same reason. A library cannot choose the allocator of the program that uses it, so
//! this is opt-in: the `nabla` command, the examples and the benches install it, and any program
//! can with two lines:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;
//!
//! fn main() {
//!     let v = vec![0f32; 4096];
//!     assert_eq!(v.as_ptr() as usize % 64, 0);
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes start on a cache line; smaller ones (strings, small
/// vectors, nodes) keep the system's alignment and its faster path.
const LARGE: usize = 1024;

/// The cache line, in bytes.
const LINE: usize = 64;

/// The system allocator, with allocations of at least 1 KiB aligned to 64 bytes (see the
/// module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheAligned;

/// The layout actually requested from the system for `layout`.
fn widened(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LINE {
        // Cannot fail: the size fitted the smaller alignment, and 64 is a power of two far
        // below any size limit that would make the rounded size overflow.
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every block is allocated and freed by `System` with the same (widened) layout; the
// widened layout satisfies the caller's, since its alignment is only ever raised.
unsafe impl GlobalAlloc for CacheAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded; `layout` has a non-zero size by the caller's contract.
        unsafe { System.alloc(widened(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(widened(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`, so from System with its widening.
        unsafe { System.dealloc(ptr, widened(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = (widened(layout), Layout::from_size_align(new_size, layout.align()).map(widened));
        match new {
            // The same alignment before and after: the system may grow the block in place.
            // SAFETY: `ptr` was allocated by System with `old`; `new_size` is non-zero.
            Ok(new) if new.align() == old.align() => unsafe { System.realloc(ptr, old, new_size) },
            Ok(new) => {
                // Crossing the 1 KiB line: a fresh block of the new alignment, then a copy.
                // SAFETY: `fresh` holds `new_size` bytes and `ptr` `layout.size()`; they are
                // distinct blocks, and `ptr` is freed with the layout it was allocated with.
                unsafe {
                    let fresh = System.alloc(new);
                    if !fresh.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        System.dealloc(ptr, old);
                    }
                    fresh
                }
            }
            Err(_) => std::ptr::null_mut(),
        }
    }
}
