//! The thread's current scope: which request the code running on this thread works for.
//!
//! A const-initialised thread-local holds it, so that code which is not async — the global
//! allocator among it — can read it. It is set around every poll of a request's future, its
//! response body and its tasks ([`enter_owned`], [`ScopeGuard`], [`make_current`] for the
//! runtime's poll hooks), and restored afterwards — even when the poll panics. [`outside`] runs
//! the detector's own bookkeeping with no scope current.

use std::cell::Cell;
use std::sync::Arc;

use super::scope::Scope;
use crate::alloc::{self, Tag};

thread_local! {
    static CURRENT: Cell<Option<Arc<Scope>>> = const { Cell::new(None) };
}

/// The scope current on this thread, if any.
pub(crate) fn current() -> Option<Arc<Scope>> {
    CURRENT
        .try_with(|cell| {
            let scope = cell.take();
            let copy = scope.clone();
            cell.set(scope);
            copy
        })
        .ok()
        .flatten()
}

/// Makes `scope` current until the returned guard is dropped, which restores what was current
/// before. `None` while thread-locals are torn down (nothing was changed).
///
/// For callers that enter and leave in two separate calls (the runtime's poll hooks); others
/// use [`enter_owned`].
#[cfg(tokio_unstable)]
pub(crate) fn make_current(scope: &Arc<Scope>) -> Option<Entered<'static>> {
    let previous = CURRENT
        .try_with(|cell| cell.replace(Some(scope.clone())))
        .ok()?;
    // The allocator's tag is always the current scope's (`NONE` outside any scope).
    let current_tag = previous.as_ref().map_or(Tag::NONE, |s| s.tag());
    Some(Entered {
        previous,
        previous_tag: swap_tag_if(scope.tag(), current_tag),
        back: None,
    })
}

/// Sets the allocator's tag to `tag` unless both it and the current tag are "nothing" (memory
/// not tracked): then a request costs no extra thread-local write. Entering a scope without a
/// tag (an outgoing call's) from one with a tag clears it.
#[inline]
fn swap_tag_if(tag: Tag, current: Tag) -> Option<Tag> {
    (tag != Tag::NONE || current != Tag::NONE).then(|| alloc::swap_tag(tag))
}

/// Runs `f` with no current scope, for the detector's own bookkeeping: nothing it allocates is
/// attributed to the request being served.
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.try_with(Cell::take).ok().flatten();
    let Some(tag) = previous.as_ref().map(|scope| scope.tag()) else {
        return f();
    };
    let previous_tag = (tag != Tag::NONE).then(|| alloc::swap_tag(Tag::NONE));
    let _restore = Entered {
        previous,
        previous_tag,
        back: None,
    };
    f()
}

/// Puts back, when dropped, the scope and allocator tag that were current before
/// [`make_current`], [`outside`] or [`enter_owned`].
#[must_use = "the scope is left as soon as this is dropped"]
pub(crate) struct Entered<'a> {
    previous: Option<Arc<Scope>>,
    previous_tag: Option<Tag>,
    /// Where the scope made current goes back to ([`enter_owned`]'s slot); without one it is
    /// dropped (a clone) or there is none ([`outside`]).
    back: Option<&'a mut Option<Arc<Scope>>>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(tag) = self.previous_tag {
            alloc::swap_tag(tag);
        }
        let previous = self.previous.take();
        // Entering and leaving nest, so what comes back is the scope made current here.
        let mine = CURRENT.try_with(|cell| cell.replace(previous));
        if let (Some(_), Ok(Some(scope))) = (self.previous_tag, &mine) {
            // The tasks it spawned while it was current, seen by the allocator.
            scope.track_new_cells();
        }
        if let (Ok(mine), Some(back)) = (mine, self.back.take()) {
            *back = mine;
        }
    }
}

/// Runs `f` with the scope in `slot` current (none: as it is), then restores whatever was
/// current before — also when `f` panics.
///
/// The scope is *moved* into the thread-local and back, not cloned: entering costs no
/// reference-count traffic. While `f` runs `slot` is `None`.
pub(crate) fn enter_owned<R>(slot: &mut Option<Arc<Scope>>, f: impl FnOnce() -> R) -> R {
    let Some(tag) = slot.as_ref().map(|scope| scope.tag()) else {
        return f();
    };
    let mut moving = slot.take();
    let Ok(previous) = CURRENT.try_with(|cell| cell.replace(moving.take())) else {
        // Thread-locals are being torn down: run without a scope.
        *slot = moving;
        return f();
    };
    let current_tag = previous.as_ref().map_or(Tag::NONE, |s| s.tag());
    let _restore = Entered {
        previous,
        previous_tag: swap_tag_if(tag, current_tag),
        back: Some(slot),
    };
    f()
}

