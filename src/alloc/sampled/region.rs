//! The region sampled blocks live in: one range of address space reserved at the first sample,
//! so that a free tells a sampled block from any other with one subtraction and one comparison
//! (tcmalloc serves its sampled objects from pages of their own for the same reason).
//!
//! The range is mapped readable and writable without reserving swap (`MAP_NORESERVE`): the
//! kernel backs a page only once it is touched. It is handed out in runs of whole
//! [`UNIT`]-sized units. A freed run goes onto a free list by its length (one list per length up
//! to [`SMALL_RUNS`] units, one first-fit list for longer runs); a freed run longer than
//! [`RETURN_FROM`] units gives its memory back to the kernel first. The lists are kept inside the
//! free runs themselves, under one lock that only sampled allocations and frees take — never an
//! allocation of the inner allocator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The granularity of runs, and the largest alignment a sampled block can have.
pub(crate) const UNIT: usize = 4096;

/// The size of the range: room for 32 GiB of live sampled blocks (large blocks are always
/// sampled), and still a size valgrind lets a program map.
#[cfg(target_pointer_width = "64")]
pub(crate) const RANGE: usize = 32 << 30;
/// The size of the range.
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const RANGE: usize = 256 << 20;

/// Runs of up to this many units have a free list of their own length.
const SMALL_RUNS: usize = 32;

/// Freed runs longer than this many units (1 MiB) give their pages back to the kernel; shorter
/// ones stay resident for the next samples (a page fault per page would cost more than the
/// sample).
const RETURN_FROM: usize = 256;

/// Where the range starts. Until it is reserved: the top of the address space, where no block
/// can be, so that [`contains`] needs no second test.
static BASE: AtomicUsize = AtomicUsize::new(usize::MAX - RANGE + 1);

static STATE: Mutex<State> = Mutex::new(State::new());

/// The region's bookkeeping. Offsets are from [`BASE`]; a list's head is `0` when empty (no run
/// starts at offset 0 once the first is handed out, see [`State::new`]).
struct State {
    reserved: Reservation,
    /// The first offset never handed out.
    bump: usize,
    /// Free runs of `i + 1` units.
    small: [usize; SMALL_RUNS],
    /// Free runs longer than [`SMALL_RUNS`] units, each with its length.
    large: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reservation {
    NotYet,
    Reserved,
    Failed,
}

/// What a free run keeps in its first bytes.
#[repr(C)]
struct FreeRun {
    next: usize,
    units: usize,
}

impl State {
    const fn new() -> Self {
        State {
            reserved: Reservation::NotYet,
            // The first unit is never handed out: offset 0 marks an empty list.
            bump: UNIT,
            small: [0; SMALL_RUNS],
            large: 0,
        }
    }
}

/// Whether `ptr` lies in the region: whether it is a sampled block.
#[inline(always)]
pub(crate) fn contains(ptr: *const u8) -> bool {
    (ptr as usize).wrapping_sub(BASE.load(Ordering::Relaxed)) < RANGE
}

/// A run of `units` units, or `None` when the range cannot be reserved or is used up.
pub(crate) fn allocate(units: usize) -> Option<*mut u8> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if state.reserved == Reservation::NotYet {
        state.reserved = reserve();
    }
    if state.reserved != Reservation::Reserved {
        return None;
    }
    let base = BASE.load(Ordering::Relaxed);
    let offset = take_free(&mut state, base, units).or_else(|| {
        let offset = state.bump;
        let end = offset.checked_add(units.checked_mul(UNIT)?)?;
        (end <= RANGE).then(|| {
            state.bump = end;
            offset
        })
    })?;
    Some((base + offset) as *mut u8)
}

