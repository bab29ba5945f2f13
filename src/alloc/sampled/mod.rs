//! Sampled mode: attribution without a header on every block.
//!
//! Each thread counts down the bytes it allocates to its next sample — a Poisson process with a
//! mean of `mean` bytes, so that every byte has the same chance to be sampled. An allocation
//! that does not reach the next sample goes straight to the inner allocator, untouched: a
//! thread-local subtraction and a comparison are all it costs. One that does is served from the
//! [`region`] with a header in front of it, naming who allocated it (the request's scope slot
//! and generation, its route) and its *weight*, the bytes it stands for
//! (`size / (1 − e^(−size/mean))`, [`sites::weight_of`](super::sites)). Its weight, not its
//! size, is added to the counters of its request and route, so that their figures are unbiased
//! estimates of their live bytes.
//!
//! A free tells the two apart by the address alone ([`region::contains`]): a sampled block's
//! weight is taken back from whoever it was counted for; any other block goes back to the inner
//! allocator as it came.

pub(crate) mod region;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use super::counters;
use super::header::Tag;
use super::sites;

/// Bytes in front of a sampled block's pointer, where its [`SampleHeader`] lives (more for an
/// alignment above it).
const HEADER: usize = 64;

/// What a sampled block records of itself, in the [`HEADER`] bytes before its pointer.
#[repr(C)]
struct SampleHeader {
    /// Who allocated it.
    tag: Tag,
    /// The bytes it stands for.
    weight: u64,
    /// The blocks it stands for (its weight over its size, at least one).
    blocks: u64,
    /// Its size as asked for.
    size: usize,
    /// The run it lives in, and the run's length in units.
    run: *mut u8,
    units: usize,
    /// The allocation site of its call stack plus one (0: none recorded).
    site: u32,
}

const _: () = assert!(std::mem::size_of::<SampleHeader>() <= HEADER);

/// The blocks a sampled block of `size` bytes and `weight` stands for, in its route's counts.
fn blocks_of(size: usize, weight: u64) -> u64 {
    (weight / (size.max(1) as u64)).max(1)
}

/// The offset of the block's pointer in its run, and the run's length in units; `None` for an
/// alignment above [`region::UNIT`] or a size too large for the region (never sampled).
fn placement(layout: Layout) -> Option<(usize, usize)> {
    if layout.align() > region::UNIT {
        return None;
    }
    let offset = HEADER.max(layout.align());
    let units = layout.size().checked_add(offset)?.div_ceil(region::UNIT);
    (units <= region::RANGE / region::UNIT).then_some((offset, units))
}

/// `GlobalAlloc::alloc` (or `alloc_zeroed`) in sampled mode.
///
/// # Safety
///
/// As for `GlobalAlloc::alloc`.
#[inline(always)]
pub(crate) unsafe fn alloc<A: GlobalAlloc>(
    inner: &A,
    layout: Layout,
    mean: u64,
    zeroed: bool,
) -> *mut u8 {
    if counters::sample_due(layout.size()) {
        // SAFETY: forwarded.
        return unsafe { alloc_sampled(inner, layout, mean, zeroed) };
    }
    // SAFETY: forwarded unchanged.
    unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    }
}

/// An allocation the countdown picked: served from the region and counted by its weight, or
/// — while the allocator is busy with itself, for an alignment above a unit, or once the
/// region is used up — from the inner allocator, unsampled.
///
/// # Safety
///
/// As for `GlobalAlloc::alloc`.
#[cold]
#[inline(never)]
unsafe fn alloc_sampled<A: GlobalAlloc>(
    inner: &A,
    layout: Layout,
    mean: u64,
    zeroed: bool,
) -> *mut u8 {
    let unsampled = || {
        // SAFETY: forwarded unchanged (the caller's contract).
        unsafe {
            if zeroed {
                inner.alloc_zeroed(layout)
            } else {
                inner.alloc(layout)
            }
        }
    };
    let Some(tag) = counters::begin_sample(mean) else {
        return unsampled();
    };
    let Some((offset, units)) = placement(layout) else {
        return unsampled();
    };
    let Some(run) = region::allocate(units) else {
        UNSERVED.fetch_add(1, Ordering::Relaxed);
        return unsampled();
    };
    let weight = sites::weight_of_sample(layout.size() as u64, mean);
    let blocks = blocks_of(layout.size(), weight);
    counters::count_sample(tag, weight as i64, blocks as i64);
    let site = if tag != Tag::NONE {
        counters::record_site(tag, weight, sites::site_blocks(layout.size(), weight))
    } else {
        0
    };
    // SAFETY: the run is `units * UNIT >= offset + size` bytes of the region, aligned to
    // `UNIT >= align`, and no one else's; `offset` is a multiple of `align` and at least
    // `HEADER`, so the pointer is aligned and the header (8-aligned, `HEADER` bytes before it)
    // lies in the run.
    unsafe {
        let ptr = run.add(offset);
        ptr.sub(HEADER).cast::<SampleHeader>().write(SampleHeader {
            tag,
            weight,
            blocks,
            size: layout.size(),
            run,
            units,
            site,
        });
        if zeroed {
            // A reused run holds what its last block left.
            ptr.write_bytes(0, layout.size());
        }
        ptr
    }
}

/// `GlobalAlloc::dealloc` in sampled mode.
///
/// # Safety
///
/// As for `GlobalAlloc::dealloc`.
#[inline(always)]
pub(crate) unsafe fn dealloc<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout) {
    if region::contains(ptr) {
        // SAFETY: a block of the region is a sampled block (the caller's contract: it came
        // from this allocator and is live).
        unsafe { dealloc_sampled(ptr) }
    } else {
        // SAFETY: a block outside the region came from the inner allocator with this layout.
        unsafe { inner.dealloc(ptr, layout) }
    }
}

