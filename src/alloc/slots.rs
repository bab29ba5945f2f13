//! Scope slots: a static slab of per-request counters, handed out by generation.
//!
//! A request holds a slot from the moment its scope opens until the sweeper has judged it
//! ([`SlotGuard`]). Releasing a slot bumps its generation, so that blocks the request left
//! behind no longer find it: their later frees count for their route only.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::header::{generation_of, Header, Tag};
use super::SCOPE_SLOTS;

const WORDS: usize = SCOPE_SLOTS / 64;

#[repr(align(64))]
pub(crate) struct ScopeSlot {
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

    pub(crate) fn get(slot: u32) -> &'static ScopeSlot {
        &SCOPES[slot as usize % SCOPE_SLOTS]
    }

    /// Adds counts for the request of `generation` (as a header keeps it), if it still holds
    /// the slot.
    pub(crate) fn add(
        &self,
        generation: u32,
        alloc_bytes: u64,
        alloc_blocks: u64,
        freed_bytes: u64,
        freed_blocks: u64,
    ) {
        if generation_of(self.generation.load(Ordering::Acquire)) != generation {
            return;
        }
        for (counter, n) in [
            (&self.alloc_bytes, alloc_bytes),
            (&self.alloc_blocks, alloc_blocks),
            (&self.freed_bytes, freed_bytes),
            (&self.freed_blocks, freed_blocks),
        ] {
            if n != 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

static SCOPES: [ScopeSlot; SCOPE_SLOTS] = [const { ScopeSlot::new() }; SCOPE_SLOTS];
static SLOTS_USED: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
static SLOT_CURSOR: AtomicUsize = AtomicUsize::new(0);

const NO_HINT: usize = usize::MAX;

thread_local! {
    /// The bitmap word this thread took its last slot from.
    static SLOT_HINT: Cell<usize> = const { Cell::new(NO_HINT) };
}
static SLOTS_EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// Charges a free (or a `realloc` size change) to the scope that allocated the block, if it
/// still holds its slot.
#[inline]
pub(crate) fn charge_free(header: Header, bytes: i64, blocks: i64) {
    let tag = header.tag();
    if tag.slot() == 0 {
        return;
    }
    let slot = ScopeSlot::get(tag.slot());
    if bytes >= 0 {
        slot.add(tag.generation(), 0, 0, bytes as u64, blocks as u64);
    } else {
        slot.add(tag.generation(), bytes.unsigned_abs(), 0, 0, blocks as u64);
    }
}

/// A scope slot held by one request; released (generation bumped) when dropped.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    tag: Tag,
    released: AtomicBool,
}

impl SlotGuard {
    /// Takes a free scope slot for a request on `route`, or `None` when all are taken.
    ///
    /// Each thread fills the slots of one word of the bitmap after another and remembers
    /// where it is, so consecutive requests of a thread take neighbouring slots (neighbouring
    /// cache lines, one page) and threads rarely share a word. (Taking one word per request in
    /// turn would touch a new page on every request.)
    pub(crate) fn acquire(route: u32) -> Option<SlotGuard> {
        let hint = SLOT_HINT.try_with(Cell::get).unwrap_or(NO_HINT);
        let start = if hint == NO_HINT {
            // Threads start far apart: 1/16 of the table from each other.
            SLOT_CURSOR.fetch_add(WORDS / 16 + 1, Ordering::Relaxed)
        } else {
            hint
        };
        for i in 0..WORDS {
            let w = (start + i) % WORDS;
            let mut used = SLOTS_USED[w].load(Ordering::Relaxed);
            while used != u64::MAX {
                let bit = (!used).trailing_zeros();
                let mask = 1u64 << bit;
                let before = SLOTS_USED[w].fetch_or(mask, Ordering::AcqRel);
                used = before | mask;
                if before & mask != 0 {
                    continue; // taken meanwhile
                }
                let slot = w * 64 + bit as usize;
                if slot == 0 {
                    continue; // slot 0 means "no scope": it stays taken for good
                }
                let _ = SLOT_HINT.try_with(|h| h.set(w));
                let s = &SCOPES[slot];
                s.alloc_bytes.store(0, Ordering::Relaxed);
                s.freed_bytes.store(0, Ordering::Relaxed);
                s.alloc_blocks.store(0, Ordering::Relaxed);
                s.freed_blocks.store(0, Ordering::Relaxed);
                let generation = s.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
                return Some(SlotGuard {
                    tag: Tag::new(slot as u32, generation, route),
                    released: AtomicBool::new(false),
                });
            }
        }
        SLOTS_EXHAUSTED.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(crate) fn tag(&self) -> Tag {
        self.tag
    }

    /// What the request has allocated and freed so far (as flushed at the end of each poll);
    /// `None` once released.
    pub(crate) fn usage(&self) -> Option<Usage> {
        if self.released.load(Ordering::Acquire) {
            return None;
        }
        let s = &SCOPES[self.tag.slot() as usize];
        Some(Usage {
            alloc_bytes: s.alloc_bytes.load(Ordering::Relaxed),
            freed_bytes: s.freed_bytes.load(Ordering::Relaxed),
            alloc_blocks: s.alloc_blocks.load(Ordering::Relaxed),
            freed_blocks: s.freed_blocks.load(Ordering::Relaxed),
        })
    }

    /// Counts `alloc_bytes` allocated and `freed_bytes` freed (one block each) for the request,
    /// as the allocator would.
    #[cfg(test)]
    pub(crate) fn charge(&self, alloc_bytes: u64, freed_bytes: u64) {
        let blocks = |bytes| u64::from(bytes != 0);
        ScopeSlot::get(self.tag.slot()).add(
            self.tag.generation(),
            alloc_bytes,
            blocks(alloc_bytes),
            freed_bytes,
            blocks(freed_bytes),
        );
    }

    /// Whether the slot is still held (not released).
    pub(crate) fn is_held(&self) -> bool {
        !self.released.load(Ordering::Acquire)
    }

    /// Retires the slot: later frees of the request's blocks count for its route only.
    pub(crate) fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.tag.slot() as usize;
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

/// Requests that went untracked because every scope slot was taken.
pub(crate) fn slots_exhausted() -> u64 {
    SLOTS_EXHAUSTED.load(Ordering::Relaxed)
}

/// Scope slots held now: requests in flight and finished requests whose memory waits for the
/// sweeper. (Slot 0, never handed out, is not counted.)
pub(crate) fn slots_in_use() -> u64 {
    let used: u32 = SLOTS_USED
        .iter()
        .enumerate()
        .map(|(w, word)| {
            let bits = word.load(Ordering::Relaxed);
            if w == 0 { bits & !1 } else { bits }.count_ones()
        })
        .sum();
    u64::from(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_once_and_retired_by_generation() {
        let a = SlotGuard::acquire(0).unwrap();
        let b = SlotGuard::acquire(0).unwrap();
        assert_ne!(a.tag().slot(), b.tag().slot());
        assert_ne!(a.tag().slot(), 0);
        let generation = SCOPES[a.tag().slot() as usize]
            .generation
            .load(Ordering::Relaxed);
        assert_eq!(generation_of(generation), a.tag().generation());
        assert_eq!(a.usage().unwrap(), Usage::default());
        ScopeSlot::get(a.tag().slot()).add(a.tag().generation(), 100, 1, 40, 0);
        assert_eq!(a.usage().unwrap().retained_bytes(), 60);
        a.release();
        assert!(a.usage().is_none());
        // A stale generation is ignored.
        ScopeSlot::get(a.tag().slot()).add(a.tag().generation(), 100, 1, 0, 0);
        let c = SlotGuard::acquire(0).unwrap();
        assert_eq!(c.usage().unwrap(), Usage::default());
    }

    #[test]
    fn threads_take_distinct_neighbouring_slots() {
        let taken: Vec<Vec<u32>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let guards: Vec<SlotGuard> =
                            (0..200).map(|_| SlotGuard::acquire(0).unwrap()).collect();
                        let slots = guards.iter().map(|g| g.tag().slot()).collect();
                        for guard in &guards {
                            guard.release();
                        }
                        slots
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<u32> = taken.iter().flatten().copied().collect();
        all.sort_unstable();
        let before = all.len();
        all.dedup();
        assert_eq!(all.len(), before, "a slot was handed out twice");
        for slots in &taken {
            // Mostly consecutive within a thread: one page of slots, not one page per request.
            let adjacent = slots.windows(2).filter(|w| w[1] == w[0] + 1).count();
            assert!(adjacent > slots.len() / 2, "{slots:?}");
        }
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
