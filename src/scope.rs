//! Request scopes and the current scope of a thread.
//!
//! A [`Scope`] is the detector's record of one request: its number, request id, method, route
//! template and when it opened and closed. Everything the request leaves behind (tasks, bodies,
//! watched objects) points at its scope, and the sweeper judges them once it has closed.
//!
//! The *current* scope lives in a const-initialised thread-local `Cell`. It is set around every
//! poll of a request's future, of its response body and of every task it spawned through
//! [`crate::spawn`] / [`crate::scoped`], and restored afterwards — even when the poll panics.
//! A thread-local is used rather than a tokio task-local so that code which is not async (and,
//! later, a global allocator) can read it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::alloc::{self, SlotGuard, Tag, Usage};
use crate::detector::Shared;
use crate::request_id::RequestId;
use crate::route::Route;
use crate::trace_context::TraceParent;

/// The detector's record of one request.
pub(crate) struct Scope {
    /// Monotonic number within the detector.
    pub(crate) id: u64,
    pub(crate) request_id: RequestId,
    pub(crate) method: http::Method,
    pub(crate) route: Route,
    /// The route may stay open past `max_request_age`.
    pub(crate) streaming: bool,
    pub(crate) opened_at: Instant,
    /// 0 while open; once closed, nanoseconds from `opened_at` to the close, plus one.
    closed: AtomicU64,
    /// The detector the scope belongs to; weak, so that a leaked task cannot keep it alive.
    pub(crate) detector: Weak<Shared>,
    /// The allocator's scope slot, while the request's memory is counted.
    pub(crate) memory: Option<SlotGuard>,
    /// What allocations made in this scope are stamped with.
    tag: Tag,
    /// Whether a task, body or watched object of this request was registered.
    objects: std::sync::atomic::AtomicBool,
    /// The trace the request belongs to, when known.
    pub(crate) trace: Option<TraceParent>,
}

/// What a scope records of its request when it opens.
pub(crate) struct RequestHead {
    pub(crate) request_id: RequestId,
    pub(crate) method: http::Method,
    pub(crate) route: Route,
    /// The allocator's route slot (0 when memory is not tracked).
    pub(crate) route_slot: u32,
    /// The route may stay open past `max_request_age`.
    pub(crate) streaming: bool,
    pub(crate) trace: Option<TraceParent>,
}

impl Scope {
    pub(crate) fn new(
        id: u64,
        head: RequestHead,
        detector: Weak<Shared>,
        memory: Option<SlotGuard>,
    ) -> Self {
        let RequestHead {
            request_id,
            method,
            route,
            route_slot,
            streaming,
            trace,
        } = head;
        let tag = match &memory {
            Some(slot) => slot.tag(),
            None => Tag::route_only(route_slot),
        };
        Scope {
            memory,
            tag,
            objects: std::sync::atomic::AtomicBool::new(false),
            trace,
            id,
            request_id,
            method,
            route,
            streaming,
            opened_at: Instant::now(),
            closed: AtomicU64::new(0),
            detector,
        }
    }

    /// Marks the scope closed. One clock read and one atomic operation: safe on drop paths.
    /// Closing twice keeps the first close.
    pub(crate) fn close(&self) {
        let nanos = u64::try_from(self.opened_at.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self
            .closed
            .compare_exchange(0, nanos + 1, Ordering::Release, Ordering::Relaxed);
    }

    /// How long after opening the scope closed, or `None` while it is open.
    pub(crate) fn closed_after(&self) -> Option<Duration> {
        match self.closed.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.closed_after().is_none()
    }

    /// When the scope closed, on the monotonic clock.
    pub(crate) fn closed_at(&self) -> Option<Instant> {
        self.closed_after().map(|d| self.opened_at + d)
    }

    /// Records that the request left an object in the registry.
    pub(crate) fn mark_objects(&self) {
        self.objects.store(true, Ordering::Relaxed);
    }

    /// Whether the request left a task, body or watched object in the registry.
    pub(crate) fn left_objects(&self) -> bool {
        self.objects.load(Ordering::Relaxed)
    }

    /// The allocator's route slot (0 when memory is not tracked).
    pub(crate) fn route_slot(&self) -> u32 {
        self.tag.route()
    }

    /// What the request allocated and freed so far, while its slot is held.
    pub(crate) fn usage(&self) -> Option<Usage> {
        self.memory.as_ref()?.usage()
    }

    /// Stops counting the request's memory per request (its route still counts it).
    pub(crate) fn retire_memory(&self) {
        if let Some(slot) = &self.memory {
            slot.release();
        }
    }

    /// When the scope opened, on the wall clock.
    pub(crate) fn opened_wall(&self) -> SystemTime {
        wall(self.opened_at)
    }
}

/// Converts a monotonic instant to wall-clock time, through one pair of readings taken when the
/// first detector was built. A request then costs one clock read, not two; the price is that a
/// wall-clock step (NTP) after start-up is not reflected in report timestamps.
pub(crate) fn wall(at: Instant) -> SystemTime {
    static EPOCH: std::sync::OnceLock<(Instant, SystemTime)> = std::sync::OnceLock::new();
    let (epoch, epoch_wall) = *EPOCH.get_or_init(|| (Instant::now(), SystemTime::now()));
    match at.checked_duration_since(epoch) {
        Some(after) => epoch_wall + after,
        None => epoch_wall - epoch.duration_since(at),
    }
}

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

/// Runs `f` with the scope in `slot` current, then puts it back in `slot` and restores whatever
/// was current before — also when `f` panics. An empty slot runs `f` untouched.
///
/// The `Arc` is moved into the thread-local and back, so entering costs no reference-count
/// traffic.
pub(crate) fn enter<R>(slot: &mut Option<Arc<Scope>>, f: impl FnOnce() -> R) -> R {
    let Some(tag) = slot.as_ref().map(|scope| scope.tag) else {
        return f();
    };
    let Ok(previous) = CURRENT.try_with(|cell| cell.replace(slot.take())) else {
        // Thread-locals are being torn down: the slot still holds the scope; run without it.
        return f();
    };
    let previous_tag = swap_tag_if(tag);
    let _restore = Restore {
        slot,
        previous,
        previous_tag,
    };
    f()
}

/// Sets the allocator's tag unless both are "nothing" (memory not tracked): then a request
/// costs no extra thread-local write.
#[inline]
fn swap_tag_if(tag: Tag) -> Option<Tag> {
    (tag != Tag::NONE).then(|| alloc::swap_tag(tag))
}

/// Runs `f` with no current scope, for the detector's own bookkeeping: nothing it allocates is
/// attributed to the request being served.
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    let mut none = None;
    let previous = CURRENT.try_with(Cell::take).ok().flatten();
    let Some(tag) = previous.as_ref().map(|scope| scope.tag) else {
        return f();
    };
    let previous_tag = (tag != Tag::NONE).then(|| alloc::swap_tag(Tag::NONE));
    let _restore = Restore {
        slot: &mut none,
        previous,
        previous_tag,
    };
    f()
}

