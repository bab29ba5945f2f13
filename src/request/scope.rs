//! Request scopes and the current scope of a thread.
//!
//! A [`Scope`] is the detector's record of one request: its number, request id, method, route
//! template and when it opened and closed. Everything the request leaves behind (tasks, bodies,
//! watched objects) points at its scope, and the sweeper judges them once it has closed.
//!
//! The *current* scope lives in a const-initialised thread-local `Cell`. It is set around every
//! poll of a request's future, of its response body and of every task it spawned through
//! [`crate::spawn`] / [`crate::scoped`], and restored afterwards — even when the poll panics.
//! A thread-local is used rather than a tokio task-local so that code which is not async — the
//! global allocator among it — can read it.
//!
//! A scope does not know its detector: it knows only an [`Owner`], the registry its objects are
//! tracked in, through a `Weak` so that a leaked task cannot keep the detector alive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::alloc::{SlotGuard, Tag, Usage};
use crate::report::lifecycle::AtomicLifecycle;
use crate::report::{SourceLocation, Upstream};
use crate::request::id::RequestId;
use crate::request::liveness::Liveness;
use crate::request::route::{Route, RouteInfo};
use crate::request::trace::TraceParent;
use crate::util::clock;

/// Where the objects a request leaves behind are tracked (the registry of its detector).
pub(crate) trait Owner: Send + Sync {
    /// Tracks an object left by `scope`, and says how it is judged; `None` when it is not
    /// tracked (registry full, or a task spawned where the detector was told to ignore).
    fn insert_object(
        &self,
        scope: &Arc<Scope>,
        liveness: Liveness,
        location: Option<SourceLocation>,
        type_name: Option<&'static str>,
    ) -> Option<Judged>;

    /// Takes back the scope of a request that has just ended and closes it: forgets it at once
    /// when nothing about it is left to judge, else hands it to the sweeper.
    fn retire(&self, scope: Arc<Scope>);
}

/// How a tracked object is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Against its request: reported when it outlives the request by the grace period. What the
    /// user's own code leaves behind.
    PerRequest,
    /// By growth, against the route's requests: a task a dependency spawned (a pool's
    /// connection, a worker, a driver) belongs to a shared resource, is polled outside the
    /// request's scope and is reported only when such tasks keep growing in number with the
    /// route's requests (see [`crate::request::origin`]).
    ByGrowth,
    /// Not decided yet: a task cell the allocator saw, until the sweeper has read its stack
    /// (which says whether it is a task at all, and whose).
    Unread,
}

/// The detector's record of one request.
pub(crate) struct Scope {
    /// Monotonic number within the detector.
    pub(crate) id: u64,
    pub(crate) request_id: RequestId,
    pub(crate) method: http::Method,
    pub(crate) route: Route,
    /// The route's number in its detector's interner ([`RouteInfo::NO_INDEX`] for an outgoing
    /// call's scope).
    pub(crate) route_index: u32,
    /// The route may stay open past `max_request_age`.
    pub(crate) streaming: bool,
    /// A unit of work's scope ([`LeakDetector::scope`](crate::LeakDetector::scope)): `route`
    /// is the unit's name and `method` means nothing.
    pub(crate) unit: bool,
    /// Where the registry keeps the scope while the request is in flight.
    pub(crate) place: Place,
    /// The life cycle of the request's `StuckRequest` finding.
    pub(crate) stuck: AtomicLifecycle,
    pub(crate) opened_at: Instant,
    /// 0 while open; once closed, nanoseconds from `opened_at` to the close, plus one.
    closed: AtomicU64,
    /// Where the request's objects are tracked; weak, so that a leaked task cannot keep the
    /// detector alive.
    owner: Weak<dyn Owner>,
    /// The allocator's scope slot, while the request's memory is counted.
    pub(crate) memory: Option<SlotGuard>,
    /// What allocations made in this scope are stamped with.
    tag: Tag,
    /// Whether a task, body or watched object of this request was registered.
    objects: AtomicBool,
    /// Whether the request was answered `101 Switching Protocols`: what it started lives with
    /// the upgraded connection, not with the request.
    upgraded: AtomicBool,
    /// The trace the request belongs to, when known.
    pub(crate) trace: Option<TraceParent>,
    /// For an outgoing call's scope: where it went, and the request that made it.
    upstream: Option<Box<UpstreamCall>>,
}

