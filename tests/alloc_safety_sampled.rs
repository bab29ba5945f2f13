//! The `unsafe` code of `TrackingAllocator` in sampled mode, exercised as the global allocator:
//! the exact mode's cases (every alignment up to 4096, `realloc`, `alloc_zeroed`, zero sizes,
//! frees on other threads, exiting threads) with a mean so small that most blocks of more than
//! a few bytes are sampled, and blocks that cross from the inner allocator into the sampled
//! range and back as they grow and shrink.

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(256);

include!("support/alloc_cases.rs");

/// Grows a block a byte at a time, then shrinks it, checking its bytes at every step: with a
/// mean of 256 bytes, it moves into the sampled range, moves within it (out of its run), and is
/// resized in place there.
#[test]
fn realloc_across_the_sampled_boundary_keeps_data() {
    for align in [1, 8, 64, 4096] {
        let mut layout = Layout::from_size_align(1, align).unwrap();
        // SAFETY: non-zero size.
        let mut ptr = unsafe { ALLOC.alloc(layout) };
        fill(ptr, 1, 9);
        let (mut was_plain, mut became_sampled, mut moved_in_range, mut in_place) =
            (false, false, false, false);
        let sizes = (2..6_000).step_by(13).chain((1..6_000).rev().step_by(331));
        for new_size in sizes {
            let sampled_before = ALLOC.is_sampled(ptr);
            was_plain |= !sampled_before;
            // SAFETY: `ptr` is live with `layout`; the new size is non-zero.
            let new = unsafe { ALLOC.realloc(ptr, layout, new_size) };
            assert!(!new.is_null());
            assert_eq!(new as usize % align, 0);
            check(new, layout.size().min(new_size), 9);
            became_sampled |= !sampled_before && ALLOC.is_sampled(new);
            moved_in_range |= sampled_before && ALLOC.is_sampled(new) && new != ptr;
            in_place |= sampled_before && new == ptr;
            ptr = new;
            layout = Layout::from_size_align(new_size, align).unwrap();
            fill(ptr, new_size, 9);
        }
        assert!(
            was_plain && became_sampled && moved_in_range && in_place,
            "align {align}"
        );
        // SAFETY: live with `layout`.
        unsafe { ALLOC.dealloc(ptr, layout) };
    }
}

/// Both kinds of block are handed out, and told apart by address alone.
#[test]
fn small_blocks_mostly_go_straight_through_and_large_ones_are_sampled() {
    let small: Vec<Box<[u8; 8]>> = (0..1000).map(|_| Box::new([1; 8])).collect();
    let sampled_small = small
        .iter()
        .filter(|b| ALLOC.is_sampled(b.as_ptr()))
        .count();
    assert!(
        sampled_small < 200,
        "{sampled_small} of 1000 8-byte blocks sampled"
    );
    let large: Vec<Vec<u8>> = (0..20).map(|_| vec![2; 64 * 1024]).collect();
    assert!(large.iter().all(|b| ALLOC.is_sampled(b.as_ptr())));
    assert!(!ALLOC.is_sampled(std::ptr::null()));
}
