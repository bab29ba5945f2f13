//! [`TrackingAllocator`]: a global allocator wrapper that attributes heap memory to requests.
//!
//! Every block gets a 16-byte header (or `align` bytes, for alignments above 16) in front of the
//! pointer handed out. The header names the request scope that allocated the block (a slot in a
//! static slab, with the slot's generation) and the request's route (a slot in a static table).
//! Freeing a block reads its header and decrements the right counters, whichever thread or
//! request frees it, however long after.
//!
//! The hot path takes no lock and never allocates: it reads const-initialised thread-locals
//! (the current scope's tag, a shard index, a re-entrancy flag) and updates atomics in
//! statically allocated, cache-padded slabs. Per-route live bytes are sharded by thread, so two
//! threads serving one route do not fight over one cache line.
//!
//! Counting:
//!
//! - a *scope slot* counts the bytes and blocks a request allocated and how many of them were
//!   freed, for as long as the request holds the slot (until the sweeper has judged it);
//! - a *route slot* counts the live bytes and blocks of everything the route's requests
//!   allocated — exactly, forever, because the route is in every header. Slot 0 is "no route":
//!   all other allocations, so the sum over all route slots is the process's live heap.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Bytes in front of every block (more for alignments above it).
pub const HEADER_SIZE: usize = 16;

/// How many request scopes can be tracked at once. Past it, new requests go untracked and
/// [`Stats::untracked_scopes`](crate::Stats::untracked_scopes) counts them.
pub const SCOPE_SLOTS: usize = 1 << 16;

/// How many distinct routes can be tracked, over all detectors of the process (slot 0 is "no
/// route"). Past it, further routes are counted under slot 0.
pub const ROUTE_SLOTS: usize = 4096;

const SHARDS: usize = 16;
const WORDS: usize = SCOPE_SLOTS / 64;

/// Identifies who allocates on this thread: a scope slot and its generation, and a route slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) route: u32,
}

impl Tag {
    pub(crate) const NONE: Tag = Tag {
        slot: 0,
        generation: 0,
        route: 0,
    };
}

/// The header stored in front of each block.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    slot: u32,
    generation: u32,
    route: u32,
    _reserved: u32,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);

#[repr(align(64))]
struct ScopeSlot {
    generation: AtomicU32,
    alloc_bytes: AtomicU64,
    freed_bytes: AtomicU64,
    alloc_blocks: AtomicU64,
    freed_blocks: AtomicU64,
}

impl ScopeSlot {
    const fn new() -> Self {
        ScopeSlot {
            generation: AtomicU32::new(0),
            alloc_bytes: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            alloc_blocks: AtomicU64::new(0),
            freed_blocks: AtomicU64::new(0),
        }
    }
}

struct RouteCell {
    bytes: AtomicI64,
    blocks: AtomicI64,
}

impl RouteCell {
    const fn new() -> Self {
        RouteCell {
            bytes: AtomicI64::new(0),
            blocks: AtomicI64::new(0),
        }
    }
}

static SCOPES: [ScopeSlot; SCOPE_SLOTS] = [const { ScopeSlot::new() }; SCOPE_SLOTS];
static SLOTS_USED: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
static SLOT_CURSOR: AtomicUsize = AtomicUsize::new(0);
static SLOTS_EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// Per thread shard, per route slot: live bytes and blocks.
static ROUTES: [[RouteCell; ROUTE_SLOTS]; SHARDS] =
    [const { [const { RouteCell::new() }; ROUTE_SLOTS] }; SHARDS];
static NEXT_ROUTE: AtomicU32 = AtomicU32::new(1);
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// Set once an allocation made by the probe in [`is_installed`] reached this allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);

const FLAG_BUSY: u8 = 1;
const FLAG_PROBE: u8 = 2;

thread_local! {
    static TAG: Cell<Tag> = const { Cell::new(Tag::NONE) };
    static FLAGS: Cell<u8> = const { Cell::new(0) };
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

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
/// Each block costs [`HEADER_SIZE`] extra bytes (or its alignment, when that is larger than
/// 16). Outside a request the cost is the header and one uncontended atomic update; inside a
/// request, four more. Nothing is locked and nothing is allocated on these paths.
///
/// Without it, everything else in the crate works and reports say memory is not tracked.
#[derive(Debug, Default)]
pub struct TrackingAllocator<A = System> {
    inner: A,
}

impl TrackingAllocator<System> {
    /// Wraps the system allocator.
    pub const fn system() -> Self {
        TrackingAllocator { inner: System }
    }
}

impl<A> TrackingAllocator<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        TrackingAllocator { inner }
    }
}