/// A request's hold on its scope: enters it around polls, and when dropped (response finished,
/// future dropped or panicked) closes it and gives it back to its registry.
pub(crate) struct ScopeGuard {
    /// `None` only while entered (the scope is then the thread's current one).
    scope: Option<Arc<Scope>>,
}

impl ScopeGuard {
    pub(crate) fn new(scope: Arc<Scope>) -> Self {
        ScopeGuard { scope: Some(scope) }
    }

    /// Runs `f` with the request's scope current.
    pub(crate) fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        enter_owned(&mut self.scope, f)
    }

    /// The scope held (`None` while entered).
    pub(crate) fn scope(&self) -> Option<&Arc<Scope>> {
        self.scope.as_ref()
    }
}

/// Runs `f` in the scope `guard` holds, or as it is when there is none (an untracked request).
#[inline]
pub(crate) fn enter_guarded<R>(guard: Option<&mut ScopeGuard>, f: impl FnOnce() -> R) -> R {
    match guard {
        Some(guard) => guard.enter(f),
        None => f(),
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let Some(scope) = self.scope.take() else {
            return;
        };
        scope.retire();
    }
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("scope", &self.scope.as_ref().map(|s| s.id))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::scope;

    #[test]
    fn enter_sets_and_restores_the_current_scope() {
        assert!(current().is_none());
        let outer = scope(1);
        let inner = scope(2);
        enter_owned(&mut Some(outer.clone()), || {
            assert_eq!(current().unwrap().id, 1);
            enter_owned(&mut Some(inner.clone()), || {
                assert_eq!(current().unwrap().id, 2)
            });
            assert_eq!(current().unwrap().id, 1);
            outside(|| assert!(current().is_none()));
            assert_eq!(current().unwrap().id, 1);
        });
        assert!(current().is_none());
        assert_eq!(
            Arc::strong_count(&outer),
            1,
            "nothing is left holding the scope"
        );
        assert_eq!(Arc::strong_count(&inner), 1);
    }

    #[test]
    fn enter_restores_after_a_panic() {
        let s = scope(3);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            enter_owned(&mut Some(s.clone()), || panic!("handler panicked"))
        }));
        assert!(result.is_err());
        assert!(current().is_none());
        assert_eq!(Arc::strong_count(&s), 1);
    }

    #[test]
    fn entering_an_owned_scope_moves_it_and_puts_it_back() {
        let outer = scope(7);
        let mut slot = Some(scope(8));
        enter_owned(&mut Some(outer.clone()), || {
            enter_owned(&mut slot, || {
                assert_eq!(current().unwrap().id, 8);
                outside(|| assert!(current().is_none()));
            });
            assert_eq!(current().unwrap().id, 7);
        });
        assert_eq!(slot.as_ref().unwrap().id, 8);
        assert_eq!(Arc::strong_count(slot.as_ref().unwrap()), 1, "never cloned");

        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            enter_owned(&mut slot, || panic!("poll panicked"))
        }));
        assert!(result.is_err());
        assert!(current().is_none());
        assert_eq!(slot.unwrap().id, 8, "put back after a panic");

        let mut empty = None;
        assert!(enter_owned(&mut empty, || current().is_none()));
    }

    #[test]
    fn guard_closes_once_on_drop() {
        let s = scope(5);
        assert!(s.is_open());
        let mut guard = ScopeGuard::new(s.clone());
        guard.enter(|| assert_eq!(current().unwrap().id, 5));
        assert_eq!(
            guard.scope().unwrap().id,
            5,
            "the scope is back in its guard"
        );
        drop(guard);
        let first = s.closed_after().unwrap();
        s.close();
        assert_eq!(s.closed_after().unwrap(), first, "the first close wins");
        assert!(s.closed_at().unwrap() >= s.opened_at);
    }
}
