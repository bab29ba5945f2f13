//! Task cells: how the allocator sees a plain `tokio::spawn` without the runtime's hooks.
//!
//! `tokio::spawn` allocates the task — its header, scheduler, future and output — as one block,
//! on the spawning thread, inside the call, and frees it when the task has ended and no
//! `JoinHandle` holds it any more. tokio aligns that block to a cache line pair
//! ([`CELL_ALIGN`]: 128 bytes on x86_64, aarch64 and powerpc64), which almost nothing else a
//! request allocates asks for. So a block of that alignment allocated inside a request gets its
//! call stack captured (return addresses only, into a [`StackTable`]) and an entry in a fixed
//! table keyed by its address; the thread keeps the entry's number until the request's scope is
//! left, when the request layer tracks it like any task ([`take_new`]). The sweeper resolves each
//! distinct stack once, off the request path: a stack through tokio's task creation is a task,
//! spawned at the first frame above tokio's that is neither tokio's nor the standard
//! library's; any other (a cache-padded channel) is let go ([`set_kind`]), and later blocks of
//! the same stack are not tracked at all.
//!
//! A free of a block of that alignment looks its address up in a window of the table (after one
//! load, when no cell is recorded); every other allocation and free pays one comparison of the
//! layout's alignment.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::header::Tag;
use super::stacks::{self, StackTable, MAX_FRAMES};

/// The alignment of tokio's task cell on this architecture (`runtime/task/core.rs`: a cache
/// line pair where the line is 64 bytes and the core fetches two, the line elsewhere).
pub(crate) const CELL_ALIGN: usize = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "powerpc64"
)) {
    128
} else if cfg!(target_arch = "s390x") {
    256
} else if cfg!(any(
    target_arch = "arm",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "hexagon"
)) {
    32
} else if cfg!(target_arch = "m68k") {
    16
} else {
    64
};

/// Cells recorded at once, over the process. Past it (a window full), a cell is not tracked and
/// [`dropped`] counts it.
const ENTRIES: usize = 1 << 15;

/// Entries a lookup looks at, from the address's hash.
const WINDOW: usize = 16;

/// Distinct spawn stacks.
const STACKS: usize = 1023;

/// Cells a thread keeps for its current request before the scope is left.
const PENDING: usize = 256;

struct Entry {
    /// The block's address; 0 while free.
    address: AtomicUsize,
    /// The allocating request's tag (its word).
    tag: AtomicU64,
    /// The stack's number in [`STACK_TABLE`] plus one.
    stack: AtomicU32,
    /// Bumped when the block is freed: a [`TaskCell`] of an older generation is gone.
    generation: AtomicU32,
}

static TABLE: [Entry; ENTRIES] = [const {
    Entry {
        address: AtomicUsize::new(0),
        tag: AtomicU64::new(0),
        stack: AtomicU32::new(0),
        generation: AtomicU32::new(0),
    }
}; ENTRIES];

static STACK_TABLE: StackTable<STACKS> = StackTable::new();

/// What the sweeper found each stack to be ([`Kind`] as a byte).
static KINDS: [AtomicU8; STACKS] = [const { AtomicU8::new(0) }; STACKS];

/// Entries in use: while 0, a free looks nothing up.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Cells recorded on this thread since its current scope was entered: entry and generation.
    static NEW: Pending = const {
        Pending {
            cells: [const { Cell::new(0) }; PENDING],
            len: Cell::new(0),
            last_recorded: Cell::new(false),
        }
    };
}

struct Pending {
    cells: [Cell<u64>; PENDING],
    len: Cell<usize>,
    /// Whether the last block of the cell's alignment allocated on this thread was recorded.
    last_recorded: Cell<bool>,
}

/// What a stack turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not looked at yet.
    Unknown = 0,
    /// A task's cell.
    Task = 1,
    /// Something else of the same alignment (a cache-padded channel): its blocks are let go.
    Other = 2,
}

/// A recorded cell, as the registry holds it: alive while its entry still has its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskCell {
    entry: u32,
    generation: u32,
}

impl TaskCell {
    /// Whether the block is still allocated (the task runs, or its output is still held).
    pub(crate) fn is_alive(self) -> bool {
        let entry = &TABLE[self.entry as usize];
        entry.generation.load(Ordering::Acquire) == self.generation
            && entry.address.load(Ordering::Acquire) != 0
    }

    /// The cell's stack, by number (stable for the process's life).
    pub(crate) fn stack(self) -> u32 {
        TABLE[self.entry as usize].stack.load(Ordering::Relaxed)
    }