/// The layout asked of the inner allocator for `layout`, and the offset of the user's pointer.
#[inline]
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let offset = layout.align().max(HEADER_SIZE);
    let size = layout.size().checked_add(offset)?;
    let outer = Layout::from_size_align(size, layout.align().max(HEADER_SIZE)).ok()?;
    Some((outer, offset))
}

#[inline]
fn shard() -> usize {
    SHARD
        .try_with(|s| {
            let mut shard = s.get();
            if shard == usize::MAX {
                shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                s.set(shard);
            }
            shard
        })
        .unwrap_or(0)
}

/// The tag to stamp a new block with, or `NONE` while the allocator is busy with itself.
#[inline]
fn current_tag() -> Tag {
    let flags = FLAGS.try_with(Cell::get).unwrap_or(FLAG_BUSY);
    if flags != 0 {
        if flags & FLAG_PROBE != 0 {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        if flags & FLAG_BUSY != 0 {
            return Tag::NONE;
        }
    }
    TAG.try_with(Cell::get).unwrap_or(Tag::NONE)
}

/// Marks the thread busy inside the inner allocator: anything it allocates through the global
/// allocator in turn is not attributed to the request (and cannot recurse into our counting).
struct Busy(u8);

impl Busy {
    #[inline]
    fn enter() -> Busy {
        Busy(
            FLAGS
                .try_with(|f| f.replace(f.get() | FLAG_BUSY))
                .unwrap_or(FLAG_BUSY),
        )
    }
}

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        let _ = FLAGS.try_with(|f| f.set(self.0));
    }
}

/// Counts a new block of `size` bytes allocated under `tag` and returns its header.
#[inline]
fn on_alloc(tag: Tag, size: usize) -> Header {
    let mut slot = 0;
    if tag.slot != 0 {
        let s = &SCOPES[tag.slot as usize];
        // A task that outlived its request may still carry the tag of a slot that was retired
        // and handed to another request: only a matching generation is charged.
        if s.generation.load(Ordering::Acquire) == tag.generation {
            s.alloc_bytes.fetch_add(size as u64, Ordering::Relaxed);
            s.alloc_blocks.fetch_add(1, Ordering::Relaxed);
            slot = tag.slot;
        }
    }
    let cell = &ROUTES[shard()][tag.route as usize];
    cell.bytes.fetch_add(size as i64, Ordering::Relaxed);
    cell.blocks.fetch_add(1, Ordering::Relaxed);
    Header {
        slot,
        generation: tag.generation,
        route: tag.route,
        _reserved: 0,
    }
}

/// Counts a freed block (or, with `blocks == 0`, a size change by `realloc`).
#[inline]
fn on_free(header: Header, bytes: i64, blocks: i64) {
    if header.slot != 0 {
        let s = &SCOPES[header.slot as usize];
        if s.generation.load(Ordering::Acquire) == header.generation {
            if bytes >= 0 {
                s.freed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            } else {
                s.alloc_bytes
                    .fetch_add(bytes.unsigned_abs(), Ordering::Relaxed);
            }
            s.freed_blocks.fetch_add(blocks as u64, Ordering::Relaxed);
        }
    }
    let cell = &ROUTES[shard()][header.route as usize];
    cell.bytes.fetch_sub(bytes, Ordering::Relaxed);
    cell.blocks.fetch_sub(blocks, Ordering::Relaxed);
}

// SAFETY: every method forwards to the inner allocator with a layout derived from the caller's
// by `outer`, which only grows the size and the alignment, and hands back a pointer `offset`
// bytes into that block — inside it (offset < outer size) and aligned to the caller's alignment
// (the block is aligned to max(align, 16) and offset is a multiple of align and of 16). The
// header lives in the `HEADER_SIZE` bytes just before the returned pointer, which belong to the
// block. `dealloc` and `realloc` recompute the same layout and offset from the caller's layout,
// which the `GlobalAlloc` contract guarantees is the one the block was allocated with.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let tag = current_tag();
        let busy = Busy::enter();
        // SAFETY: `outer` has a non-zero size (at least HEADER_SIZE).
        let base = unsafe { self.inner.alloc(outer) };
        drop(busy);
        if base.is_null() {
            return base;
        }
        // SAFETY: see the impl comment; `base` is non-null and `offset < outer.size()`.
        unsafe { finish(base, offset, layout.size(), tag) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let tag = current_tag();
        let busy = Busy::enter();
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe { self.inner.alloc_zeroed(outer) };
        drop(busy);
        if base.is_null() {
            return base;
        }
        // SAFETY: as in `alloc`; the header overwrites zeroed bytes the caller never sees.
        unsafe { finish(base, offset, layout.size(), tag) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((outer, offset)) = outer(layout) else {
            return; // unreachable: this layout was allocated, so `outer` succeeded then
        };
        // SAFETY: `ptr` came from `alloc` with this layout, so a header precedes it and the
        // block starts `offset` bytes before it.
        unsafe {
            let header = read_header(ptr);
            on_free(header, layout.size() as i64, 1);
            self.inner.dealloc(ptr.sub(offset), outer);
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
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
            let shrunk_by = layout.size() as i64 - new_size as i64;
            on_free(read_header(new_ptr), shrunk_by, 0);
            new_ptr
        }
    }
}

