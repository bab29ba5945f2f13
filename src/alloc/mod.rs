//! [`TrackingAllocator`]: a global allocator wrapper that attributes heap memory to requests.
//!
//! Two modes. This module's own code is *exact* mode, described below; *sampled* mode, where
//! only sampled blocks carry a header (and live in an address range of their own), is the
//! `sampled` module's.
//!
//! Every block gets an 8-byte header (or `align` bytes, for alignments above 8) in front of the
//! pointer handed out. The header names the request scope that allocated the block (a slot in a
//! static slab, with the slot's generation) and the request's route (a slot in a static table);
//! see the `header` module for its layout.
//! Freeing a block reads its header and decrements the right counters, whichever thread or
//! request frees it, however long after.
//!
//! The hot path takes no lock and never allocates: it reads and writes const-initialised
//! thread-locals and atomics in statically allocated, cache-padded slabs. A request's own
//! allocations and frees are counted in thread-local pending counts, flushed once per poll; see
//! the `counters` module for where each count goes.
//!
//! Counting:
//!
//! - a *scope slot* counts the bytes and blocks a request allocated and how many of them were
//!   freed, for as long as the request holds the slot (until the sweeper has judged it);
//! - a *route slot* counts the live bytes and blocks of everything the route's requests
//!   allocated — exactly, forever, because the route is in every header. Slot 0 is "no route":
//!   all other allocations, so the sum over all route slots is the process's live heap.

#![allow(unsafe_code)]
// Every unsafe operation sits in a block of its own with a `// SAFETY:` comment, also inside
// `unsafe fn`s; CI keeps it so.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU64;

mod cells;
mod counters;
mod header;
mod outer;
mod sampled;
mod sites;
mod slots;
mod stacks;
pub(crate) mod symbolize;

#[cfg(tokio_unstable)]
pub(crate) use self::cells::discard_last as discard_last_cell;
use self::cells::CELL_ALIGN;
pub(crate) use self::cells::{
    discard_since as discard_cells_since, dropped as cells_dropped,
    forget_containing as forget_cell_containing, learn_prefix as learn_cell_prefix,
    pending as pending_cells, set_kind as set_cell_kind, take_new as take_new_cells,
    unread_stacks as unread_cell_stacks, Kind as CellKind, TaskCell,
};
pub(crate) use self::counters::{
    is_installed, new_route_slot, process_live_bytes, route_live, sampling_mean, swap_tag,
};
use self::counters::{on_alloc, on_dealloc, on_free, on_resize, record_cell};
use self::header::Header;
pub(crate) use self::header::Tag;
use self::outer::{outer, outer_unchecked};
pub(crate) use self::sampled::{
    region_bytes as sampled_region_bytes, unserved as samples_unserved,
};
#[cfg(feature = "pprof")]
pub(crate) use self::sites::live as live_sites;
pub use self::sites::AllocationSites;
pub(crate) use self::sites::{
    dropped as sites_dropped, enabled as sites_enabled, exact as sites_exact, mean as sites_mean,
    top as top_sites, RawSite,
};
pub(crate) use self::slots::{slots_exhausted, slots_in_use, SlotGuard, Usage};

/// Bytes in front of every block (more for alignments above it).
///
/// With glibc's `malloc`, whose chunks grow in steps of 16 bytes and carry 8 bytes of their
/// own, a request of `16k + 9` to `16k + 16` bytes still fits its chunk with the header: only
/// the other half of the sizes pay 16 more bytes.
pub(crate) const HEADER_SIZE: usize = 8;

/// How many request scopes can be tracked at once. Past it, new requests go untracked and
/// [`Uncounted::requests`](crate::stats::Uncounted::requests) counts them.
pub(crate) const SCOPE_SLOTS: usize = 1 << 16;

/// How many distinct routes can be tracked, over all detectors of the process (slot 0 is "no
/// route"). Past it, further routes are counted under slot 0.
pub(crate) const ROUTE_SLOTS: usize = 4096;

