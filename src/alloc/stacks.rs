//! Call stacks captured on the allocation path, and a fixed table that keeps each distinct one.
//!
//! A stack is up to [`MAX_FRAMES`] return addresses, unwound into an array on the stack: nothing
//! is allocated and nothing is resolved here (symbols are looked up later, by the sweeper or
//! when a report is built). A [`StackTable`] is a statically allocated open-addressing table
//! keyed by (route, stack), each entry counting what its blocks still hold; entries are never
//! freed, so an entry's number names its stack for good.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Return addresses kept per stack: enough to reach the caller of `tokio::spawn` from the
/// allocation of its task in an unoptimised build (about 20 frames down).
pub(crate) const MAX_FRAMES: usize = 32;

/// How many entries a lookup probes before it gives up (the table is then full enough).
const PROBES: usize = 64;

/// Unwinds the current stack into `frames`, leaf first; returns how many were written.
///
/// The caller marks the allocator busy first: unwinding may allocate on some platforms.
pub(crate) fn capture(frames: &mut [usize; MAX_FRAMES]) -> usize {
    capture_until(frames, |_| true)
}

/// [`capture`], stopping early once `more` (called with the frames so far) says `false`.
pub(crate) fn capture_until(
    frames: &mut [usize; MAX_FRAMES],
    mut more: impl FnMut(&[usize]) -> bool,
) -> usize {
    let mut n = 0;
    // SAFETY: unwinding is not synchronised with other threads' symbolisation; on this
    // platform's backend (libunwind/libgcc) that is sound. The callback only writes into
    // `frames` and allocates nothing (nor may `more`).
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            frames[n] = frame.ip() as usize;
            n += 1;
            n < MAX_FRAMES && more(&frames[..n])
        });
    }
    n
}

struct Entry {
    /// 0 while free; the key's hash once claimed.
    hash: AtomicU64,
    ready: AtomicBool,
    route: AtomicU32,
    frames: [AtomicUsize; MAX_FRAMES],
    bytes: AtomicI64,
    blocks: AtomicI64,
}

impl Entry {
    const fn new() -> Self {
        Entry {
            hash: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            route: AtomicU32::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_FRAMES],
            bytes: AtomicI64::new(0),
            blocks: AtomicI64::new(0),
        }
    }
}

/// Distinct (route, stack) pairs, `N` at most, with the bytes and blocks each still holds.
pub(crate) struct StackTable<const N: usize> {
    entries: [Entry; N],
}

impl<const N: usize> StackTable<N> {
    pub(crate) const fn new() -> Self {
        StackTable {
            entries: [const { Entry::new() }; N],
        }
    }

    /// Finds or adds the entry of (`route`, `frames`) and adds `bytes` and `blocks` to it;
    /// returns its number plus one (0 when the table is full). Never allocates.
    pub(crate) fn record(&self, route: u32, frames: &[usize], bytes: i64, blocks: i64) -> u32 {
        let hash = key_hash(route, frames);
        let start = (hash as usize) % N;
        for i in 0..N.min(PROBES) {
            let index = (start + i) % N;
            let entry = &self.entries[index];
            let current = entry.hash.load(Ordering::Acquire);
            if current == 0 {
                if entry
                    .hash
                    .compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    entry.route.store(route, Ordering::Relaxed);
                    for (slot, &ip) in entry.frames.iter().zip(frames) {
                        slot.store(ip, Ordering::Relaxed);
                    }
                    entry.ready.store(true, Ordering::Release);
                    add(entry, bytes, blocks);
                    return index as u32 + 1;
                }
                if entry.hash.load(Ordering::Acquire) != hash {
                    continue;
                }
            } else if current != hash {
                continue;
            }
            add(entry, bytes, blocks);
            return index as u32 + 1;
        }
        0
    }

    /// Adds `bytes` and `blocks` (negative to take back) to entry `number` (its number plus
    /// one, as [`record`](Self::record) returned it; 0 is ignored).
    #[inline]
    pub(crate) fn charge(&self, number: u32, bytes: i64, blocks: i64) {
        if let Some(entry) = (number as usize)
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
        {
            add(entry, bytes, blocks);
        }
    }

    /// The frames of entry `number` (plus one), once it is complete.
    pub(crate) fn frames(&self, number: u32) -> Option<Vec<usize>> {
        let entry = self.entries.get((number as usize).checked_sub(1)?)?;
        entry
            .ready
            .load(Ordering::Acquire)
            .then(|| frames_of(entry))
    }

    /// The entries of the routes `wanted` accepts that still hold bytes: route, frames, bytes
    /// and blocks.
    pub(crate) fn holding<'a>(
        &'a self,
        wanted: impl Fn(u32) -> bool + 'a,
    ) -> impl Iterator<Item = (u32, Vec<usize>, u64, u64)> + 'a {
        self.entries.iter().filter_map(move |entry| {
            if !entry.ready.load(Ordering::Acquire) {
                return None;
            }
            let route = entry.route.load(Ordering::Relaxed);
            let bytes = entry.bytes.load(Ordering::Relaxed);
            if !wanted(route) || bytes <= 0 {
                return None;
            }
            let blocks = entry.blocks.load(Ordering::Relaxed).max(0) as u64;
            Some((route, frames_of(entry), bytes as u64, blocks))
        })
    }
}

#[inline]
fn add(entry: &Entry, bytes: i64, blocks: i64) {
    entry.bytes.fetch_add(bytes, Ordering::Relaxed);
    entry.blocks.fetch_add(blocks, Ordering::Relaxed);
}

fn frames_of(entry: &Entry) -> Vec<usize> {
    entry
        .frames
        .iter()
        .map(|f| f.load(Ordering::Relaxed))
        .take_while(|&ip| ip != 0)
        .collect()
}

fn key_hash(route: u32, frames: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(route);
    for &ip in frames {
        h = (h ^ ip as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h | 1 // never 0, the "free" mark
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_route_and_stack() {
        assert_ne!(key_hash(1, &[1, 2, 3]), key_hash(2, &[1, 2, 3]));
        assert_ne!(key_hash(1, &[1, 2, 3]), key_hash(1, &[1, 2, 4]));
        assert_ne!(key_hash(0, &[]), 0);
    }

    #[test]
    fn one_entry_per_stack_counting_what_it_holds() {
        static TABLE: StackTable<8> = StackTable::new();
        let a = TABLE.record(1, &[10, 20], 100, 1);
        let b = TABLE.record(1, &[10, 21], 50, 1);
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!(
            TABLE.record(1, &[10, 20], 100, 1),
            a,
            "the same stack, the same entry"
        );
        assert_eq!(TABLE.frames(a).unwrap(), [10, 20]);
        TABLE.charge(b, -50, -1);
        let holding: Vec<_> = TABLE.holding(|route| route == 1).collect();
        assert_eq!(holding, [(1, vec![10, 20], 200, 2)]);
        for ip in 0..8 {
            TABLE.record(2, &[ip], 1, 1);
        }
        assert_eq!(TABLE.record(3, &[99], 1, 1), 0, "full");
        assert_eq!(TABLE.frames(0), None);
    }
}
