//! The weak-reference registry: open scopes and the objects requests left behind.
//!
//! Entries hold only `Weak` references, liveness tokens or the detector's own small state — never
//! the request or the user's object — so tracking never extends a lifetime. The registry is
//! bounded: past its capacity, new scopes and objects are not tracked and a counter says how many
//! were skipped.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use dashmap::DashMap;

use crate::body::BodyState;
use crate::report::{LeakKind, LeakReport, LeakState, SourceLocation};
use crate::scope::{self, Scope};
use crate::sweep::Tracker;

/// Held by a spawned task's future; the task has ended once it is gone.
#[derive(Debug)]
pub(crate) struct TaskToken;

/// Tells whether a watched object is still alive.
pub(crate) trait Probe: Send + Sync {
    fn is_alive(&self) -> bool;
}

impl<T: ?Sized + Send + Sync> Probe for Weak<T> {
    fn is_alive(&self) -> bool {
        self.strong_count() > 0
    }
}

/// How the sweeper learns whether a tracked object is still alive.
pub(crate) enum Liveness {
    Task(Weak<TaskToken>),
    Body(Arc<BodyState>),
    Object(Box<dyn Probe>),
}

impl Liveness {
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Liveness::Task(token) => token.strong_count() > 0,
            Liveness::Body(state) => state.is_alive(),
            Liveness::Object(probe) => probe.is_alive(),
        }
    }

    /// The kind of leak this object is when it outlives its request.
    pub(crate) fn leak_kind(&self) -> LeakKind {
        match self {
            Liveness::Task(_) => LeakKind::OrphanTask,
            Liveness::Body(_) => LeakKind::RetainedBody,
            Liveness::Object(_) => LeakKind::WatchedObject,
        }
    }
}

/// An object a request left behind.
pub(crate) struct Entry {
    pub(crate) scope: Arc<Scope>,
    pub(crate) liveness: Liveness,
    pub(crate) location: Option<&'static Location<'static>>,
    pub(crate) type_name: Option<&'static str>,
    pub(crate) created_at: Instant,
    pub(crate) tracker: Tracker,
}

/// An open (or just closed) request.
pub(crate) struct ScopeEntry {
    pub(crate) scope: Arc<Scope>,
    pub(crate) tracker: Tracker,
}

/// Builds a report about `scope` (shared by object and scope entries).
pub(crate) struct ReportParts<'a> {
    pub(crate) id: u64,
    pub(crate) kind: LeakKind,
    pub(crate) state: LeakState,
    pub(crate) scope: &'a Scope,
    pub(crate) location: Option<&'static Location<'static>>,
    pub(crate) type_name: Option<&'static str>,
    pub(crate) detail: String,
}

impl ReportParts<'_> {
    pub(crate) fn build(self, now: Instant) -> LeakReport {
        let scope = self.scope;
        let closed_at = scope.closed_at();
        let usage = scope.usage();
        // A stuck request's age runs from when it opened; anything else's from the close.
        let since = closed_at.unwrap_or(scope.opened_at);
        LeakReport {
            id: self.id,
            kind: self.kind,
            state: self.state,
            route: scope.route.as_str().to_owned(),
            method: scope.method.as_str().to_owned(),
            request_id: scope.request_id.to_string(),
            trace_id: scope.trace.map(|t| t.trace_id_hex()),
            span_id: scope.trace.map(|t| t.span_id_hex()),
            scope_id: scope.id,
            opened_at: scope.opened_wall(),
            closed_at: closed_at.map(scope::wall),
            detected_at: scope::wall(now),
            age: now.saturating_duration_since(since),
            location: self.location.map(SourceLocation::from_std),
            type_name: self.type_name,
            bytes: usage.map(|u| u.retained_bytes()),
            allocations: usage.map(|u| u.retained_blocks()),
            bytes_per_request: None,
            sites: Vec::new(),
            detail: self.detail,
        }
    }
}

/// Hashes the registry's sequential `u64` ids with one multiplication (Fibonacci hashing): the
/// ids are not attacker-controlled, and SipHash would cost more than the rest of an insert.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = DashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// How many queues new scopes are spread over (by id), so that requests on different threads
/// rarely meet on one lock.
const SCOPE_QUEUES: usize = 16;

/// The most finished scopes kept for reuse per queue.
const POOLED_PER_QUEUE: usize = 256;

/// A spare queue keeps at least this much room however quiet the traffic gets.
const MIN_SPARE_ROOM: usize = 1024;

