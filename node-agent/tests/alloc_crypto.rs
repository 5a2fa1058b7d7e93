//! Sealing and opening data packets must not allocate. Its own test binary, because it installs
//! a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use agent::crypto::{EXPORT_LEN, OVERHEAD, Session, SessionKeys};
use agent::dtls::Role;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn seal_and_open_do_not_allocate() {
    let material = [9u8; EXPORT_LEN];
    let mut tx = Session::new(&SessionKeys::from_exported(&material, Role::Client)).unwrap();
    let mut rx = Session::new(&SessionKeys::from_exported(&material, Role::Server)).unwrap();
    let mut buf = [0u8; 1500];
    let payload = 1400;
    // Warm up (lazy CPU feature detection and the like), then count.
    for _ in 0..10 {
        let n = tx.seal(&mut buf, payload, 5).unwrap();
        rx.open(&mut buf[..n]).unwrap();
    }
    let probe = ALLOCATIONS.load(Ordering::Relaxed);
    drop(std::hint::black_box(vec![0u8; 8]));
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > probe, "the counter works");

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..10_000usize {
        let len = i % (payload + 1);
        let n = tx.seal(&mut buf, len, 5).unwrap();
        assert_eq!(n, len + OVERHEAD);
        let range = rx.open(&mut buf[..n]).unwrap();
        assert_eq!(range.len(), len);
        // Rejections must not allocate either.
        assert!(rx.open(&mut buf[..n]).is_err());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "allocations during 10k seal+open");
}