/// What the scope of an outgoing call knows beyond a request's: the upstream, and the server
/// request that made the call.
pub(crate) struct UpstreamCall {
    pub(crate) method: http::Method,
    /// Host, and port when the URI names one.
    pub(crate) host: Box<str>,
    /// The request that made the call (never itself a call's scope): the call's scope closes
    /// when it does.
    pub(crate) parent: Option<Arc<Scope>>,
}

impl UpstreamCall {
    fn upstream(&self) -> Upstream {
        Upstream {
            method: self.method.as_str().to_owned(),
            host: self.host.to_string(),
        }
    }
}

/// Where the registry keeps a request's scope while the request is in flight: a shard and a
/// place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) shard: u32,
    pub(crate) index: u32,
}

impl Place {
    /// Not kept among the requests in flight (an outgoing call's scope, handed straight to the
    /// sweeper, or a scope of no registry).
    pub(crate) const NONE: Place = Place {
        shard: 0,
        index: u32::MAX,
    };
}

/// How a report's detail names what its scope is one of: a route's requests, or a unit's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Words {
    /// `"request"` or `"run"`.
    pub(crate) one: &'static str,
    /// `"requests"` or `"runs"`.
    pub(crate) many: &'static str,
    /// `"route"` or `"unit"`.
    pub(crate) group: &'static str,
}

/// What a scope records of its request when it opens.
pub(crate) struct RequestHead {
    pub(crate) request_id: RequestId,
    pub(crate) method: http::Method,
    pub(crate) route: Route,
    /// The route's index, allocator slot and whether it streams.
    pub(crate) info: RouteInfo,
    pub(crate) trace: Option<TraceParent>,
    /// For an outgoing call: where it went, and the request that made it.
    pub(crate) upstream: Option<Box<UpstreamCall>>,
}

impl Scope {
    /// The scope of a new request, tracked in `owner` and kept at `place` while in flight.
    pub(crate) fn new(
        id: u64,
        head: RequestHead,
        owner: Weak<dyn Owner>,
        memory: Option<SlotGuard>,
        place: Place,
    ) -> Self {
        let mut scope = Scope {
            id: 0,
            request_id: RequestId::Generated {
                prefix: 0,
                number: 0,
            },
            method: http::Method::GET,
            route: Route::Static(""),
            route_index: RouteInfo::NO_INDEX,
            streaming: false,
            unit: false,
            place: Place::NONE,
            stuck: AtomicLifecycle::default(),
            opened_at: Instant::now(),
            closed: AtomicU64::new(0),
            owner,
            memory: None,
            tag: Tag::NONE,
            objects: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            trace: None,
            upstream: None,
        };
        scope.renew(id, head, memory, place);
        scope
    }

    /// Makes this scope, finished and held by nothing else, the scope of a new request of the
    /// same owner: field by field, in place (its owner stays).
    pub(crate) fn renew(
        &mut self,
        id: u64,
        head: RequestHead,
        memory: Option<SlotGuard>,
        place: Place,
    ) {
        let RequestHead {
            request_id,
            method,
            route,
            info,
            trace,
            upstream,
        } = head;
        self.tag = match &memory {
            Some(slot) => slot.tag(),
            None => Tag::route_only(info.slot),
        };
        self.memory = memory;
        self.id = id;
        self.request_id = request_id;
        self.method = method;
        self.route = route;
        self.route_index = info.index;
        self.streaming = info.streaming;
        self.unit = info.unit;
        self.place = place;
        self.stuck = AtomicLifecycle::default();
        self.opened_at = Instant::now();
        *self.closed.get_mut() = 0;
        *self.objects.get_mut() = false;
        *self.upgraded.get_mut() = false;
        self.trace = trace;
        self.upstream = upstream;
    }