/// One shard of the scopes' intake.
struct Shard {
    /// Scopes opened since the sweeper last took them.
    queue: Vec<Arc<Scope>>,
    /// Scopes the sweeper is done with and nothing else holds, for new requests to reuse (at
    /// most [`POOLED_PER_QUEUE`]).
    pool: Vec<Arc<Scope>>,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            queue: Vec::new(),
            pool: Vec::new(),
        }
    }
}

/// Scopes and objects, bounded by one capacity.
///
/// New scopes are appended to short queues — a push under an uncontended lock, no hashing —
/// which the sweeper drains into its own list: it never holds a lock a request needs while it
/// judges.
pub(crate) struct Registry {
    /// New scopes and pooled ones, spread over shards by id: a request takes one lock.
    shards: [Mutex<Shard>; SCOPE_QUEUES],
    /// Emptied queues kept by the sweeper to swap in for full ones, so that requests push into
    /// vectors that already have room (and memory already paged in) instead of regrowing one
    /// from nothing after every sweep.
    spare_queues: Mutex<Vec<Vec<Arc<Scope>>>>,
    /// Scopes taken over by the sweeper; only the sweeper changes it.
    pub(crate) scopes: Mutex<Vec<ScopeEntry>>,
    pub(crate) objects: IdMap<Entry>,
    len: AtomicUsize,
    capacity: usize,
    skipped: AtomicU64,
    next_id: AtomicU64,
}