/// A [`GlobalAlloc`] that attributes every block to the request (and route) that allocated it.
///
/// Install it as the global allocator, wrapping the system allocator or any other:
///
/// ```
/// #[global_allocator]
/// static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();
/// ```
///
/// Any other `GlobalAlloc` is wrapped the same way, with
/// `TrackingAllocator::new(mimalloc::MiMalloc)` for example:
///
/// ```
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: leakwatch::TrackingAllocator<System> = leakwatch::TrackingAllocator::new(System);
/// ```
///
/// Each block costs 8 extra bytes (or its alignment, when that is larger than 8). At most
/// 65 536 requests have their memory counted at once, over all detectors of the process
/// (past that, [`Uncounted::requests`](crate::stats::Uncounted::requests) counts those that
/// go without), and at most 4 096 routes (further routes' memory is counted as no route's).
/// Outside a request the cost is the header and one uncontended counter update; inside a
/// request, thread-local additions flushed once per poll. Nothing is locked and nothing is
/// allocated on these paths.
///
/// Without it, everything else in the crate works and reports say memory is not tracked.
///
/// # Exact and sampled
///
/// The constructors above count every block exactly: the mode for tests, where
/// [`assert_no_leaks`](crate::LeakDetector::assert_no_leaks) and the
/// [leak guard](crate::guard) need exact figures. For a service that leaves attribution on in
/// production, [`sampled`](Self::sampled) (or [`new_sampled`](Self::new_sampled)) counts
/// only about one allocation per `mean_bytes` allocated bytes, the way Go's heap profiler
/// samples every 512 KiB: the others go straight to the inner allocator with no header and no
/// counting beyond a thread-local countdown. Figures are then unbiased estimates, and say so
/// ([`MemoryAccounting::Estimated`](crate::stats::MemoryAccounting::Estimated)).
///
/// A sampled block is served from an address range reserved for sampled blocks (Unix `mmap`,
/// `MAP_NORESERVE`: only the pages in use are memory), with a header naming its request, route
/// and *weight* — the bytes it stands for, `size / (1 − e^(−size/mean))` — so that a free
/// recognises it by its address alone. A route that keeps `L` bytes per request gets a sampled
/// witness about every `mean / L` requests, so with the default
/// [`memory_window`](crate::LeakDetectorBuilder::memory_window) of 256 a
/// [`RetainedMemory`](crate::LeakKind::RetainedMemory) report comes once three of them are old
/// — after about `3 × mean / L + 256` requests — and the route's estimated retained bytes have
/// grown by about `L` per request over a window, usually one window later: at a 512 KiB mean,
/// about 900 requests for 4 KiB per request, 2 500 for 800 bytes, 33 000 for 48 bytes. Samples
/// come at random: unlucky ones take longer (at a 16 KiB mean, a window of 32 and 1 000 bytes
/// per request, 3 000 runs took 108 requests at the median, 120 in 99 %, 200 at most);
/// `tests/alloc_sampled_leak_timing.rs` allows three times the sampling part and three more
/// windows. Elsewhere than Unix no
/// block is sampled
/// ([`Uncounted::samples`](crate::stats::Uncounted::samples) counts them).
///
/// ```
/// #[global_allocator]
/// static ALLOC: leakwatch::TrackingAllocator =
///     leakwatch::TrackingAllocator::sampled(512 * 1024);
/// ```
///
/// # Tasks, on stable Rust
///
/// The allocator also sees the tasks a request spawns with plain `tokio::spawn`,
/// `JoinSet::spawn` or `spawn_blocking` — its own code's and its dependencies' — with no
/// `tokio_unstable` and no hand-built runtime. tokio allocates a task as one block (its *cell*)
/// on the spawning thread, inside the call, aligned to 128 bytes on x86_64, aarch64 and
/// powerpc64, which almost nothing else asks for. A block of that alignment allocated inside a
/// request gets its call stack captured (return addresses only, nothing allocated); the sweeper
/// resolves each distinct stack once, off the request path. A stack through tokio's task
/// creation is a task, spawned at the first frame above tokio's that is neither tokio's nor the
/// standard library's (the *spawn line*; it needs line tables in the binary, as allocation
/// sites do); anything else (a cache-padded channel) is let go. A task whose cell is still
/// allocated past the grace period after its request ended is an
/// [`OrphanTask`](crate::LeakKind::OrphanTask) at its spawn line: the allocator cannot tell a
/// task still running from a finished one whose output a `JoinHandle` still holds, and says so.
/// A spawn line in a dependency is judged by growth, like the runtime hooks' tasks;
/// [`detach`](crate::detach), [`outside`](crate::outside), [`spawn_detached`](crate::spawn_detached)
/// and [`ignore_spawned_at`](crate::LeakDetectorBuilder::ignore_spawned_at) apply. In sampled mode
/// these blocks are recorded whatever the sampling says.
///
/// Each such block allocated inside a request costs an unwinding of its call stack — once the
/// sweeper has read a call site, only down to it — and a lookup in a fixed table when it is
/// freed; every other allocation and free pays one comparison of its alignment
/// (`benches/README.md` has the instructions per request). What it cannot see:
///
/// - a task spawned outside any request, such as inside another plain task, and what a task
///   allocates after its request: the runtime hooks see those (`instrument_runtime`, with
///   `--cfg tokio_unstable`; see the [crate docs](crate#feature-flags)), as they make the request
///   current while its tasks are polled. (`spawn_local` onto a `LocalSet` inside a request is
///   seen like any spawn.)
/// - on architectures where tokio aligns the cell to 64 or 32 bytes (x86, arm, riscv, wasm…),
///   many more blocks share the alignment: each still costs a capture, and only stacks through
///   tokio's task creation are kept; s390x aligns it to 256;
/// - with another `#[global_allocator]`, nothing: wrap it instead
///   (`TrackingAllocator::new(inner)`).
///
/// At most 32 768 cells and 1 023 distinct spawn stacks are followed at once, and 256 spawns of
/// one poll of a request; past that, [`Uncounted::task_cells`](crate::stats::Uncounted::task_cells)
/// counts what went unseen. A tokio upgrade that changes the cell's alignment or its creation
/// frames is caught by `tests/tokio_task_cell_guard.rs`.
#[derive(Debug, Default)]
pub struct TrackingAllocator<A = System> {
    inner: A,
    /// The mean bytes between samples; 0 in exact mode.
    sampling: u64,
}

