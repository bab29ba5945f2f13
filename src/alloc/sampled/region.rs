//! The region sampled blocks live in: one range of address space reserved at the first sample,
//! so that a free tells a sampled block from any other with one subtraction and one comparison
//! (tcmalloc serves its sampled objects from pages of their own for the same reason).
//!
//! The range is mapped readable and writable without reserving swap (`MAP_NORESERVE`): the
//! kernel backs a page only once it is touched. It is handed out in runs of [`UNIT`]-sized
//! units, in size classes of powers of two and the halfway steps between them (1, 2, 3, 4, 6,
//! 8, 12, … units), one free list per class: a run is never split or merged, so freed runs are
//! reused by blocks of their class and the resident memory stays at the peak each class needed
//! (a sampled block wastes at most a third of its run, in address space more than in memory). A freed run longer than [`RETURN_FROM`] units gives its memory back to the kernel
//! first. The lists are kept inside the free runs themselves, under one lock that only sampled
//! allocations and frees take — never an allocation of the inner allocator.

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

/// Size classes: runs of 1, 2, 3, 4, 6, 8, 12, … units — powers of two and the halfway steps
/// between them — up to the whole range.
const CLASSES: usize = 2 * (RANGE / UNIT).trailing_zeros() as usize;

/// The units a run of class `class` spans.
const fn class_units(class: usize) -> usize {
    if class == 0 {
        1
    } else if class % 2 == 1 {
        1 << class.div_ceil(2)
    } else {
        3 << (class / 2 - 1)
    }
}

/// Freed runs longer than this many units (1 MiB) give their pages back to the kernel; shorter
/// ones stay resident for the next samples of their class (a page fault per page would cost
/// more than the sample).
const RETURN_FROM: usize = 256;

/// Where the range starts. Until it is reserved: the top of the address space, where no block
/// can be, so that [`contains`] needs no second test.
static BASE: AtomicUsize = AtomicUsize::new(usize::MAX - RANGE + 1);

static STATE: Mutex<State> = Mutex::new(State::new());

/// The region's bookkeeping. Offsets are from [`BASE`]; a list's head is `0` when empty (no run
/// starts at offset 0, see [`State::new`]).
struct State {
    reserved: Reservation,
    /// The first offset never handed out.
    bump: usize,
    /// Free runs of 2^`i` units.
    free: [usize; CLASSES],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reservation {
    NotYet,
    Reserved,
    Failed,
}

impl State {
    const fn new() -> Self {
        State {
            reserved: Reservation::NotYet,
            // The first unit is never handed out: offset 0 marks an empty list.
            bump: UNIT,
            free: [0; CLASSES],
        }
    }
}

/// The size class of a run of at least `units` units, or `None` past the range.
fn class_of(units: usize) -> Option<usize> {
    (0..CLASSES).find(|&class| class_units(class) >= units)
}

/// The units a run for `units` units spans (its class's); [`allocate`] hands out and [`free`]
/// takes back runs of this length.
pub(crate) fn units_of(units: usize) -> usize {
    class_of(units).map_or(units, class_units)
}

/// Bytes of the range handed out so far, free runs included: at most this much of it is
/// resident.
pub(crate) fn used_bytes() -> u64 {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match state.reserved {
        Reservation::Reserved => (state.bump - UNIT) as u64,
        _ => 0,
    }
}

/// Whether `ptr` lies in the region: whether it is a sampled block.
#[inline(always)]
pub(crate) fn contains(ptr: *const u8) -> bool {
    (ptr as usize).wrapping_sub(BASE.load(Ordering::Relaxed)) < RANGE
}

/// A run of at least `units` units ([`units_of`]`(units)`), or `None` when the range cannot be
/// reserved or is used up.
pub(crate) fn allocate(units: usize) -> Option<*mut u8> {
    let class = class_of(units)?;
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if state.reserved == Reservation::NotYet {
        state.reserved = reserve();
    }
    if state.reserved != Reservation::Reserved {
        return None;
    }
    let base = BASE.load(Ordering::Relaxed);
    let head = state.free[class];
    let offset = if head != 0 {
        // SAFETY: `head` is the offset of a free run in the reserved range, whose first word
        // holds the next free run's offset (written by `free`).
        state.free[class] = unsafe { ((base + head) as *const usize).read() };
        head
    } else {
        let offset = state.bump;
        let end = offset.checked_add(UNIT * class_units(class))?;
        if end > RANGE {
            return None;
        }
        state.bump = end;
        offset
    };
    Some((base + offset) as *mut u8)
}

/// Gives back a run that [`allocate`] returned for `units` units.
///
/// # Safety
///
/// `run` came from [`allocate`] with `units`, and nothing uses it any more.
pub(crate) unsafe fn free(run: *mut u8, units: usize) {
    let Some(class) = class_of(units) else {
        return;
    };
    if class_units(class) > RETURN_FROM {
        forget_pages(run, UNIT * class_units(class));
    }
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: the run is free, in the reserved writable range, and at least a unit long; its
    // first word is the list's.
    unsafe { run.cast::<usize>().write(state.free[class]) };
    state.free[class] = run as usize - base;
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
    fn runs_come_in_size_classes_and_are_reused_by_class() {
        let units: Vec<usize> = (1..=9).map(units_of).collect();
        assert_eq!(units, [1, 2, 3, 4, 6, 6, 8, 8, 12]);
        assert_eq!(class_units(CLASSES - 1), RANGE / UNIT);
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
        // Other tests share the region: ask until the freed runs come back.
        let ones: Vec<*mut u8> = (0..8).map(|_| allocate(1).unwrap()).collect();
        assert!(ones.contains(&a), "a freed run of one unit is reused");
        let sixties: Vec<*mut u8> = (0..8).map(|_| allocate(48).unwrap()).collect();
        assert!(sixties.contains(&b), "runs of 33 to 48 units share a class");
        for (run, units) in ones
            .iter()
            .map(|&r| (r, 1))
            .chain(sixties.iter().map(|&r| (r, 60)))
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
