//! The allocator's counters: who is allocating on this thread, and where the bytes are counted.
//!
//! Three places, from cheapest to dearest:
//!
//! - **this thread's pending counts** for the current request: plain thread-local additions on
//!   every allocation and free of the request's own blocks, flushed into the request's scope
//!   slot and its route once per poll (when the scope is left);
//! - **this thread's own cell** for memory of no route (everything outside requests): a cell of
//!   a static pool that only this thread writes, so a load and a store replace an atomic
//!   read-modify-write;
//! - **shared cells**, sharded by thread, for the rest (a free of another request's or route's
//!   block, a thread that found the pool used up).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::cells;
use super::header::{Header, Tag};
use super::sites;
use super::slots::{self, ScopeSlot};
use super::ROUTE_SLOTS;

const SHARDS: usize = 16;

/// How many threads get a cell of their own for memory of no route.
const THREAD_CELLS: usize = 1024;

/// Counts of the current request not yet flushed to its slot and route, one cell per count so
/// that an update reads and writes only its own.
///
/// The route's change is implied by the scope's counts (what the request allocated, less what
/// it freed of its own) plus `route_bytes` / `route_blocks`: what does not go through the
/// scope's counts (a request holding no slot, a free of another request's block of the route).
struct Pending {
    alloc_bytes: Cell<u64>,
    alloc_blocks: Cell<u64>,
    freed_bytes: Cell<u64>,
    freed_blocks: Cell<u64>,
    route_bytes: Cell<i64>,
    route_blocks: Cell<i64>,
}

/// What [`Pending`] held when it was taken.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Taken {
    alloc_bytes: u64,
    alloc_blocks: u64,
    freed_bytes: u64,
    freed_blocks: u64,
    route_bytes: i64,
    route_blocks: i64,
}

impl Pending {
    const fn new() -> Pending {
        Pending {
            alloc_bytes: Cell::new(0),
            alloc_blocks: Cell::new(0),
            freed_bytes: Cell::new(0),
            freed_blocks: Cell::new(0),
            route_bytes: Cell::new(0),
            route_blocks: Cell::new(0),
        }
    }

    #[inline(always)]
    fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    #[inline(always)]
    fn add_route(&self, bytes: i64, blocks: i64) {
        self.route_bytes
            .set(self.route_bytes.get().wrapping_add(bytes));
        self.route_blocks
            .set(self.route_blocks.get().wrapping_add(blocks));
    }

    fn take(&self) -> Taken {
        Taken {
            alloc_bytes: self.alloc_bytes.take(),
            alloc_blocks: self.alloc_blocks.take(),
            freed_bytes: self.freed_bytes.take(),
            freed_blocks: self.freed_blocks.take(),
            route_bytes: self.route_bytes.take(),
            route_blocks: self.route_blocks.take(),
        }
    }
}

impl Taken {
    /// The route's change: the scope's net plus the rest.
    fn route_delta(&self) -> (i64, i64) {
        let bytes =
            (self.alloc_bytes.wrapping_sub(self.freed_bytes) as i64).wrapping_add(self.route_bytes);
        let blocks = (self.alloc_blocks.wrapping_sub(self.freed_blocks) as i64)
            .wrapping_add(self.route_blocks);
        (bytes, blocks)
    }
}

#[repr(align(64))]
struct Cell64 {
    bytes: AtomicI64,
}