impl TrackingAllocator<System> {
    /// Wraps the system allocator, counting every block exactly.
    pub const fn system() -> Self {
        TrackingAllocator {
            inner: System,
            sampling: 0,
        }
    }

    /// Wraps the system allocator in sampled mode: about one allocation per `mean_bytes`
    /// allocated bytes is counted, by the bytes it stands for; see [above](Self#exact-and-sampled).
    ///
    /// # Panics
    ///
    /// When `mean_bytes` is 0 (at compile time, for a `static`).
    pub const fn sampled(mean_bytes: u64) -> Self {
        let Some(mean) = NonZeroU64::new(mean_bytes) else {
            panic!("the mean bytes between samples must not be 0");
        };
        Self::new_sampled(System, mean)
    }
}

impl<A> TrackingAllocator<A> {
    /// Wraps `inner`, counting every block exactly.
    pub const fn new(inner: A) -> Self {
        TrackingAllocator { inner, sampling: 0 }
    }

    /// Wraps `inner` in sampled mode, with a mean of `mean_bytes` between samples (512 KiB is
    /// Go's default and a good start); see [above](Self#exact-and-sampled).
    ///
    /// ```
    /// use std::alloc::System;
    /// use std::num::NonZeroU64;
    ///
    /// #[global_allocator]
    /// static ALLOC: leakwatch::TrackingAllocator =
    ///     leakwatch::TrackingAllocator::new_sampled(System, NonZeroU64::new(512 * 1024).unwrap());
    /// ```
    pub const fn new_sampled(inner: A, mean_bytes: NonZeroU64) -> Self {
        TrackingAllocator {
            inner,
            sampling: mean_bytes.get(),
        }
    }

    /// Whether the block at `ptr` was sampled (sampled mode serves sampled blocks from an
    /// address range of their own). Any pointer may be asked about.
    pub fn is_sampled(&self, ptr: *const u8) -> bool {
        self.sampling != 0 && sampled::is_sampled(ptr)
    }

    /// Samples the call stacks of requests' allocations, so that
    /// [`RetainedMemory`](crate::LeakKind::RetainedMemory) reports list where the memory was
    /// allocated ([`LeakReport::sites`](crate::LeakReport::sites)).
    ///
    /// Process-wide, like the allocator itself: every detector sees the same sites. It applies
    /// to allocations made from now on. Default: [`AllocationSites::Off`].
    ///
    /// Sites also tell whose memory a route holds: memory a dependency's code allocated (a batch
    /// exporter's buffer, a metrics recorder's buckets) is judged by growth over time, the
    /// user's by requests alone (see [whose memory](crate#whose-memory)). With sites off, growth
    /// that no request witnesses waits out
    /// [`dependency_growth_span`](crate::LeakDetectorBuilder::dependency_growth_span).
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use leakwatch::{AllocationSites, TrackingAllocator};
    ///
    /// #[global_allocator]
    /// static ALLOC: TrackingAllocator = TrackingAllocator::system();
    ///
    /// let mean_bytes = NonZeroU64::new(512 * 1024).unwrap();
    /// ALLOC.set_allocation_sites(AllocationSites::Sampled { mean_bytes });
    /// # ALLOC.set_allocation_sites(AllocationSites::Off);
    /// ```
    pub fn set_allocation_sites(&self, sites: AllocationSites) {
        sites::configure(sites);
    }
}

