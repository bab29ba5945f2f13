// The allocator's safety cases, shared by `alloc_safety.rs` (exact mode) and
// `alloc_safety_sampled.rs` (sampled mode): each includes this file after declaring its
// `ALLOC`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;

fn fill(ptr: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: `ptr` is a live block of at least `len` bytes.
        unsafe { ptr.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(ptr: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: `ptr` is a live block of at least `len` bytes.
        assert_eq!(
            unsafe { ptr.add(i).read() },
            seed.wrapping_add(i as u8),
            "byte {i}"
        );
    }
}

const SIZES: [usize; 10] = [1, 2, 7, 8, 15, 16, 17, 100, 4096, 65_537];

#[test]
fn every_alignment_and_many_sizes() {
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in SIZES {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            let ptr = unsafe { ALLOC.alloc(layout) };
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % align, 0, "align {align} size {size}");
            fill(ptr, size, shift as u8);
            check(ptr, size, shift as u8);
            // SAFETY: allocated above with `layout`.
            unsafe { ALLOC.dealloc(ptr, layout) };
        }
    }
}

#[test]
fn alloc_zeroed_is_zeroed_at_every_alignment() {
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in SIZES {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below.
            let ptr = unsafe { ALLOC.alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % align, 0);
            // SAFETY: `ptr` is live for `size` bytes.
            assert!((0..size).all(|i| unsafe { ptr.add(i).read() } == 0));
            // SAFETY: allocated above with `layout`.
            unsafe { ALLOC.dealloc(ptr, layout) };
        }
    }
}

#[test]
fn realloc_grows_and_shrinks_keeping_data() {
    for shift in 0..=12 {
        let align = 1usize << shift;
        let layout = Layout::from_size_align(64, align).unwrap();
        // SAFETY: non-zero size.
        let mut ptr = unsafe { ALLOC.alloc(layout) };
        fill(ptr, 64, 3);
        let mut current = layout;
        for new_size in [65, 1000, 100_000, 70, 64, 33, 1] {
            // SAFETY: `ptr` is live with `current`; the new size is non-zero.
            let grown = unsafe { ALLOC.realloc(ptr, current, new_size) };
            assert!(!grown.is_null());
            assert_eq!(grown as usize % align, 0);
            check(grown, new_size.min(current.size()).min(33), 3);
            ptr = grown;
            current = Layout::from_size_align(new_size, align).unwrap();
            fill(ptr, new_size.min(64), 3);
        }
        // SAFETY: live with `current`.
        unsafe { ALLOC.dealloc(ptr, current) };
    }
}

#[test]
fn zero_sized_requests_and_types() {
    // The `GlobalAlloc` contract forbids zero-sized requests from callers, but the allocator
    // still hands out a usable, freeable pointer for them.
    let layout = Layout::from_size_align(0, 8).unwrap();
    // SAFETY: this allocator accepts a zero size; freed with the same layout.
    let ptr = unsafe { ALLOC.alloc(layout) };
    assert!(!ptr.is_null());
    // SAFETY: allocated above with `layout`.
    unsafe { ALLOC.dealloc(ptr, layout) };

    let units: Vec<()> = vec![(); 10_000];
    assert_eq!(units.len(), 10_000);
    let boxed: Box<[u8]> = Vec::new().into_boxed_slice();
    assert!(boxed.is_empty());
    let mut v: Vec<u64> = Vec::with_capacity(0);
    v.extend(0..1000);
    v.truncate(0);
    v.shrink_to_fit();
    assert_eq!(v.capacity(), 0);
}

#[test]
fn blocks_freed_on_another_thread() {
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let freer = std::thread::spawn(move || {
        let mut freed = 0;
        for batch in rx {
            for (i, block) in batch.iter().enumerate() {
                assert!(block.iter().all(|&b| b == i as u8));
            }
            freed += batch.len();
        }
        freed
    });
    for _ in 0..50 {
        let batch: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 10 + i * 7]).collect();
        tx.send(batch).unwrap();
    }
    drop(tx);
    assert_eq!(freer.join().unwrap(), 5_000);
}

#[test]
fn threads_exiting_while_holding_allocations() {
    let kept: Vec<Vec<String>> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                // Thread-locals with destructors allocate and free during thread exit.
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                SCRATCH.with(|s| s.borrow_mut().extend_from_slice(&[t as u8; 4096]));
                (0..100).map(|i| format!("thread {t} string {i}")).collect()
            })
            .join()
            .unwrap()
        })
        .collect();
    for (t, strings) in kept.iter().enumerate() {
        assert_eq!(strings.len(), 100);
        assert_eq!(strings[42], format!("thread {t} string 42"));
    }
}