/// Frees a sampled block: its weight is taken back from whoever it was counted for.
///
/// # Safety
///
/// `ptr` is a live sampled block.
#[cold]
#[inline(never)]
unsafe fn dealloc_sampled(ptr: *mut u8) {
    // SAFETY: every sampled block has its header `HEADER` bytes before it, in its run.
    let header = unsafe { ptr.sub(HEADER).cast::<SampleHeader>().read() };
    counters::uncount_sample(header.tag, header.weight as i64, header.blocks as i64);
    if header.site != 0 {
        let blocks = sites::site_blocks(header.size, header.weight);
        sites::release(header.site, header.weight as i64, blocks as i64);
    }
    // SAFETY: the run came from `region::allocate` with `units`, and its only block is freed.
    unsafe { region::free(header.run, header.units) };
}

/// `GlobalAlloc::realloc` in sampled mode. A block that grows by enough bytes to reach the
/// thread's next sample moves into the region; a sampled block that still fits its run stays
/// (its weight follows its new size), else it moves out through a fresh allocation.
///
/// # Safety
///
/// As for `GlobalAlloc::realloc`.
#[inline(always)]
pub(crate) unsafe fn realloc<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    mean: u64,
) -> *mut u8 {
    if region::contains(ptr) {
        // SAFETY: forwarded; a block in the region is sampled.
        return unsafe { realloc_sampled(inner, ptr, layout, new_size, mean) };
    }
    if new_size > layout.size() && counters::sample_due(new_size - layout.size()) {
        // SAFETY: forwarded.
        return unsafe { move_block(inner, ptr, layout, new_size, mean) };
    }
    // SAFETY: forwarded unchanged: the block came from the inner allocator with `layout`.
    unsafe { inner.realloc(ptr, layout, new_size) }
}

/// Moves a block into a new sampled block of `new_size` bytes (or, when it cannot be sampled, a
/// block of the inner allocator), copying what both sizes hold, and frees the old one. A
/// sampled block that outgrows its run stays sampled: its weight follows its size.
///
/// # Safety
///
/// As for `GlobalAlloc::realloc`.
#[cold]
#[inline(never)]
unsafe fn move_block<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    mean: u64,
) -> *mut u8 {
    // SAFETY: `realloc`'s contract makes `new_size` valid for the alignment.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    // SAFETY: a non-zero size, as `realloc` requires of `new_size`.
    let new = unsafe { alloc_sampled(inner, new_layout, mean, false) };
    if new.is_null() {
        return new;
    }
    // SAFETY: both blocks are live, distinct, and hold at least the smaller size; the old one
    // is freed with its own layout.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
        dealloc(inner, ptr, layout);
    }
    new
}

/// `realloc` of a sampled block.
///
/// # Safety
///
/// As for `GlobalAlloc::realloc`; `ptr` is a sampled block.
#[cold]
#[inline(never)]
unsafe fn realloc_sampled<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    mean: u64,
) -> *mut u8 {
    let header_ptr = ptr.wrapping_sub(HEADER).cast::<SampleHeader>();
    // SAFETY: a sampled block's header is `HEADER` bytes before it, in its run.
    let header = unsafe { &mut *header_ptr };
    let room = region::units_of(header.units) * region::UNIT - (ptr as usize - header.run as usize);
    if new_size > room {
        // SAFETY: forwarded: the block moves.
        return unsafe { move_block(inner, ptr, layout, new_size, mean) };
    }
    let weight = sites::weight_of_sample(new_size as u64, mean);
    let blocks = blocks_of(new_size, weight);
    counters::uncount_sample(
        header.tag,
        header.weight as i64 - weight as i64,
        header.blocks as i64 - blocks as i64,
    );
    if header.site != 0 {
        sites::release(
            header.site,
            header.weight as i64 - weight as i64,
            sites::site_blocks(header.size, header.weight) as i64
                - sites::site_blocks(new_size, weight) as i64,
        );
    }
    header.weight = weight;
    header.blocks = blocks;
    header.size = new_size;
    ptr
}

/// Samples that could not be served from the region (it could not be reserved, or is used
/// up): those blocks went to the inner allocator uncounted.
static UNSERVED: AtomicU64 = AtomicU64::new(0);

/// Bytes of the sampled blocks' range handed out so far (at most this much is resident).
pub(crate) fn region_bytes() -> u64 {
    region::used_bytes()
}

/// How many samples could not be served from the region.
pub(crate) fn unserved() -> u64 {
    UNSERVED.load(Ordering::Relaxed)
}

/// Whether `ptr` is a sampled block (any pointer may be asked about).
pub(crate) fn is_sampled(ptr: *const u8) -> bool {
    region::contains(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keeps_alignment_and_room_for_the_header() {
        for align in (0..=12).map(|p| 1usize << p) {
            for size in [0, 1, 100, 4096, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let (offset, units) = placement(layout).unwrap();
                assert!(offset >= HEADER && offset % align == 0);
                assert!(units * region::UNIT >= offset + size);
            }
        }
        assert!(placement(Layout::from_size_align(8, 8192).unwrap()).is_none());
        let huge = Layout::from_size_align(region::RANGE, 8).unwrap();
        assert!(placement(huge).is_none());
    }

    #[test]
    fn blocks_stand_for_their_weight() {
        assert_eq!(blocks_of(16, 512 * 1024), 32 * 1024);
        assert_eq!(blocks_of(1 << 20, 1 << 20), 1);
        assert_eq!(blocks_of(0, 100), 100);
        assert_eq!(blocks_of(100, 0), 1);
    }
}