/// Takes a free run of `units` units off the lists: one of that length, else the first longer
/// one, split.
fn take_free(state: &mut State, base: usize, units: usize) -> Option<usize> {
    if units <= SMALL_RUNS {
        let head = state.small[units - 1];
        if head != 0 {
            // SAFETY: `head` is the offset of a free run in the reserved range, which holds a
            // `FreeRun` at its start (written by `free`).
            state.small[units - 1] = unsafe { (*((base + head) as *const FreeRun)).next };
            return Some(head);
        }
    }
    let mut link: *mut usize = &mut state.large;
    // SAFETY: `link` points at the list head or at the `next` field of a free run in the
    // reserved range; every offset on the list is a free run holding a `FreeRun`.
    unsafe {
        while *link != 0 {
            let offset = *link;
            let run = (base + offset) as *mut FreeRun;
            if (*run).units >= units {
                *link = (*run).next;
                let rest = (*run).units - units;
                if rest > 0 {
                    push(state, base, offset + units * UNIT, rest);
                }
                return Some(offset);
            }
            link = &mut (*run).next;
        }
    }
    None
}

/// Puts a free run on its list.
fn push(state: &mut State, base: usize, offset: usize, units: usize) {
    let head = if units <= SMALL_RUNS {
        &mut state.small[units - 1]
    } else {
        &mut state.large
    };
    // SAFETY: `offset` is a free run of `units` units in the reserved, writable range; its
    // first bytes are the list's.
    unsafe {
        ((base + offset) as *mut FreeRun).write(FreeRun { next: *head, units });
    }
    *head = offset;
}

/// Gives back a run that [`allocate`] returned for `units` units.
///
/// # Safety
///
/// `run` came from [`allocate`] with `units`, and nothing uses it any more.
pub(crate) unsafe fn free(run: *mut u8, units: usize) {
    if units > RETURN_FROM {
        forget_pages(run, units * UNIT);
    }
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let base = BASE.load(Ordering::Relaxed);
    push(&mut state, base, run as usize - base, units);
}

/// Reserves the range; on success publishes its start in [`BASE`].
#[cfg(unix)]
fn reserve() -> Reservation {
    // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing; nothing
    // else is affected.
    let start = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RANGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if start == libc::MAP_FAILED {
        return Reservation::Failed;
    }
    BASE.store(start as usize, Ordering::Relaxed);
    Reservation::Reserved
}

/// Elsewhere, sampled blocks are not served (every block goes to the inner allocator).
#[cfg(not(unix))]
fn reserve() -> Reservation {
    Reservation::Failed
}

/// Lets the kernel take back the pages of a free run (they read as zeros when touched again).
#[cfg(unix)]
fn forget_pages(run: *mut u8, len: usize) {
    // SAFETY: the run lies in the region's mapping and nothing uses it; advice on it affects
    // no other memory. A failure only means the pages stay resident.
    unsafe {
        libc::madvise(run.cast(), len, libc::MADV_DONTNEED);
    }
}

#[cfg(not(unix))]
fn forget_pages(_run: *mut u8, _len: usize) {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn runs_are_reused_by_length_and_split() {
        let a = allocate(1).unwrap();
        let b = allocate(40).unwrap();
        assert!(contains(a) && contains(b));
        assert!(!contains(std::ptr::null()));
        assert!(!contains(&0u8));
        assert_eq!(a as usize % UNIT, 0);
        // SAFETY: both came from `allocate` with these lengths and are not used.
        unsafe {
            free(a, 1);
            free(b, 40);
        }
        // Other tests share the region: ask until a reused run comes back.
        let again: Vec<*mut u8> = (0..8).map(|_| allocate(1).unwrap()).collect();
        assert!(again.contains(&a), "a freed run of one unit is reused");
        let split = allocate(39).unwrap();
        let rest = allocate(1).unwrap();
        for (run, units) in again
            .iter()
            .map(|&r| (r, 1))
            .chain([(split, 39), (rest, 1)])
        {
            // SAFETY: from `allocate` with these lengths, unused.
            unsafe { free(run, units) };
        }
    }

    #[test]
    fn the_range_is_bounded() {
        assert!(allocate(RANGE / UNIT + 1).is_none());
        assert!(allocate(usize::MAX / UNIT).is_none());
    }
}