impl Registry {
    pub(crate) fn new(capacity: usize) -> Self {
        Registry {
            shards: [const { Mutex::new(Shard::new()) }; SCOPE_QUEUES],
            spare_queues: Mutex::new(Vec::new()),
            scopes: Mutex::new(Vec::new()),
            objects: IdMap::default(),
            len: AtomicUsize::new(0),
            capacity,
            skipped: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh id for a scope or an object: one sequence, so report ids never collide.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims room for one entry, or counts it as skipped.
    fn reserve(&self) -> bool {
        if self.len.fetch_add(1, Ordering::Relaxed) < self.capacity {
            true
        } else {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.skipped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Gives back the room of `n` removed entries.
    pub(crate) fn released(&self, n: usize) {
        self.len.fetch_sub(n, Ordering::Relaxed);
    }

    /// Tracks a new scope and returns it, or `None` when the registry is full.
    ///
    /// A pooled scope the sweeper is done with is overwritten in place when nothing else holds
    /// it: no allocation on the request's thread, and none freed in bulk on the sweeper's. The
    /// pool and the queue share one lock.
    pub(crate) fn open(&self, fresh: Scope) -> Option<Arc<Scope>> {
        if !self.reserve() {
            return None;
        }
        let mut shard = self.shards[fresh.id as usize % SCOPE_QUEUES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let scope = match shard.pool.pop() {
            Some(mut reused) => match Arc::get_mut(&mut reused) {
                Some(place) => {
                    *place = fresh;
                    reused
                }
                None => Arc::new(fresh),
            },
            None => Arc::new(fresh),
        };
        shard.queue.push(scope.clone());
        Some(scope)
    }

    /// Pools the scopes that nothing but `finished` holds any more, spread evenly over the
    /// queues; drops the rest.
    pub(crate) fn recycle(&self, finished: Vec<Arc<Scope>>) {
        let share = finished.len().div_ceil(SCOPE_QUEUES);
        // A scope still held — by a task, a tracked object or the memory judge — is not reused.
        let mut unused = finished
            .into_iter()
            .filter(|scope| Arc::strong_count(scope) == 1 && Arc::weak_count(scope) == 0);
        for shard in &self.shards {
            let pool = &mut shard.lock().unwrap_or_else(PoisonError::into_inner).pool;
            let room = POOLED_PER_QUEUE.saturating_sub(pool.len());
            pool.extend(unused.by_ref().take(share.min(room)));
        }
    }

    /// Moves the scopes opened since the last call into the sweeper's list; returns the list.
    pub(crate) fn take_scopes(&self) -> MutexGuard<'_, Vec<ScopeEntry>> {
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut spares = self
            .spare_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for shard in &self.shards {
            let mut taken = spares.pop().unwrap_or_default();
            std::mem::swap(
                &mut taken,
                &mut shard.lock().unwrap_or_else(PoisonError::into_inner).queue,
            );
            let n = taken.len();
            scopes.extend(taken.drain(..).map(|scope| ScopeEntry {
                scope,
                tracker: Tracker::default(),
            }));
            // Keep the room the traffic needs, not what one burst once needed.
            if taken.capacity() > MIN_SPARE_ROOM && taken.capacity() > 4 * n {
                taken.shrink_to(MIN_SPARE_ROOM.max(2 * n));
            }
            spares.push(taken);
        }
        scopes
    }

    /// Calls `f` with every scope not yet removed by the sweeper.
    pub(crate) fn for_each_scope(&self, mut f: impl FnMut(&Scope)) {
        for entry in self
            .scopes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            f(&entry.scope);
        }
        for shard in &self.shards {
            for scope in shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .queue
                .iter()
            {
                f(scope);
            }
        }
    }

    /// Tracks an object left by `scope`; `false` when the registry is full.
    pub(crate) fn insert_object(
        &self,
        scope: &Arc<Scope>,
        liveness: Liveness,
        location: Option<&'static Location<'static>>,
        type_name: Option<&'static str>,
    ) -> bool {
        if !self.reserve() {
            return false;
        }
        let id = self.next_id();
        self.objects.insert(
            id,
            Entry {
                scope: scope.clone(),
                liveness,
                location,
                type_name,
                created_at: Instant::now(),
                tracker: Tracker::default(),
            },
        );
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestId;
    use crate::route::Route;

    fn scope() -> Arc<Scope> {
        Arc::new(fresh(1))
    }

    fn fresh(id: u64) -> Scope {
        Scope::new(
            id,
            crate::scope::RequestHead {
                request_id: RequestId::Given("r".into()),
                method: http::Method::POST,
                route: Route::Static("/x"),
                route_slot: 0,
                streaming: false,
                trace: None,
            },
            Weak::new(),
            None,
        )
    }

    #[test]
    fn capacity_bounds_scopes_and_objects_together() {
        let registry = Registry::new(3);
        let s = registry.open(fresh(1)).unwrap();
        assert_eq!(registry.take_scopes().len(), 1);
        let token = Arc::new(TaskToken);
        assert!(registry.insert_object(&s, Liveness::Task(Arc::downgrade(&token)), None, None));
        assert!(registry.insert_object(&s, Liveness::Task(Arc::downgrade(&token)), None, None));
        assert!(!registry.insert_object(&s, Liveness::Task(Arc::downgrade(&token)), None, None));
        assert!(registry.open(fresh(2)).is_none());
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.skipped(), 2);
        assert_eq!(registry.objects.len(), 2);

        registry.released(1);
        assert!(registry.open(fresh(3)).is_some());
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn only_scopes_nothing_else_holds_are_reused() {
        let registry = Registry::new(64);
        let unused = scope();
        let address = Arc::as_ptr(&unused);
        let held = scope();
        let holder = held.clone(); // say, a task the request spawned
        registry.recycle(vec![unused, held]);
        // One new scope per shard: exactly one of them is the pooled scope, overwritten.
        let opened: Vec<Arc<Scope>> = (0..SCOPE_QUEUES as u64)
            .map(|id| registry.open(fresh(100 + id)).unwrap())
            .collect();
        let reused: Vec<&Arc<Scope>> = opened
            .iter()
            .filter(|s| Arc::as_ptr(s) == address)
            .collect();
        assert_eq!(reused.len(), 1);
        assert!(
            reused[0].id >= 100,
            "the reused scope carries its new request"
        );
        assert_eq!(
            Arc::strong_count(&holder),
            1,
            "the held scope was dropped, not pooled"
        );
    }

    #[test]
    fn the_pool_is_bounded_and_spread_over_the_queues() {
        let registry = Registry::new(8);
        let many = SCOPE_QUEUES * POOLED_PER_QUEUE + 100;
        registry.recycle((0..many).map(|_| scope()).collect());
        for shard in &registry.shards {
            assert_eq!(shard.lock().unwrap().pool.len(), POOLED_PER_QUEUE);
        }
        let few = Registry::new(8);
        few.recycle((0..SCOPE_QUEUES).map(|_| scope()).collect());
        assert!(few
            .shards
            .iter()
            .all(|shard| shard.lock().unwrap().pool.len() == 1));
    }

    #[test]
    fn entries_never_keep_objects_alive() {
        let registry = Registry::new(8);
        let s = scope();
        let object = Arc::new(vec![0u8; 64]);
        registry.insert_object(
            &s,
            Liveness::Object(Box::new(Arc::downgrade(&object))),
            None,
            None,
        );
        let token = Arc::new(TaskToken);
        registry.insert_object(&s, Liveness::Task(Arc::downgrade(&token)), None, None);
        assert!(registry.objects.iter().all(|e| e.liveness.is_alive()));
        assert_eq!(Arc::strong_count(&object), 1);
        drop(object);
        drop(token);
        assert!(registry.objects.iter().all(|e| !e.liveness.is_alive()));
    }
}
