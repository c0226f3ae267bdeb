#![no_main]
//! See fuzz/src/lib.rs, `check_wire`, for the properties checked. On top of them: no single
//! allocation while decoding is larger than the codec's bound on a message (a length prefix is
//! checked before it is used to size a buffer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;

/// Records the largest single allocation.
struct Peak;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// A message body of at most MAX_MESSAGE bytes, its 5-byte header, and slack for the reader's
/// 16 KiB minimum reservation.
const BOUND: usize = homeport::pgwire::codec::MAX_MESSAGE + 5 + (64 << 10);

fuzz_target!(|data: &[u8]| {
    LARGEST.store(0, Ordering::Relaxed);
    checks::check_wire(data);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= BOUND, "allocated {largest} bytes at once");
});