/// Stamps the header of a fresh block and returns the user's pointer.
///
/// # Safety
///
/// `base` points to a live block of at least `offset + size` bytes, aligned to at least 16,
/// and `offset` is a multiple of 16 no smaller than `HEADER_SIZE`.
#[inline]
unsafe fn finish(base: *mut u8, offset: usize, size: usize, tag: Tag) -> *mut u8 {
    let header = on_alloc(tag, size);
    // SAFETY: guaranteed by the caller; the header's bytes lie in [base, base + offset) and are
    // aligned to 16, more than `Header` needs.
    unsafe {
        let ptr = base.add(offset);
        ptr.sub(HEADER_SIZE).cast::<Header>().write(header);
        ptr
    }
}

/// # Safety
///
/// `ptr` was returned by this allocator and not freed.
#[inline]
unsafe fn read_header(ptr: *mut u8) -> Header {
    // SAFETY: a header was written `HEADER_SIZE` bytes before every pointer handed out.
    unsafe { ptr.sub(HEADER_SIZE).cast::<Header>().read() }
}

/// Whether a [`TrackingAllocator`] is the process's global allocator (checked once, by
/// allocating a probe).
pub(crate) fn is_installed() -> bool {
    if INSTALLED.load(Ordering::Relaxed) {
        return true;
    }
    if FLAGS.try_with(|f| f.set(f.get() | FLAG_PROBE)).is_err() {
        return false;
    }
    drop(std::hint::black_box(Box::new(0u64)));
    let _ = FLAGS.try_with(|f| f.set(f.get() & !FLAG_PROBE));
    INSTALLED.load(Ordering::Relaxed)
}

/// Sets the thread's tag, returning the previous one.
#[inline]
pub(crate) fn swap_tag(tag: Tag) -> Tag {
    TAG.try_with(|t| t.replace(tag)).unwrap_or(Tag::NONE)
}

/// A scope slot held by one request; released (generation bumped) when dropped.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    tag: Tag,
    released: AtomicBool,
}

impl SlotGuard {
    /// Takes a free scope slot for a request on `route`, or `None` when all are taken.
    pub(crate) fn acquire(route: u32) -> Option<SlotGuard> {
        let start = SLOT_CURSOR.fetch_add(1, Ordering::Relaxed);
        for i in 0..WORDS {
            let w = (start + i) % WORDS;
            let mut used = SLOTS_USED[w].load(Ordering::Relaxed);
            while used != u64::MAX {
                let bit = (!used).trailing_zeros();
                let mask = 1u64 << bit;
                let before = SLOTS_USED[w].fetch_or(mask, Ordering::AcqRel);
                if before & mask == 0 {
                    let slot = w * 64 + bit as usize;
                    if slot == 0 {
                        // Slot 0 means "no scope": keep it taken for good.
                        used = before | mask;
                        continue;
                    }
                    let s = &SCOPES[slot];
                    s.alloc_bytes.store(0, Ordering::Relaxed);
                    s.freed_bytes.store(0, Ordering::Relaxed);
                    s.alloc_blocks.store(0, Ordering::Relaxed);
                    s.freed_blocks.store(0, Ordering::Relaxed);
                    let generation = s.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
                    return Some(SlotGuard {
                        tag: Tag {
                            slot: slot as u32,
                            generation,
                            route,
                        },
                        released: AtomicBool::new(false),
                    });
                }
                used = before | mask;
            }
        }
        SLOTS_EXHAUSTED.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(crate) fn tag(&self) -> Tag {
        self.tag
    }

    /// What the request has allocated and freed so far; `None` once released.
    pub(crate) fn usage(&self) -> Option<Usage> {
        if self.released.load(Ordering::Acquire) {
            return None;
        }
        let s = &SCOPES[self.tag.slot as usize];
        Some(Usage {
            alloc_bytes: s.alloc_bytes.load(Ordering::Relaxed),
            freed_bytes: s.freed_bytes.load(Ordering::Relaxed),
            alloc_blocks: s.alloc_blocks.load(Ordering::Relaxed),
            freed_blocks: s.freed_blocks.load(Ordering::Relaxed),
        })
    }

    /// Retires the slot: later frees of the request's blocks count for its route only.
    pub(crate) fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.tag.slot as usize;
        SCOPES[slot].generation.fetch_add(1, Ordering::AcqRel);
        SLOTS_USED[slot / 64].fetch_and(!(1u64 << (slot % 64)), Ordering::AcqRel);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request's allocations, from its scope slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) alloc_bytes: u64,
    pub(crate) freed_bytes: u64,
    pub(crate) alloc_blocks: u64,
    pub(crate) freed_blocks: u64,
}

impl Usage {
    /// Bytes allocated and not freed.
    pub(crate) fn retained_bytes(&self) -> u64 {
        self.alloc_bytes.saturating_sub(self.freed_bytes)
    }

