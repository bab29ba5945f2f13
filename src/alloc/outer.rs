//! The block asked of the inner allocator in exact mode: the caller's layout with room for the
//! header in front, and where the caller's pointer lies in it.

use std::alloc::Layout;

use super::HEADER_SIZE;

/// The alignment of the block allocated for `layout`, which is also the offset of the user's
/// pointer in it: the header takes the last `HEADER_SIZE` bytes before that pointer.
#[inline(always)]
fn block_align(layout: Layout) -> usize {
    layout.align().max(HEADER_SIZE)
}

/// Sizes and alignments below this need no overflow check: the outer size is then at most
/// 2⁵⁰, far below `isize::MAX`.
const UNCHECKED_BELOW: usize = 1 << 48;

/// The layout asked of the inner allocator for `layout`, and the offset of the user's pointer;
/// `None` when the size with the offset would overflow a `Layout`.
#[inline(always)]
pub(super) fn outer(layout: Layout) -> Option<(Layout, usize)> {
    if (layout.size() | layout.align()) < UNCHECKED_BELOW {
        // SAFETY: both are below 2⁴⁸, so the outer size rounded up to the alignment is at
        // most 2⁵⁰ ≤ `isize::MAX`.
        Some(unsafe { outer_unchecked(layout) })
    } else {
        outer_checked(layout)
    }
}

/// [`outer`] for sizes or alignments of 2⁴⁸ and more, with the exact check.
#[cold]
#[inline(never)]
fn outer_checked(layout: Layout) -> Option<(Layout, usize)> {
    let align = block_align(layout);
    // A layout's size rounded up to its alignment must not exceed `isize::MAX`; the offset is
    // the alignment.
    let limit = (isize::MAX as usize)
        .checked_sub(align - 1)?
        .checked_sub(align)?;
    if layout.size() > limit {
        return None;
    }
    // SAFETY: just checked.
    Some(unsafe { outer_unchecked(layout) })
}

/// [`outer`] without its check.
///
/// # Safety
///
/// `outer(layout)` returns `Some`, as it did when a block of `layout` was allocated.
#[inline(always)]
pub(super) unsafe fn outer_unchecked(layout: Layout) -> (Layout, usize) {
    let align = block_align(layout);
    let offset = align;
    // SAFETY: `align` is a power of two (the larger of two); that `size + offset` rounded up to
    // it is at most `isize::MAX` is the caller's guarantee.
    let outer = unsafe { Layout::from_size_align_unchecked(layout.size() + offset, align) };
    (outer, offset)
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
        // The largest alignment a layout may have: only size 0, which is still too large here.
        let huge = Layout::from_size_align(0, 1 << (usize::BITS - 1)).unwrap();
        assert!(outer(huge).is_none());
        // Either side of the size up to which no check is made.
        for size in [UNCHECKED_BELOW - 1, UNCHECKED_BELOW] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            assert_eq!(
                outer(layout).unwrap(),
                (Layout::from_size_align(size + 8, 8).unwrap(), 8)
            );
        }
        let big = Layout::from_size_align(1 << 40, 1 << 20).unwrap();
        assert_eq!(outer(big).unwrap().0.size(), (1 << 40) + (1 << 20));
    }
}