impl Cell64 {
    const fn new() -> Self {
        Cell64 {
            bytes: AtomicI64::new(0),
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

/// Per thread shard, per route slot: live bytes and blocks.
static ROUTES: [[RouteCell; ROUTE_SLOTS]; SHARDS] =
    [const { [const { RouteCell::new() }; ROUTE_SLOTS] }; SHARDS];
static NEXT_ROUTE: AtomicU32 = AtomicU32::new(1);
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// Memory of no route, one cell per thread (never handed to another thread).
static OWN_CELLS: [Cell64; THREAD_CELLS] = [const { Cell64::new() }; THREAD_CELLS];
static NEXT_OWN_CELL: AtomicUsize = AtomicUsize::new(0);

/// Set once an allocation made by the probe in [`is_installed`] reached the allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The mean bytes between samples of a sampled-mode allocator, once it has sampled (0: exact
/// mode, or not seen yet).
static SAMPLING: AtomicU64 = AtomicU64::new(0);

const FLAG_BUSY: u8 = 1;
const FLAG_PROBE: u8 = 2;
const UNASSIGNED: usize = usize::MAX;

/// Everything the allocator keeps per thread, in one const-initialised thread-local (one address
/// computation per access, no lazy initialisation, no destructor).
struct Local {
    tag: Cell<Tag>,
    /// Bytes until the next allocation-site sample.
    countdown: Cell<i64>,
    /// The sampler's random state.
    rng: Cell<u64>,
    flags: Cell<u8>,
    pending: Pending,
    shard: Cell<usize>,
    /// This thread's cell for memory of no route, once assigned.
    own_cell: Cell<Option<&'static Cell64>>,
    /// Whether a cell was asked for (and none was left when `own_cell` is still `None`).
    own_cell_asked: Cell<bool>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            tag: Cell::new(Tag::NONE),
            countdown: Cell::new(0),
            rng: Cell::new(0),
            flags: Cell::new(0),
            pending: Pending::new(),
            shard: Cell::new(UNASSIGNED),
            own_cell: Cell::new(None),
            own_cell_asked: Cell::new(false),
        }
    };
}

#[inline]
fn shard(local: &Local) -> usize {
    let mut shard = local.shard.get();
    if shard == UNASSIGNED {
        shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        local.shard.set(shard);
    }
    shard
}

/// Adds to a route's shared (sharded) cell.
#[inline]
fn add_shared(local: Option<&Local>, route: u32, bytes: i64, blocks: i64) {
    let cell = &ROUTES[local.map_or(0, shard)][route as usize];
    cell.bytes.fetch_add(bytes, Ordering::Relaxed);
    cell.blocks.fetch_add(blocks, Ordering::Relaxed);
}

/// Counts memory of no route: in this thread's own cell when it has one. (Only bytes: the
/// process's live heap is what is read from it.)
#[inline(always)]
fn add_unrouted(local: Option<&Local>, bytes: i64) {
    match local.and_then(|local| local.own_cell.get()) {
        Some(cell) => add_own(cell, bytes),
        None => add_unrouted_slow(local, bytes),
    }
}

/// Adds to this thread's own cell.
#[inline(always)]
fn add_own(cell: &Cell64, bytes: i64) {
    // Only this thread writes its cell: a load and a store cannot lose an update.
    cell.bytes.store(
        cell.bytes.load(Ordering::Relaxed) + bytes,
        Ordering::Relaxed,
    );
}

/// [`add_unrouted`] for a thread without its own cell: assigns one on first use, or counts in
/// the shared cells once they are all taken (or while thread-locals are torn down).
#[cold]
#[inline(never)]
fn add_unrouted_slow(local: Option<&Local>, bytes: i64) {
    if let Some(local) = local {
        if !local.own_cell_asked.replace(true) {
            let next = NEXT_OWN_CELL.fetch_add(1, Ordering::Relaxed);
            if let Some(cell) = OWN_CELLS.get(next) {
                local.own_cell.set(Some(cell));
                add_unrouted(Some(local), bytes);
                return;
            }
        }
    }
    add_shared(local, 0, bytes, 0);
}

/// This thread's state, or `None` while thread-locals are torn down.
///
/// A plain reference rather than a closure run inside `LOCAL.with`: values such as a [`Tag`]
/// then stay in registers across the hot path instead of being passed through memory (where a
/// tag stored as 32-bit fields and reloaded as a 64-bit word defeats store forwarding).
#[inline(always)]
fn local<'a>() -> Option<&'a Local> {
    let local = LOCAL.try_with(|local| local as *const Local).ok();
    // SAFETY: `LOCAL` has no destructor, so it stays valid for as long as this thread runs.
    // Every caller is a function of this module that uses the reference on this thread, within
    // its own body, and lets no reference escape (the lifetime is chosen by, and bounded to,
    // that call).
    local.map(|local| unsafe { &*local })
}

/// Counts a new block of `size` bytes for whoever allocates on this thread (after the inner
/// allocator returned it) and returns the block's header.
///
/// Outside any request this is one test and one thread-local addition. While the allocator is
/// busy with itself (sampling a call stack, which may allocate) or probing, see
/// [`alloc_flagged`].
#[inline(always)]
pub(crate) fn on_alloc(size: usize) -> Header {
    let Some(local) = local() else {
        return alloc_flagged(None, size);
    };
    if local.flags.get() != 0 {
        return alloc_flagged(Some(local), size);
    }
    let tag = local.tag.get();
    count_new(local, tag, size);
    if tag == Tag::NONE {
        return Header::new(tag, 0);
    }
    let mean = sites::mean();
    if mean == 0 || tag.route() == 0 {
        return Header::new(tag, 0);
    }
    let mut countdown = local.countdown.get();
    let due = sites::due(mean, size as u64, &mut countdown);
    local.countdown.set(countdown);
    let site = if due {
        sample(local, tag, mean, size)
    } else {
        0
    };
    Header::new(tag, site)
}

/// [`on_alloc`] while the thread is busy or probing (or its thread-locals are torn down).
///
/// A busy thread's new blocks are stamped `NONE` and never sampled, so that the allocator's
/// own work can neither be charged to the request nor recurse into itself. Nothing else here
/// takes a lock or allocates, so what the inner allocator allocates through the global
/// allocator in turn is simply counted like any other block.
#[cold]
#[inline(never)]
fn alloc_flagged(local: Option<&Local>, size: usize) -> Header {
    let Some(local) = local else {
        add_shared(None, 0, size as i64, 0);
        return Header::new(Tag::NONE, 0);
    };
    let flags = local.flags.get();
    if flags & FLAG_PROBE != 0 {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let tag = if flags & FLAG_BUSY != 0 {
        Tag::NONE
    } else {
        local.tag.get()
    };
    count_new(local, tag, size);
    Header::new(tag, 0)
}

/// Samples the call stack of a new block of a request that [`sites::due`] picked; returns the
/// site for the block's header (0: the table is full).
#[cold]
#[inline(never)]
fn sample(local: &Local, tag: Tag, mean: u64, size: usize) -> u32 {
    let mut countdown = local.countdown.get();
    let mut rng = local.rng.get();
    let weight = sites::draw(mean, size as u64, &mut countdown, &mut rng);
    local.countdown.set(countdown);
    local.rng.set(rng);
    // Unwinding may allocate on some platforms: such allocations are not sampled again.
    local.flags.set(FLAG_BUSY);
    let site = sites::record(tag.route(), weight, sites::site_blocks(size, weight));
    local.flags.set(0);
    site
}

/// Records a new block of the task cell's alignment at `address` for the request allocating on
/// this thread, if any (see the `cells` module), with the allocator marked busy: the stack it
/// captures is not charged to the request, and a block allocated meanwhile is not recorded.
#[cold]
#[inline(never)]
pub(crate) fn record_cell(address: usize) {
    let Some(local) = local() else {
        return;
    };
    let flags = local.flags.get();
    let tag = local.tag.get();
    if flags & FLAG_BUSY != 0 || tag == Tag::NONE {
        return;
    }
    local.flags.set(flags | FLAG_BUSY);
    cells::record(address, tag);
    local.flags.set(flags);
}

/// Sampled mode: counts `size` bytes down to this thread's next sample; `true` when they reach
/// it. One thread-local subtraction and one comparison.
#[inline(always)]
pub(crate) fn sample_due(size: usize) -> bool {
    let Some(local) = local() else {
        return false;
    };
    let countdown = local.countdown.get().wrapping_sub(size as i64);
    local.countdown.set(countdown);
    countdown <= 0
}

/// Sampled mode, for an allocation [`sample_due`] picked: draws the distance to the next
/// sample and returns who allocates — or `None` when this allocation must not be sampled (the
/// allocator is busy with itself, or this is [`is_installed`]'s probe, which it marks seen).
pub(crate) fn begin_sample(mean: u64) -> Option<Tag> {
    let local = local()?;
    let mut rng = local.rng.get();
    local
        .countdown
        .set(sites::next_interval(mean, &mut rng) as i64);
    local.rng.set(rng);
    SAMPLING.store(mean, Ordering::Relaxed);
    let flags = local.flags.get();
    if flags & FLAG_PROBE != 0 {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    (flags == 0).then(|| local.tag.get())
}

/// Sampled mode: counts a sampled block's `weight` bytes and `blocks` for `tag` — its scope
/// slot (while the request holds it) and its route.
pub(crate) fn count_sample(tag: Tag, bytes: i64, blocks: i64) {
    let local = local();
    if tag.slot() != 0 {
        let slot = ScopeSlot::get(tag.slot());
        slot.add(tag.generation(), bytes as u64, blocks as u64, 0, 0);
    }
    add_route(local, tag.route(), bytes, blocks);
}

/// Sampled mode: takes back `bytes` and `blocks` of a sampled block of `tag` (freed, or
/// shrunk; negative for growth).
pub(crate) fn uncount_sample(tag: Tag, bytes: i64, blocks: i64) {
    slots::charge_free(Header::new(tag, 0), bytes, blocks);
    add_route(local(), tag.route(), -bytes, -blocks);
}

/// Sampled mode: records the call stack of a sampled block of `tag` (standing for `weight` bytes
/// and `blocks` blocks), when allocation sites are
/// on; returns its site for the block's header (0: none).
pub(crate) fn record_site(tag: Tag, weight: u64, blocks: u64) -> u32 {
    let Some(local) = local() else {
        return 0;
    };
    if !sites::enabled() {
        return 0;
    }
    // Unwinding may allocate: such allocations are not sampled again.
    local.flags.set(FLAG_BUSY);
    let site = sites::record(tag.route(), weight, blocks);
    local.flags.set(0);
    site
}

/// The mean bytes between samples when a sampled-mode allocator is installed and has sampled.
pub(crate) fn sampling_mean() -> Option<u64> {
    Some(SAMPLING.load(Ordering::Relaxed)).filter(|&mean| mean != 0)
}

/// Counts a new block allocated under `tag`: outside requests in this thread's cell, inside one
/// in the pending counts.
#[inline(always)]
fn count_new(local: &Local, tag: Tag, size: usize) {
    if tag == Tag::NONE {
        add_unrouted(Some(local), size as i64);
        return;
    }
    let size = size as u64;
    let pending = &local.pending;
    if tag.slot() != 0 {
        Pending::add(&pending.alloc_bytes, size);
        Pending::add(&pending.alloc_blocks, 1);
    } else {
        pending.add_route(size as i64, 1);
    }
}

/// Counts a freed block of `size` bytes in the two common cases — a block of no request, a
/// block of the current request — and returns whether it did; the caller hands every other
/// case to [`on_free`].
#[inline(always)]
pub(crate) fn on_dealloc(header: Header, size: usize) -> bool {
    let Some(local) = local() else {
        return false;
    };
    if header.is_unattributed() {
        // A thread yet without its own cell goes the long way: once, or always when every
        // cell was taken (more than `THREAD_CELLS` threads).
        let Some(cell) = local.own_cell.get() else {
            return false;
        };
        add_own(cell, -(size as i64));
        true
    } else if header.is_own_unsampled(local.tag.get()) {
        // The route's change is implied by the pending counts, also for a slotless request.
        let pending = &local.pending;
        Pending::add(&pending.freed_bytes, size as u64);
        Pending::add(&pending.freed_blocks, 1);
        true
    } else {
        false
    }
}

/// Counts a block's change of size by `realloc` (it keeps its attribution).
#[inline]
pub(crate) fn on_resize(header: Header, old_size: usize, new_size: usize) {
    on_free(header, old_size as i64 - new_size as i64, 0);
}

/// Counts a freed block (`blocks == 1`) or a size change by `realloc` (`blocks == 0`; negative
/// `bytes` for growth), whoever allocated it.
#[inline(never)]
pub(crate) fn on_free(header: Header, bytes: i64, blocks: i64) {
    let local = local();
    if header.is_unattributed() {
        add_unrouted(local, -bytes);
        return;
    }
    let tag = local.map_or(Tag::NONE, |l| l.tag.get());
    let own_route = header.is_of_route(tag);
    match local {
        Some(local) if header.is_of_scope(tag) => {
            // The route's change is implied by the scope's counts.
            let pending = &local.pending;
            if bytes >= 0 {
                Pending::add(&pending.freed_bytes, bytes as u64);
            } else {
                Pending::add(&pending.alloc_bytes, bytes.unsigned_abs());
            }
            Pending::add(&pending.freed_blocks, blocks as u64);
        }
        _ => free_elsewhere(local, header, own_route, bytes, blocks),
    }
}

/// [`on_free`] of a block of another request: charged to its scope (if it still holds its
/// slot) and to its route (in the pending counts when the route is the current request's).
#[cold]
#[inline(never)]
fn free_elsewhere(local: Option<&Local>, header: Header, own_route: bool, bytes: i64, blocks: i64) {
    slots::charge_free(header, bytes, blocks);
    match local {
        Some(local) if own_route => local.pending.add_route(-bytes, -blocks),
        _ => add_route(local, header.tag().route(), -bytes, -blocks),
    }
}

#[inline]
fn add_route(local: Option<&Local>, route: u32, bytes: i64, blocks: i64) {
    if route == 0 {
        add_unrouted(local, bytes);
    } else {
        add_shared(local, route, bytes, blocks);
    }
}

/// Makes `tag` the thread's tag, flushing what the previous one counted; returns the previous.
#[inline]
pub(crate) fn swap_tag(tag: Tag) -> Tag {
    let local = local();
    let Some(local) = local else {
        return Tag::NONE;
    };
    let previous = local.tag.replace(tag);
    let pending = local.pending.take();
    if pending != Taken::default() {
        if previous.slot() != 0 {
            ScopeSlot::get(previous.slot()).add(
                previous.generation(),
                pending.alloc_bytes,
                pending.alloc_blocks,
                pending.freed_bytes,
                pending.freed_blocks,
            );
        }
        let (bytes, blocks) = pending.route_delta();
        add_route(Some(local), previous.route(), bytes, blocks);
    }
    previous
}

/// Whether the allocator is the process's global allocator (checked by allocating a probe).
pub(crate) fn is_installed() -> bool {
    if INSTALLED.load(Ordering::Relaxed) {
        return true;
    }
    // The probe's allocation must reach the allocator's slow path in either mode: flagged for
    // exact mode, due for a sample in sampled mode.
    let Ok(countdown) = LOCAL.try_with(|l| {
        l.flags.set(l.flags.get() | FLAG_PROBE);
        l.countdown.replace(0)
    }) else {
        return false;
    };
    drop(std::hint::black_box(Box::new(0u64)));
    let _ = LOCAL.try_with(|l| {
        l.flags.set(l.flags.get() & !FLAG_PROBE);
        l.countdown.set(countdown);
    });
    INSTALLED.load(Ordering::Relaxed)
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

/// Live bytes and blocks of everything allocated under a route slot, as flushed (for slot 0, no
/// route, the blocks are not counted).
pub(crate) fn route_live(route: u32) -> (i64, i64) {
    let mut bytes = 0;
    let mut blocks = 0;
    for shard in &ROUTES {
        let cell = &shard[route as usize];
        bytes += cell.bytes.load(Ordering::Relaxed);
        blocks += cell.blocks.load(Ordering::Relaxed);
    }
    if route == 0 {
        for cell in &OWN_CELLS {
            bytes += cell.bytes.load(Ordering::Relaxed);
        }
    }
    (bytes, blocks)
}

/// Live heap bytes of the whole process, as seen through the allocator.
pub(crate) fn process_live_bytes() -> i64 {
    let routed: i64 = ROUTES
        .iter()
        .flat_map(|shard| shard.iter().skip(1))
        .map(|cell| cell.bytes.load(Ordering::Relaxed))
        .sum();
    routed + route_live(0).0
}