    /// Blocks allocated and not freed.
    pub(crate) fn retained_blocks(&self) -> u64 {
        self.alloc_blocks.saturating_sub(self.freed_blocks)
    }
}

/// A fresh route slot, or 0 once they are all taken.
pub(crate) fn new_route_slot() -> u32 {
    let slot = NEXT_ROUTE.fetch_add(1, Ordering::Relaxed);
    if (slot as usize) < ROUTE_SLOTS {
        slot
    } else {
        NEXT_ROUTE.store(ROUTE_SLOTS as u32, Ordering::Relaxed);
        0
    }
}

/// Live bytes and blocks of everything allocated under a route slot.
pub(crate) fn route_live(route: u32) -> (i64, i64) {
    let mut bytes = 0;
    let mut blocks = 0;
    for shard in &ROUTES {
        let cell = &shard[route as usize];
        bytes += cell.bytes.load(Ordering::Relaxed);
        blocks += cell.blocks.load(Ordering::Relaxed);
    }
    (bytes, blocks)
}

/// Live heap bytes of the whole process, as seen through the allocator (blocks allocated before
/// it counted nothing, so this is exact from start-up).
pub(crate) fn process_live_bytes() -> i64 {
    ROUTES
        .iter()
        .flat_map(|shard| shard.iter())
        .map(|cell| cell.bytes.load(Ordering::Relaxed))
        .sum()
}

/// Requests that went untracked because every scope slot was taken.
pub(crate) fn slots_exhausted() -> u64 {
    SLOTS_EXHAUSTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_layout_keeps_alignment_and_room_for_the_header() {
        for align in (0..=12).map(|p| 1usize << p) {
            for size in [0, 1, 7, 16, 100, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let (outer, offset) = outer(layout).unwrap();
                assert!(offset >= HEADER_SIZE);
                assert_eq!(offset % align, 0);
                assert!(outer.align() >= align);
                assert_eq!(outer.size(), size + offset);
            }
        }
        assert!(outer(Layout::from_size_align(isize::MAX as usize - 8, 8).unwrap()).is_none());
    }

    #[test]
    fn slots_are_handed_out_once_and_retired_by_generation() {
        let a = SlotGuard::acquire(0).unwrap();
        let b = SlotGuard::acquire(0).unwrap();
        assert_ne!(a.tag().slot, b.tag().slot);
        assert_ne!(a.tag().slot, 0);
        let generation = SCOPES[a.tag().slot as usize]
            .generation
            .load(Ordering::Relaxed);
        assert_eq!(generation, a.tag().generation);
        assert_eq!(a.usage().unwrap(), Usage::default());
        a.release();
        assert!(a.usage().is_none());
        assert_ne!(
            SCOPES[a.tag().slot as usize]
                .generation
                .load(Ordering::Relaxed),
            a.tag().generation
        );
    }

    #[test]
    fn usage_saturates() {
        let usage = Usage {
            alloc_bytes: 10,
            freed_bytes: 12,
            alloc_blocks: 1,
            freed_blocks: 2,
        };
        assert_eq!(usage.retained_bytes(), 0);
        assert_eq!(usage.retained_blocks(), 0);
    }
}