struct Restore<'a> {
    slot: &'a mut Option<Arc<Scope>>,
    previous: Option<Arc<Scope>>,
    previous_tag: Option<Tag>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some(tag) = self.previous_tag {
            alloc::swap_tag(tag);
        }
        let previous = self.previous.take();
        if let Ok(ours) = CURRENT.try_with(|cell| cell.replace(previous)) {
            *self.slot = ours;
        }
    }
}

/// Closes its scope when dropped (response finished, future dropped or panicked).
///
/// It also carries the scope to enter around polls, so a future or body holds one `Arc`.
pub(crate) struct ScopeGuard {
    slot: Option<Arc<Scope>>,
}

impl ScopeGuard {
    pub(crate) fn new(scope: Arc<Scope>) -> Self {
        ScopeGuard { slot: Some(scope) }
    }

    /// The slot to pass to [`enter`].
    pub(crate) fn slot(&mut self) -> &mut Option<Arc<Scope>> {
        &mut self.slot
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if let Some(scope) = &self.slot {
            scope.close();
        }
    }
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("scope", &self.slot.as_ref().map(|s| s.id))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;

    fn scope(id: u64) -> Arc<Scope> {
        Arc::new(Scope::new(
            id,
            RequestHead {
                request_id: RequestId::Generated {
                    prefix: 0,
                    number: id,
                },
                method: http::Method::GET,
                route: Route::Static("/t"),
                route_slot: 0,
                streaming: false,
                trace: None,
            },
            Weak::new(),
            None,
        ))
    }

    #[test]
    fn enter_sets_and_restores_the_current_scope() {
        assert!(current().is_none());
        let mut outer = Some(scope(1));
        let mut inner = Some(scope(2));
        enter(&mut outer, || {
            assert_eq!(current().unwrap().id, 1);
            enter(&mut inner, || assert_eq!(current().unwrap().id, 2));
            assert_eq!(current().unwrap().id, 1);
            outside(|| assert!(current().is_none()));
            assert_eq!(current().unwrap().id, 1);
        });
        assert!(current().is_none());
        assert_eq!(outer.unwrap().id, 1, "the scope is handed back to its slot");
        assert_eq!(inner.unwrap().id, 2);
    }

    #[test]
    fn enter_restores_after_a_panic() {
        let mut slot = Some(scope(3));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            enter(&mut slot, || panic!("handler panicked"))
        }));
        assert!(result.is_err());
        assert!(current().is_none());
        assert_eq!(slot.unwrap().id, 3);
    }

    #[test]
    fn empty_slot_leaves_the_current_scope_alone() {
        let mut slot = Some(scope(4));
        enter(&mut slot, || {
            enter(&mut None, || assert_eq!(current().unwrap().id, 4));
        });
    }

    #[test]
    fn guard_closes_once_on_drop() {
        let s = scope(5);
        assert!(s.is_open());
        let guard = ScopeGuard::new(s.clone());
        drop(guard);
        let first = s.closed_after().unwrap();
        s.close();
        assert_eq!(s.closed_after().unwrap(), first, "the first close wins");
        assert!(s.closed_at().unwrap() >= s.opened_at);
    }
}