    /// Marks the scope closed. One clock read and one atomic operation: safe on drop paths.
    /// Closing twice keeps the first close.
    pub(crate) fn close(&self) {
        let nanos = u64::try_from(self.opened_at.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self
            .closed
            .compare_exchange(0, nanos + 1, Ordering::Release, Ordering::Relaxed);
    }

    /// How long after opening the scope closed, or `None` while it is open. The scope of an
    /// outgoing call made by a request closes when that request does.
    pub(crate) fn closed_after(&self) -> Option<Duration> {
        if let Some(parent) = self.upstream.as_ref().and_then(|call| call.parent.as_ref()) {
            let closed = parent.closed_at()?;
            return Some(closed.saturating_duration_since(self.opened_at));
        }
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

    /// Tracks an object the request leaves behind, unless its detector is gone or full, and
    /// says how it is judged.
    ///
    /// Runs outside the request's scope, so the detector's own allocations are never
    /// attributed to the request.
    pub(crate) fn track(
        self: &Arc<Self>,
        liveness: Liveness,
        location: Option<SourceLocation>,
        type_name: Option<&'static str>,
    ) -> Option<Judged> {
        // The tasks a client spawns during a call (its connections) belong to its pool.
        if self.upstream.is_some() && liveness.is_task() {
            return None;
        }
        let owner = self.owner.upgrade()?;
        self.objects.store(true, Ordering::Relaxed);
        super::current::outside(|| owner.insert_object(self, liveness, location, type_name))
    }

    /// Tracks the task cells the allocator recorded on this thread while this scope was
    /// current (see [`crate::alloc`]): each is judged like a spawned task once the sweeper has
    /// read its stack. One thread-local read when there is none.
    pub(crate) fn track_new_cells(self: &Arc<Self>) {
        crate::alloc::take_new_cells(self.tag, |cell| {
            self.track(Liveness::Cell(cell), None, None).is_some()
        });
    }

    /// What allocations made while this scope is current are stamped with.
    pub(super) fn tag(&self) -> Tag {
        self.tag
    }

    /// The request has ended: gives the scope back to its registry, which closes it (or just
    /// closes it when the detector is gone).
    pub(super) fn retire(self: Arc<Self>) {
        match self.owner.upgrade() {
            Some(owner) => owner.retire(self),
            None => self.close(),
        }
    }

    /// Marks the request as answered `101 Switching Protocols`: the tasks it started belong to
    /// the upgraded connection and are judged by growth, and its memory is not a witness.
    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// How details name this scope and its kind: a route's requests, or a unit's runs.
    pub(crate) fn words(&self) -> Words {
        match self.unit {
            false => Words {
                one: "request",
                many: "requests",
                group: "route",
            },
            true => Words {
                one: "run",
                many: "runs",
                group: "unit",
            },
        }
    }

    /// Whether the request was answered `101 Switching Protocols`.
    pub(crate) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// Whether this is the scope of an outgoing call rather than of a request.
    pub(crate) fn is_upstream_call(&self) -> bool {
        self.upstream.is_some()
    }

    /// The request this scope belongs to: itself, or for an outgoing call's scope the request
    /// that made the call, if any.
    pub(crate) fn request(self: &Arc<Self>) -> Option<&Arc<Scope>> {
        match &self.upstream {
            None => Some(self),
            Some(call) => call.parent.as_ref(),
        }
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

    /// Whether the request's memory is still counted per request (it holds its slot).
    pub(crate) fn counts_memory(&self) -> bool {
        self.memory.as_ref().is_some_and(SlotGuard::is_held)
    }

    /// After the request has ended: unless what it still holds is memory to judge
    /// (`holds_memory`), stops counting its memory per request and returns `true` — there is
    /// nothing left for the memory judge to wait for. The caller makes sure nothing else holds
    /// the scope (no task or body of the request can allocate under its tag any more).
    pub(crate) fn retire_memory_unless(&self, holds_memory: &dyn Fn(&Usage) -> bool) -> bool {
        match &self.memory {
            Some(slot) if slot.usage().is_some_and(|usage| !holds_memory(&usage)) => {
                slot.release();
                true
            }
            _ => false,
        }
    }

    /// Stops counting the request's memory per request (its route still counts it).
    pub(crate) fn retire_memory(&self) {
        if let Some(slot) = &self.memory {
            slot.release();
        }
    }

    /// When the scope opened, on the wall clock.
    pub(crate) fn opened_wall(&self) -> SystemTime {
        clock::wall(self.opened_at)
    }

    /// For an outgoing call's scope: the upstream it went to, as reports name it.
    pub(crate) fn upstream(&self) -> Option<Upstream> {
        self.upstream.as_deref().map(UpstreamCall::upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::scope;

    #[test]
    fn a_scope_whose_owner_is_gone_tracks_nothing() {
        let s = scope(4);
        let token = Arc::new(crate::request::liveness::TaskToken::default());
        assert!(s
            .track(Liveness::Task(Arc::downgrade(&token)), None, None)
            .is_none());
        assert!(!s.left_objects());
    }
}