    /// The stack's return addresses, leaf first.
    pub(crate) fn frames(self) -> Option<Vec<usize>> {
        STACK_TABLE.frames(self.stack())
    }

    /// Stops following the cell (its block stays as it is).
    pub(crate) fn release(self) {
        let entry = &TABLE[self.entry as usize];
        let address = entry.address.load(Ordering::Acquire);
        if address != 0 && entry.generation.load(Ordering::Acquire) == self.generation {
            vacate(entry, address);
        }
    }
}

/// Records a block of [`CELL_ALIGN`] or more at `address`, allocated by `tag` (not `NONE`), for
/// the thread's current scope. Must run with the allocator marked busy; allocates nothing.
#[cold]
#[inline(never)]
pub(crate) fn record(address: usize, tag: Tag) {
    let recorded = try_record(address, tag);
    let _ = NEW.try_with(|new| {
        new.last_recorded.set(false);
        let Some(cell) = recorded else { return };
        let len = new.len.get();
        if len == PENDING {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            cell.release();
            return;
        }
        new.cells[len].set(u64::from(cell.entry) << 32 | u64::from(cell.generation));
        new.len.set(len + 1);
        new.last_recorded.set(true);
    });
}

fn try_record(address: usize, tag: Tag) -> Option<TaskCell> {
    let mut frames = [0usize; MAX_FRAMES];
    let (n, known) = capture(&mut frames);
    let stack = match known {
        0 => STACK_TABLE.record(0, &frames[..n], 0, 0),
        known => known,
    };
    if stack == 0 {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if kind(stack) == Kind::Other {
        return None;
    }
    let start = slot_of(address);
    for i in 0..WINDOW {
        let index = (start + i) % ENTRIES;
        let entry = &TABLE[index];
        if entry
            .address
            .compare_exchange(0, address, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            entry.tag.store(word(tag), Ordering::Relaxed);
            entry.stack.store(stack, Ordering::Relaxed);
            LIVE.fetch_add(1, Ordering::Relaxed);
            return Some(TaskCell {
                entry: index as u32,
                generation: entry.generation.load(Ordering::Acquire),
            });
        }
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
    None
}

/// Unwinds the stack of a cell's allocation, stopping at the spawn frame of a known spawn site
/// (see [`learn_prefix`]); returns the frames written and the known stack's number (0: none).
fn capture(frames: &mut [usize; MAX_FRAMES]) -> (usize, u32) {
    let depths = DEPTHS.load(Ordering::Relaxed);
    let mut hash = PREFIX_SEED;
    let mut known = 0;
    let n = stacks::capture_until(frames, |so_far| {
        hash = prefix_step(hash, so_far[so_far.len() - 1]);
        if depths & (1 << so_far.len()) != 0 {
            known = known_prefix(hash);
        }
        known == 0
    });
    (n, known)
}

/// Spawn sites the sweeper has read: the hash of a task stack's return addresses up to and
/// including its spawn frame, and the stack's number. A spawn from the same call site has the
/// same return addresses up to there, whatever called it.
struct Prefix {
    hash: AtomicU64,
    stack: AtomicU32,
}

const PREFIXES: usize = 1024;
static PREFIX_TABLE: [Prefix; PREFIXES] = [const {
    Prefix {
        hash: AtomicU64::new(0),
        stack: AtomicU32::new(0),
    }
}; PREFIXES];
/// Bit `n`: a known prefix has `n` frames.
static DEPTHS: AtomicU64 = AtomicU64::new(0);
const PREFIX_SEED: u64 = 0xcbf2_9ce4_8422_2325;

fn prefix_step(hash: u64, ip: usize) -> u64 {
    (hash ^ ip as u64).wrapping_mul(0x0000_0100_0000_01B3) | 1
}

/// The stack number of the known prefix hashed `hash` (0: none).
fn known_prefix(hash: u64) -> u32 {
    let start = hash as usize % PREFIXES;
    for i in 0..WINDOW {
        let prefix = &PREFIX_TABLE[(start + i) % PREFIXES];
        match prefix.hash.load(Ordering::Acquire) {
            0 => return 0,
            found if found == hash => return prefix.stack.load(Ordering::Acquire),
            _ => {}
        }
    }
    0
}

/// Remembers that stack number `stack` spawned its task at `frames.last()`: later spawns from
/// that call site stop unwinding there. (The sweeper calls it once it has read the stack.)
pub(crate) fn learn_prefix(frames: &[usize], stack: u32) {
    if frames.is_empty() || frames.len() > MAX_FRAMES {
        return;
    }
    let hash = frames.iter().fold(PREFIX_SEED, |h, &ip| prefix_step(h, ip));
    let start = hash as usize % PREFIXES;
    for i in 0..WINDOW {
        let prefix = &PREFIX_TABLE[(start + i) % PREFIXES];
        let claimed = prefix
            .hash
            .compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_ok() || claimed == Err(hash) {
            prefix.stack.store(stack, Ordering::Release);
            DEPTHS.fetch_or(1 << frames.len(), Ordering::Relaxed);
            return;
        }
    }
}

fn word(tag: Tag) -> u64 {
    super::header::Header::new(tag, 0).word()
}

/// A block of [`CELL_ALIGN`] or more at `address` is freed (or moved by `realloc`).
#[inline]
pub(crate) fn forget(address: usize) {
    if LIVE.load(Ordering::Relaxed) == 0 {
        return;
    }
    forget_slow(address);
}

/// Lets go of the entry of the block at `address`; `false` when there is none.
#[cold]
#[inline(never)]
fn forget_slow(address: usize) -> bool {
    let start = slot_of(address);
    for i in 0..WINDOW {
        let entry = &TABLE[(start + i) % ENTRIES];
        if entry.address.load(Ordering::Acquire) == address {
            vacate(entry, address);
            return true;
        }
    }
    false
}

fn vacate(entry: &Entry, address: usize) {
    entry.generation.fetch_add(1, Ordering::AcqRel);
    if entry
        .address
        .compare_exchange(address, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cells are aligned to [`CELL_ALIGN`]: the bits above it spread them over the table.
fn slot_of(address: usize) -> usize {
    let x = (address / CELL_ALIGN) as u64;
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % ENTRIES
}

/// Hands each cell recorded on this thread since its scope was entered to `track`, if it was
/// recorded under `tag` and its stack is not known to be something else; lets go of the others
/// and of those `track` refuses (returns `false`). Cheap when there is none: one thread-local
/// read.
#[inline]
pub(crate) fn take_new(tag: Tag, track: impl FnMut(TaskCell) -> bool) {
    let Ok(len) = NEW.try_with(|new| new.len.get()) else {
        return;
    };
    if len != 0 {
        take_new_slow(tag, track);
    }
}

#[cold]
#[inline(never)]
fn take_new_slow(tag: Tag, mut track: impl FnMut(TaskCell) -> bool) {
    let mut cells = [TaskCell {
        entry: 0,
        generation: 0,
    }; PENDING];
    let Ok(len) = NEW.try_with(|new| {
        let len = new.len.replace(0);
        new.last_recorded.set(false);
        for (cell, word) in cells.iter_mut().zip(&new.cells[..len]) {
            let word = word.get();
            *cell = TaskCell {
                entry: (word >> 32) as u32,
                generation: word as u32,
            };
        }
        len
    }) else {
        return;
    };
    for &cell in &cells[..len] {
        let entry = &TABLE[cell.entry as usize];
        let mine = entry.tag.load(Ordering::Relaxed) == word(tag);
        if !cell.is_alive() {
            continue;
        }
        if !mine || kind(cell.stack()) == Kind::Other || !track(cell) {
            cell.release();
        }
    }
}

/// How many cells this thread holds for its current scope (for [`discard_since`]).
pub(crate) fn pending() -> usize {
    NEW.try_with(|new| new.len.get()).unwrap_or(0)
}

/// Lets go of the cells this thread recorded since [`pending`] said `mark`: the task spawned in
/// between is tracked another way (`leakwatch::spawn`).
pub(crate) fn discard_since(mark: usize) {
    let _ = NEW.try_with(|new| {
        while new.len.get() > mark {
            let len = new.len.get() - 1;
            new.len.set(len);
            let word = new.cells[len].get();
            TaskCell {
                entry: (word >> 32) as u32,
                generation: word as u32,
            }
            .release();
        }
        new.last_recorded.set(false);
    });
}

/// Lets go of the cell of the task just spawned on this thread, when the last block of the
/// cell's alignment was recorded: the runtime's spawn hook tracks that task itself.
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) fn discard_last() {
    let recorded = NEW.try_with(|new| new.last_recorded.get()).unwrap_or(false);
    if recorded {
        discard_since(pending().saturating_sub(1));
    }
}

/// Lets go of the recorded cell that holds `address` (a future's own, on its first poll: a
/// [`crate::scoped`] task tracks itself). A task's future lies within the first few cache line
/// pairs of its cell.
pub(crate) fn forget_containing(address: usize) {
    if LIVE.load(Ordering::Relaxed) == 0 {
        return;
    }
    let first = address & !(CELL_ALIGN - 1);
    for k in 0..4 {
        let Some(base) = first.checked_sub(k * CELL_ALIGN) else {
            return;
        };
        if forget_slow(base) {
            return;
        }
    }
}

/// What the stack numbered `stack` was found to be.
pub(crate) fn kind(stack: u32) -> Kind {
    let byte = (stack as usize)
        .checked_sub(1)
        .and_then(|i| KINDS.get(i))
        .map_or(0, |k| k.load(Ordering::Relaxed));
    match byte {
        1 => Kind::Task,
        2 => Kind::Other,
        _ => Kind::Unknown,
    }
}

/// The stacks recorded whose kind is not known yet, by number, with their return addresses —
/// also those of blocks freed before their request's scope was left (a task that ended at
/// once, a channel made and dropped in one poll), so that the sweeper reads them too and later
/// blocks from the same place stop unwinding early.
pub(crate) fn unread_stacks() -> Vec<(u32, Vec<usize>)> {
    (1..=STACKS as u32)
        .filter(|&stack| kind(stack) == Kind::Unknown)
        .filter_map(|stack| STACK_TABLE.frames(stack).map(|frames| (stack, frames)))
        .collect()
}

/// Records what the stack numbered `stack` is, once the sweeper has resolved it.
pub(crate) fn set_kind(stack: u32, kind: Kind) {
    if let Some(k) = (stack as usize).checked_sub(1).and_then(|i| KINDS.get(i)) {
        k.store(kind as u8, Ordering::Relaxed);
    }
}

/// Cells not tracked because a table was full.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokio_s_alignment_on_this_architecture() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(CELL_ALIGN, 128);
        assert!(CELL_ALIGN.is_power_of_two());
    }

    #[test]
    fn a_cell_is_alive_until_its_block_is_freed_and_is_handed_over_once() {
        let tag = Tag::new(3, 1, 2);
        let address = 0x7000_0000_0080usize;
        record(address, tag);
        let mut seen = Vec::new();
        take_new(tag, |cell| {
            seen.push(cell);
            true
        });
        assert_eq!(seen.len(), 1);
        let cell = seen[0];
        assert!(cell.is_alive());
        assert!(cell.frames().is_some_and(|f| !f.is_empty()));
        take_new(tag, |_| panic!("handed over once"));
        forget(address);
        assert!(!cell.is_alive());

        // Recorded under another tag, or refused: let go.
        record(address + CELL_ALIGN, Tag::new(4, 1, 2));
        take_new(tag, |_| panic!("not this scope's"));
        record(address + 2 * CELL_ALIGN, tag);
        let mut refused = None;
        take_new(tag, |cell| {
            refused = Some(cell);
            false
        });
        assert!(!refused.unwrap().is_alive());
    }

    #[test]
    fn a_known_spawn_site_stops_the_unwinding_at_its_frame() {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut frames = [0usize; MAX_FRAMES];
            let (n, known) = capture(&mut frames);
            seen.push((n, known));
            if known == 0 {
                // As the sweeper would, once it found the spawn frame among the first eight.
                learn_prefix(&frames[..n.min(8)], 77);
            }
        }
        assert_eq!(seen[0].1, 0, "not known yet");
        assert_eq!(
            seen[1],
            (seen[0].0.min(8), 77),
            "stopped at the known frame"
        );
    }

    #[test]
    fn discarded_cells_and_other_stacks_are_not_tracked() {
        let tag = Tag::new(5, 1, 2);
        let address = 0x7100_0000_0000usize;
        let mark = pending();
        record(address, tag);
        discard_since(mark);
        record(address + CELL_ALIGN, tag);
        discard_last();
        take_new(tag, |_| panic!("discarded"));

        // The same stack twice: once found to be no task's, its blocks are not tracked.
        let mut found = Vec::new();
        for i in 2..4 {
            record(address + i * CELL_ALIGN, tag);
            take_new(tag, |cell| {
                found.push(cell);
                true
            });
            set_kind(found[0].stack(), Kind::Other);
        }
        assert_eq!(found.len(), 1);
        let cell = found[0];
        set_kind(cell.stack(), Kind::Unknown);

        // A future inside its cell lets go of it.
        forget_containing(address + 2 * CELL_ALIGN + 200);
        assert!(!cell.is_alive());
    }
}
