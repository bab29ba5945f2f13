//! The weak-reference registry: the scopes of requests and the objects they left behind.
//!
//! Entries hold only `Weak` references, liveness tokens or the detector's own small state — never
//! the request or the user's object — so tracking never extends a lifetime. The registry is
//! bounded: past its capacity, new scopes and objects are not tracked and a counter says how many
//! were skipped. It owns that count, hands out the ids of everything it tracks, and keeps a small
//! pool of finished scopes for new requests to reuse.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;

use crate::lifecycle::Lifecycle;
use crate::liveness::Liveness;
use crate::scope::{Owner, Scope};
use crate::sync::lock;

/// An object a request left behind: a task, a request body or a watched object.
pub(crate) struct TrackedObject {
    pub(crate) scope: Arc<Scope>,
    pub(crate) liveness: Liveness,
    pub(crate) location: Option<&'static Location<'static>>,
    pub(crate) type_name: Option<&'static str>,
    pub(crate) created_at: Instant,
    pub(crate) lifecycle: Lifecycle,
    /// Where a task is stuck, from a task dump (see [`crate::dump`]).
    pub(crate) await_trace: Option<Arc<str>>,
}

/// A request the sweeper has taken over, with the life cycle of its `StuckRequest` finding.
struct ScopeEntry {
    scope: Arc<Scope>,
    lifecycle: Lifecycle,
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

/// How many shards new scopes are spread over (by id), so that requests on different threads
/// rarely meet on one lock.
const SHARDS: usize = 16;

/// The most finished scopes kept for reuse per shard.
const POOLED_PER_SHARD: usize = 256;

/// A spare intake queue keeps at least this much room however quiet the traffic gets.
const MIN_SPARE_ROOM: usize = 1024;

/// One shard of the scopes' intake.
struct Shard {
    /// Scopes opened since the sweeper last took them.
    queue: Vec<Arc<Scope>>,
    /// Finished scopes nothing else holds, for new requests to reuse (at most
    /// [`POOLED_PER_SHARD`]).
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
    shards: [Mutex<Shard>; SHARDS],
    /// Emptied queues kept by the sweeper to swap in for full ones, so that requests push into
    /// vectors that already have room (and memory already paged in) instead of regrowing one
    /// from nothing after every sweep.
    spare_queues: Mutex<Vec<Vec<Arc<Scope>>>>,
    /// Scopes taken over by the sweeper; only the sweeper changes it.
    taken: Mutex<Vec<ScopeEntry>>,
    objects: IdMap<TrackedObject>,
    len: AtomicUsize,
    capacity: usize,
    skipped: AtomicU64,
    next_id: AtomicU64,
}

impl Registry {
    pub(crate) fn new(capacity: usize) -> Self {
        Registry {
            shards: [const { Mutex::new(Shard::new()) }; SHARDS],
            spare_queues: Mutex::new(Vec::new()),
            taken: Mutex::new(Vec::new()),
            objects: IdMap::default(),
            len: AtomicUsize::new(0),
            capacity,
            skipped: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh id for a scope, an object or a standing alert: one sequence, so report ids never
    /// collide.
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

    /// Tracks a new scope and returns it, or `None` when the registry is full.
    ///
    /// A pooled scope is overwritten in place when nothing else holds it: no allocation on the
    /// request's thread, and none freed in bulk on the sweeper's. The pool and the queue share
    /// one lock.
    pub(crate) fn open(&self, fresh: Scope) -> Option<Arc<Scope>> {
        if !self.reserve() {
            return None;
        }
        let mut shard = lock(&self.shards[fresh.id as usize % SHARDS]);
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

    /// Judges every tracked object with `judge`, which says whether to keep it; forgets the
    /// others and gives back their room.
    pub(crate) fn sweep_objects(&self, mut judge: impl FnMut(u64, &mut TrackedObject) -> bool) {
        let mut removed = 0;
        self.objects.retain(|&id, object| {
            let keep = judge(id, object);
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Takes over the scopes opened since the last sweep, then judges every scope with `judge`,
    /// which says whether to keep it. Returns the scopes let go, which the registry no longer
    /// holds, for the caller to hand to [`recycle`](Self::recycle) once it is done with them.
    pub(crate) fn sweep_scopes(
        &self,
        mut judge: impl FnMut(&Arc<Scope>, &mut Lifecycle) -> bool,
    ) -> Vec<Arc<Scope>> {
        let mut taken = lock(&self.taken);
        self.take_new_scopes(&mut taken);
        let mut released = Vec::new();
        taken.retain_mut(|entry| {
            let keep = judge(&entry.scope, &mut entry.lifecycle);
            if !keep {
                released.push(entry.scope.clone());
            }
            keep
        });
        drop(taken);
        self.len.fetch_sub(released.len(), Ordering::Relaxed);
        released
    }

    /// Moves every shard's queue of new scopes into the sweeper's list, swapping in a spare
    /// queue that already has room.
    fn take_new_scopes(&self, taken: &mut Vec<ScopeEntry>) {
        let mut spares = lock(&self.spare_queues);
        for shard in &self.shards {
            let mut queue = spares.pop().unwrap_or_default();
            std::mem::swap(&mut queue, &mut lock(shard).queue);
            let n = queue.len();
            taken.extend(queue.drain(..).map(|scope| ScopeEntry {
                scope,
                lifecycle: Lifecycle::default(),
            }));
            // Keep the room the traffic needs, not what one burst once needed.
            if queue.capacity() > MIN_SPARE_ROOM && queue.capacity() > 4 * n {
                queue.shrink_to(MIN_SPARE_ROOM.max(2 * n));
            }
            spares.push(queue);
        }
    }

    /// Pools the scopes that nothing but `finished` holds, spread evenly over the shards; drops
    /// the rest.
    pub(crate) fn recycle(&self, finished: Vec<Arc<Scope>>) {
        let share = finished.len().div_ceil(SHARDS);
        // A scope still held — by a task, a tracked object or the memory judge — is not reused.
        let mut unused = finished
            .into_iter()
            .filter(|scope| Arc::strong_count(scope) == 1 && Arc::weak_count(scope) == 0);
        for shard in &self.shards {
            let pool = &mut lock(shard).pool;
            let room = POOLED_PER_SHARD.saturating_sub(pool.len());
            pool.extend(unused.by_ref().take(share.min(room)));
        }
    }

    /// Attaches a task's await trace to the object `id`, if it is still tracked.
    #[cfg(leakwatch_taskdump)]
    pub(crate) fn set_await_trace(&self, id: u64, trace: Arc<str>) {
        if let Some(mut object) = self.objects.get_mut(&id) {
            object.await_trace = Some(trace);
        }
    }

    /// Calls `f` with the tracked object `id`, if there is one.
    #[cfg(leakwatch_taskdump)]
    pub(crate) fn with_object<R>(&self, id: u64, f: impl FnOnce(&TrackedObject) -> R) -> Option<R> {
        self.objects.get(&id).map(|object| f(&object))
    }

    /// Calls `f` with every tracked object.
    pub(crate) fn for_each_object(&self, mut f: impl FnMut(u64, &TrackedObject)) {
        for object in self.objects.iter() {
            f(*object.key(), object.value());
        }
    }

    /// Calls `f` with every scope the sweeper has taken over and its `StuckRequest` life cycle.
    pub(crate) fn for_each_swept_scope(&self, mut f: impl FnMut(&Scope, &Lifecycle)) {
        for entry in lock(&self.taken).iter() {
            f(&entry.scope, &entry.lifecycle);
        }
    }

    /// Calls `f` with the scope of every request in flight (not of outgoing calls), whether the
    /// sweeper has taken it over or not. Each lock is held only while its own scopes are
    /// visited.
    pub(crate) fn for_each_open_request(&self, mut f: impl FnMut(&Scope)) {
        let in_flight = |s: &Scope| s.is_open() && !s.is_upstream_call();
        lock(&self.taken)
            .iter()
            .filter(|entry| in_flight(&entry.scope))
            .for_each(|entry| f(&entry.scope));
        for shard in &self.shards {
            let shard = lock(shard);
            shard
                .queue
                .iter()
                .filter(|s| in_flight(s))
                .for_each(|s| f(s));
        }
    }

    /// Requests in flight, whether the sweeper has taken them over or not.
    pub(crate) fn open_scopes(&self) -> usize {
        let mut open = 0;
        self.for_each_open_request(|_| open += 1);
        open
    }

    /// Entries held now: scopes and objects.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Scopes and objects not tracked because the registry was full.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Owner for Registry {
    fn insert_object(
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
            TrackedObject {
                scope: scope.clone(),
                liveness,
                location,
                type_name,
                created_at: Instant::now(),
                lifecycle: Lifecycle::default(),
                await_trace: None,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::TaskToken;
    use crate::test_helpers::{fresh_scope, scope};

    fn task(registry: &Registry, scope: &Arc<Scope>, token: &Arc<TaskToken>) -> bool {
        registry.insert_object(scope, Liveness::Task(Arc::downgrade(token)), None, None)
    }

    #[test]
    fn capacity_bounds_scopes_and_objects_together() {
        let registry = Registry::new(3);
        let s = registry.open(fresh_scope(1)).unwrap();
        let token = Arc::new(TaskToken::default());
        assert!(task(&registry, &s, &token));
        assert!(task(&registry, &s, &token));
        assert!(!task(&registry, &s, &token));
        assert!(registry.open(fresh_scope(2)).is_none());
        assert_eq!((registry.len(), registry.skipped()), (3, 2));

        // The registry gives back the room of what a sweep lets go.
        s.close();
        let released = registry.sweep_scopes(|_, _| false);
        assert_eq!(released.len(), 1);
        assert_eq!(registry.len(), 2);
        drop(token);
        registry.sweep_objects(|_, object| object.liveness.is_alive());
        assert_eq!(registry.len(), 0);
        assert!(registry.open(fresh_scope(3)).is_some());
    }

    #[test]
    fn sweeps_see_new_scopes_and_count_open_ones() {
        let registry = Registry::new(8);
        let open = registry.open(fresh_scope(1)).unwrap();
        let closed = registry.open(fresh_scope(2)).unwrap();
        closed.close();
        assert_eq!(registry.open_scopes(), 1, "queued scopes are counted");
        let mut seen = Vec::new();
        let released = registry.sweep_scopes(|scope, _| {
            seen.push(scope.id);
            scope.is_open()
        });
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
        assert_eq!(released.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
        assert_eq!(registry.open_scopes(), 1, "taken scopes are counted");
        let mut swept = Vec::new();
        registry.for_each_swept_scope(|scope, _| swept.push(scope.id));
        assert_eq!(swept, [open.id]);
    }

    #[test]
    fn only_scopes_nothing_else_holds_are_reused() {
        let registry = Registry::new(64);
        let unused = scope(1);
        let address = Arc::as_ptr(&unused);
        let held = scope(2);
        let holder = held.clone(); // say, a task the request spawned
        registry.recycle(vec![unused, held]);
        // One new scope per shard: exactly one of them is the pooled scope, overwritten.
        let opened: Vec<Arc<Scope>> = (0..SHARDS as u64)
            .map(|id| registry.open(fresh_scope(100 + id)).unwrap())
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
    fn the_pool_is_bounded_and_spread_over_the_shards() {
        let registry = Registry::new(8);
        let many = SHARDS * POOLED_PER_SHARD + 100;
        registry.recycle((0..many as u64).map(scope).collect());
        for shard in &registry.shards {
            assert_eq!(lock(shard).pool.len(), POOLED_PER_SHARD);
        }
        let few = Registry::new(8);
        few.recycle((0..SHARDS as u64).map(scope).collect());
        assert!(few.shards.iter().all(|shard| lock(shard).pool.len() == 1));
    }
}