// SAFETY: every method forwards to the inner allocator with a layout derived from the caller's
// by `outer`, which only grows the size and the alignment, and hands back a pointer `offset`
// bytes into that block — inside it (offset < outer size) and aligned to the caller's alignment
// (the block is aligned to max(align, 8) and offset is a multiple of align and of 8). The
// header lives in the `HEADER_SIZE` bytes just before the returned pointer, which belong to the
// block. `dealloc` and `realloc` recompute the same layout and offset from the caller's layout,
// which the `GlobalAlloc` contract guarantees is the one the block was allocated with.
//
// In sampled mode, every method goes to the `sampled` module instead, whose own comments say why
// it is sound.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() >= CELL_ALIGN {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { self.alloc_cell_aligned(layout, false) };
        }
        // SAFETY: forwarded (the caller's contract).
        unsafe { self.alloc_any(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() >= CELL_ALIGN {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { self.alloc_cell_aligned(layout, true) };
        }
        // SAFETY: forwarded (the caller's contract).
        unsafe { self.alloc_any(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() >= CELL_ALIGN {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { self.dealloc_cell_aligned(ptr, layout) };
        }
        // SAFETY: forwarded (the caller's contract).
        unsafe { self.dealloc_any(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() >= CELL_ALIGN {
            // A task's cell is never resized; a block that moves is followed no more.
            cells::forget(ptr as usize);
        }
        if self.sampling != 0 {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { sampled::realloc(&self.inner, ptr, layout, new_size, self.sampling) };
        }
        // SAFETY: `ptr` came from `alloc` with this layout, so `outer(layout)` succeeded then.
        let (outer, offset) = unsafe { outer_unchecked(layout) };
        let Some(new_outer_size) = new_size.checked_add(offset) else {
            return std::ptr::null_mut();
        };
        if Layout::from_size_align(new_outer_size, outer.align()).is_err() {
            return std::ptr::null_mut();
        }
        // SAFETY: the block starts `offset` bytes before `ptr` and was allocated with `outer`;
        // the new size is non-zero and valid for the alignment (checked above). The header is
        // within the first `offset` bytes, which the inner realloc preserves.
        unsafe {
            let base = self.inner.realloc(ptr.sub(offset), outer, new_outer_size);
            if base.is_null() {
                return base;
            }
            let new_ptr = base.add(offset);
            // The block keeps its original attribution; only its size changed.
            let header = read_header(new_ptr);
            on_resize(header, layout.size(), new_size);
            if header.site() != 0 {
                let old = sites::weight_of(layout.size() as u64);
                let new = sites::weight_of(new_size as u64);
                let blocks = sites::site_blocks(layout.size(), old) as i64
                    - sites::site_blocks(new_size, new) as i64;
                sites::release(header.site(), old as i64 - new as i64, blocks);
            }
            new_ptr
        }
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// `alloc` (or `alloc_zeroed`) in either mode.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::alloc`.
    #[inline(always)]
    unsafe fn alloc_any(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if self.sampling != 0 {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { sampled::alloc(&self.inner, layout, self.sampling, zeroed) };
        }
        if zeroed {
            // SAFETY: forwarded to the inner allocator with a non-zero-sized layout; the
            // header overwrites zeroed bytes the caller never sees.
            unsafe { self.allocate(layout, |inner, outer| inner.alloc_zeroed(outer)) }
        } else {
            // SAFETY: forwarded to the inner allocator with a non-zero-sized layout.
            unsafe { self.allocate(layout, |inner, outer| inner.alloc(outer)) }
        }
    }

    /// `dealloc` in either mode.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::dealloc`.
    #[inline(always)]
    unsafe fn dealloc_any(&self, ptr: *mut u8, layout: Layout) {
        if self.sampling != 0 {
            // SAFETY: forwarded (the caller's contract).
            return unsafe { sampled::dealloc(&self.inner, ptr, layout) };
        }
        // SAFETY: `ptr` came from `alloc` with this layout, so `outer(layout)` succeeded then;
        // a header precedes `ptr` and the block starts `offset` bytes before it.
        unsafe {
            let header = read_header(ptr);
            if header.site() != 0 || !on_dealloc(header, layout.size()) {
                return self.dealloc_slow(ptr, layout, header);
            }
            let (outer, offset) = outer_unchecked(layout);
            self.inner.dealloc(ptr.sub(offset), outer);
        }
    }

    /// A block of the task cell's alignment (see the `cells` module): allocated as any other,
    /// then recorded when a request allocates it. Out of line, so that every other allocation
    /// pays one comparison.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::alloc`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_cell_aligned(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded (the caller's contract).
        let ptr = unsafe { self.alloc_any(layout, zeroed) };
        if !ptr.is_null() {
            record_cell(ptr as usize);
        }
        ptr
    }

    /// Frees a block of the task cell's alignment: forgotten if it was recorded, then freed as
    /// any other.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_cell_aligned(&self, ptr: *mut u8, layout: Layout) {
        cells::forget(ptr as usize);
        // SAFETY: forwarded (the caller's contract).
        unsafe { self.dealloc_any(ptr, layout) }
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// Allocates the outer block with `inner_alloc`, counts it and writes its header.
    ///
    /// # Safety
    ///
    /// `inner_alloc` must be `GlobalAlloc::alloc` or `alloc_zeroed` of `self.inner`.
    #[inline(always)]
    unsafe fn allocate(
        &self,
        layout: Layout,
        inner_alloc: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let base = inner_alloc(&self.inner, outer);
        if base.is_null() {
            return base;
        }
        // Counted only now, so that the call above keeps as little as possible alive across it
        // (the inner allocator never changes who allocates on this thread).
        let header = on_alloc(layout.size());
        // SAFETY: `base` is a non-null block of `outer`'s layout and `offset < outer.size()`;
        // see the comment on the `GlobalAlloc` impl.
        unsafe { finish(base, offset, header) }
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// `dealloc` of a block whose free is not one of the two common cases [`on_dealloc`]
    /// counts inline (a sampled block, a block of another request or route), out of line so
    /// that those cases need no stack frame.
    ///
    /// # Safety
    ///
    /// As for `dealloc`; `header` is the block's header.
    #[inline(never)]
    unsafe fn dealloc_slow(&self, ptr: *mut u8, layout: Layout, header: Header) {
        if header.site() != 0 {
            let weight = sites::weight_of(layout.size() as u64);
            let blocks = sites::site_blocks(layout.size(), weight);
            sites::release(header.site(), weight as i64, blocks as i64);
        }
        on_free(header, layout.size() as i64, 1);
        // SAFETY: as in `dealloc`.
        unsafe {
            let (outer, offset) = outer_unchecked(layout);
            self.inner.dealloc(ptr.sub(offset), outer);
        }
    }
}

/// Writes the header of a fresh block and returns the user's pointer.
///
/// # Safety
///
/// `base` points to a live block of more than `offset` bytes, aligned to at least 8, and
/// `offset` is a multiple of 8 no smaller than `HEADER_SIZE`.
#[inline]
unsafe fn finish(base: *mut u8, offset: usize, header: Header) -> *mut u8 {
    // SAFETY: guaranteed by the caller: the header's word lies in [base, base + offset), at
    // `base + offset - 8`, which is aligned to 8.
    unsafe {
        let ptr = base.add(offset);
        ptr.sub(HEADER_SIZE).cast::<u64>().write(header.word());
        ptr
    }
}

/// # Safety
///
/// `ptr` was returned by this allocator and not freed.
#[inline]
unsafe fn read_header(ptr: *mut u8) -> Header {
    // SAFETY: a header word was written, aligned, `HEADER_SIZE` bytes before every pointer
    // handed out, inside the block.
    unsafe { Header::from_word(ptr.sub(HEADER_SIZE).cast::<u64>().read()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_are_the_documented_ones() {
        // `TrackingAllocator`'s docs state these figures in prose.
        assert_eq!((HEADER_SIZE, SCOPE_SLOTS, ROUTE_SLOTS), (8, 65_536, 4_096));
    }

    /// Requests that hold no scope slot (all taken) are still counted exactly for their route,
    /// also when one frees another's block. (Called directly: this allocator is not the
    /// global one in unit tests, so only these blocks are counted.)
    #[test]
    fn requests_without_a_slot_are_counted_exactly_for_their_routes() {
        let (route, other) = (new_route_slot(), new_route_slot());
        assert!(route != 0 && other != 0);
        let alloc = TrackingAllocator::system();
        let layout = Layout::from_size_align(100, 8).unwrap();
        let previous = swap_tag(Tag::route_only(route));
        // SAFETY: every block is allocated with `layout` and freed once with it.
        unsafe {
            let kept = alloc.alloc(layout);
            let temporary = alloc.alloc(layout);
            alloc.dealloc(temporary, layout);
            swap_tag(Tag::route_only(other));
            let other_block = alloc.alloc(layout);
            alloc.dealloc(kept, layout);
            swap_tag(previous);
            assert_eq!(route_live(route), (0, 0));
            assert_eq!(route_live(other), (100, 1));
            alloc.dealloc(other_block, layout);
        }
        assert_eq!(route_live(other), (0, 0));
    }
}
