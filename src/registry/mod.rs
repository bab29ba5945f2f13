//! The weak-reference registry: the scopes of requests and the objects they left behind.
//!
//! Entries hold only `Weak` references, liveness tokens or the detector's own small state — never
//! the request or the user's object — so tracking never extends a lifetime. The registry is
//! bounded: past its capacity, new scopes and objects are not tracked and a counter says how many
//! were skipped. It owns that count, hands out the ids of everything it tracks, and keeps a small
//! pool of finished scopes for new requests to reuse.
//!
//! A request that ends having left nothing behind — no task, body or watched object alive, no
//! memory to judge, no `StuckRequest` reported — is forgotten as it ends, by the thread that
//! ends it: the sweeper never sees it. One whose memory is counted waits on its thread until a
//! few more of the thread's requests have ended (its response's bytes are written and freed by
//! then): if it has freed all it allocated, it gives its allocator slot back and is forgotten
//! there too, so that slots never run out however many requests a second come. Only the
//! others wait for a sweep.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;

mod object;
mod shard;

pub(crate) use self::object::TrackedObject;

use self::shard::{
    count_finished, this_threads_shard, Shard, DEFERRED_PER_SHARD, POOLED_PER_SHARD, SHARDS,
};

use crate::alloc::{SlotGuard, Usage};
use crate::report::lifecycle::Lifecycle;
use crate::report::SourceLocation;
use crate::request::liveness::Liveness;
use crate::request::scope::{Judged, Owner, Place, RequestHead, Scope};
use crate::util::sync::lock;
use crate::util::{IdHasher, Ids};

/// Whether what a finished request still holds is memory to judge: the memory judge's one
/// verdict on a request, which the registry applies on the request's own thread.
pub(crate) type MemoryVerdict = Box<dyn Fn(&Usage) -> bool + Send + Sync>;

type IdMap<V> = DashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// What the sweeper has taken over.
#[derive(Default)]
struct Taken {
    scopes: Vec<Arc<Scope>>,
    /// Requests it let go of, by route index.
    finished: Vec<u64>,
}

/// Scopes and objects, bounded by one capacity.
///
/// A request's scope is kept in its thread's shard while the request is in flight — one lock
/// to open, one to close, no hashing. A request that ends with nothing left behind is
/// forgotten there and then; only the others (memory to judge, objects, a reported stuck
/// request) and outgoing calls go to the sweeper, which takes them over into its own list: it
/// never holds a lock a request needs while it judges them.
pub(crate) struct Registry {
    /// The registry itself, for the scopes it makes to point back at.
    me: Weak<Registry>,
    shards: [Mutex<Shard>; SHARDS],
    /// Scopes taken over by the sweeper; only the sweeper changes it.
    taken: Mutex<Taken>,
    objects: IdMap<TrackedObject>,
    len: AtomicUsize,
    capacity: usize,
    skipped: AtomicU64,
    ids: Ids,
    /// Whether a finished request's memory is to be judged (else it is let go on its thread).
    holds_memory: MemoryVerdict,
    /// Spawn locations whose tasks are not tracked
    /// ([`ignore_spawned_at`](crate::LeakDetectorBuilder::ignore_spawned_at)).
    ignored_spawns: Box<[Box<str>]>,
}

impl Registry {
    /// A registry for tests: every spawn tracked; a request holds memory to judge while it
    /// retains a byte.
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Self::with(
            capacity,
            Vec::new(),
            Box::new(|usage| usage.retained_bytes() > 0),
        )
    }

    /// A registry that does not track tasks spawned at locations matching `ignored_spawns`,
    /// and that lets a finished request go on its own thread unless `holds_memory` says its
    /// memory is to be judged (the memory judge's verdict, handed down by the engine).
    pub(crate) fn with(
        capacity: usize,
        ignored_spawns: Vec<Box<str>>,
        holds_memory: MemoryVerdict,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Registry {
            ignored_spawns: ignored_spawns.into_boxed_slice(),
            holds_memory,
            me: me.clone(),
            shards: [const { Mutex::new(Shard::new()) }; SHARDS],
            taken: Mutex::new(Taken::default()),
            objects: IdMap::default(),
            len: AtomicUsize::new(0),
            capacity,
            skipped: AtomicU64::new(0),
            ids: Ids::default(),
        })
    }

    /// The detector's ids: scopes and objects are numbered from it, and so are the judges'
    /// standing alerts.
    pub(crate) fn ids(&self) -> &Ids {
        &self.ids
    }

    /// A fresh id for a scope or an object.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.next()
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

    /// Tracks the scope of a request now in flight, numbered `id`, and returns it, or `None`
    /// when the registry is full. The request gives it back with [`retire`](Owner::retire)
    /// when it ends.
    pub(crate) fn open(
        &self,
        id: u64,
        head: RequestHead,
        memory: Option<SlotGuard>,
    ) -> Option<Arc<Scope>> {
        if !self.reserve() {
            return None;
        }
        let number = this_threads_shard();
        let mut shard = lock(&self.shards[number]);
        let index = shard.vacant_index();
        let place = Place {
            shard: number as u32,
            index,
        };
        let scope = shard.scope(id, head, memory, place, &self.me);
        shard.live[index as usize] = Some(scope.clone());
        Some(scope)
    }

    /// Tracks the scope of an outgoing call, handed to the sweeper at once (it closes with the
    /// request that made it), or returns `None` when the registry is full.
    pub(crate) fn open_call(&self, id: u64, head: RequestHead) -> Option<Arc<Scope>> {
        if !self.reserve() {
            return None;
        }
        let mut shard = lock(&self.shards[this_threads_shard()]);
        let scope = shard.scope(id, head, None, Place::NONE, &self.me);
        shard.handed.push(scope.clone());
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

    /// Judges every scope with `judge`, which gets the scope's `StuckRequest` life cycle to
    /// update and says whether to keep a scope that has closed: requests in flight (in their
    /// shard, under its lock), then the scopes handed over, which the sweeper takes into its own
    /// list. Returns the scopes let go, which the registry no longer holds, for the caller to
    /// hand to [`recycle`](Self::recycle) once it is done with them.
    pub(crate) fn sweep_scopes(
        &self,
        mut judge: impl FnMut(&Arc<Scope>, &mut Lifecycle) -> bool,
    ) -> Vec<Arc<Scope>> {
        let mut judge_one = |scope: &Arc<Scope>| {
            let before = scope.stuck.load();
            let mut lifecycle = before;
            let keep = judge(scope, &mut lifecycle);
            // Most requests in flight are not stuck: their scopes are not written to.
            if lifecycle != before {
                scope.stuck.store(lifecycle);
            }
            keep
        };
        let mut taken = lock(&self.taken);
        for shard in &self.shards {
            let mut shard = lock(shard);
            taken.scopes.append(&mut shard.handed);
            taken.scopes.extend(shard.deferred.drain(..));
            // A request that has just closed is its own thread's to retire.
            for scope in shard.live.iter().flatten().filter(|s| s.is_open()) {
                judge_one(scope);
            }
        }
        let Taken { scopes, finished } = &mut *taken;
        let mut released = Vec::new();
        scopes.retain(|scope| {
            let keep = judge_one(scope);
            if !keep {
                if !scope.is_upstream_call() {
                    count_finished(finished, scope.route_index);
                }
                released.push(scope.clone());
            }
            keep
        });
        drop(taken);
        self.len.fetch_sub(released.len(), Ordering::Relaxed);
        released
    }

    /// Pools the scopes that nothing but `finished` holds, spread evenly over the shards; drops
    /// the rest.
    pub(crate) fn recycle(&self, finished: Vec<Arc<Scope>>) {
        let share = finished.len().div_ceil(SHARDS);
        // A scope still held — by a task, a tracked object or the memory judge — is not reused.
        let mut unused = finished.into_iter().filter(is_unused);
        for shard in &self.shards {
            let pool = &mut lock(shard).pool;
            let room = POOLED_PER_SHARD.saturating_sub(pool.len());
            pool.extend(unused.by_ref().take(share.min(room)));
        }
    }

    /// Requests let go clean on their thread, by allocator route slot, since
    /// the last call: the memory judge counts them as judged.
    pub(crate) fn take_clean(&self) -> Vec<u64> {
        let mut total = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            if total.len() < shard.clean.len() {
                total.resize(shard.clean.len(), 0);
            }
            for (sum, n) in total.iter_mut().zip(shard.clean.iter_mut()) {
                *sum += std::mem::take(n);
            }
        }
        total
    }

    /// Requests finished and let go of since the registry was made, by route index.
    pub(crate) fn finished_requests(&self) -> Vec<u64> {
        let mut total = lock(&self.taken).finished.clone();
        for shard in &self.shards {
            let shard = lock(shard);
            if total.len() < shard.finished.len() {
                total.resize(shard.finished.len(), 0);
            }
            for (sum, n) in total.iter_mut().zip(&shard.finished) {
                *sum += n;
            }
        }
        total
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

    /// Calls `f` with the scope of every request in flight (never an outgoing call's: those are
    /// handed to the sweeper when they open). Each shard's lock is held only while its own
    /// scopes are visited.
    pub(crate) fn for_each_open_request(&self, mut f: impl FnMut(&Scope)) {
        for shard in &self.shards {
            let shard = lock(shard);
            let live = shard.live.iter().flatten();
            live.filter(|s| s.is_open()).for_each(|s| f(s));
        }
    }

    /// Requests in flight.
    pub(crate) fn requests_in_flight(&self) -> usize {
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
        location: Option<SourceLocation>,
        type_name: Option<&'static str>,
    ) -> Option<Judged> {
        let judged = TrackedObject::judged(&liveness, location, &self.ignored_spawns)?;
        if !self.reserve() {
            return None;
        }
        let id = self.next_id();
        let object = TrackedObject::new(scope.clone(), liveness, location, type_name, judged);
        self.objects.insert(id, object);
        Some(judged)
    }

    fn retire(&self, scope: Arc<Scope>) {
        let Place { shard, index } = scope.place;
        if index == Place::NONE.index {
            // An outgoing call's scope: the sweeper has it.
            scope.close();
            return;
        }
        let mut shard = lock(&self.shards[shard as usize]);
        let Some(held) = shard.live.get_mut(index as usize).and_then(Option::take) else {
            scope.close();
            return;
        };
        shard.vacant.push(index);
        drop(held);
        let reported_stuck = scope.stuck.load().reported().is_some();
        let counts_memory = scope.counts_memory();
        let unused = is_unused(&scope);
        // When nothing else holds the scope (no task, body, watched object or outgoing call of
        // the request), nothing can ever read when it closed: the clock is not read for it.
        if counts_memory || reported_stuck || !unused {
            scope.close();
        }
        if reported_stuck || (counts_memory && !unused) {
            // A `StuckRequest` to release, or memory to judge: the sweeper's.
            shard.handed.push(scope);
            return;
        }
        if counts_memory {
            // Its memory is decided on a few requests later, on this thread.
            if shard.deferred.len() == DEFERRED_PER_SHARD {
                if let Some(oldest) = shard.deferred.pop_front() {
                    self.decide(&mut shard, oldest);
                }
            }
            shard.deferred.push_back(scope);
            return;
        }
        self.forget(&mut shard, scope);
    }
}

impl Registry {
    /// Decides on the memory of a request that ended a few requests ago (its response's bytes
    /// written and freed by now): one that holds no memory to judge, with nothing left that
    /// could allocate for it, gives its allocator slot back here and is counted as judged
    /// clean, without waiting for the sweeper — under load, slots would otherwise run out and
    /// requests go uncounted. Any other is the sweeper's.
    fn decide(&self, shard: &mut Shard, scope: Arc<Scope>) {
        if !is_unused(&scope) || !scope.retire_memory_unless(&*self.holds_memory) {
            shard.handed.push(scope);
            return;
        }
        if !scope.is_upgraded() {
            count_finished(&mut shard.clean, scope.route_slot());
        }
        self.forget(shard, scope);
    }

    /// Forgets a request that ended with nothing left to judge: counts it finished and pools
    /// its scope for reuse when nothing else holds it.
    fn forget(&self, shard: &mut Shard, scope: Arc<Scope>) {
        count_finished(&mut shard.finished, scope.route_index);
        self.len.fetch_sub(1, Ordering::Relaxed);
        // Whatever the request left behind holds its scope and judges itself.
        if is_unused(&scope) && shard.pool.len() < POOLED_PER_SHARD {
            shard.pool.push(scope);
        }
    }
}

/// Nothing but the caller holds `scope`: it can be reused.
fn is_unused(scope: &Arc<Scope>) -> bool {
    Arc::strong_count(scope) == 1 && Arc::weak_count(scope) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::liveness::TaskToken;
    use crate::request::route::RouteInfo;
    use crate::test_helpers::scope;

    fn task(registry: &Registry, scope: &Arc<Scope>, token: &Arc<TaskToken>) -> bool {
        registry
            .insert_object(scope, Liveness::Task(Arc::downgrade(token)), None, None)
            .is_some()
    }

    /// What a request to route number `index` tells its scope.
    fn request(id: u64, index: u32) -> RequestHead {
        let mut head = crate::test_helpers::head(id);
        head.info.index = index;
        head
    }

    #[test]
    fn capacity_bounds_scopes_and_objects_together() {
        let registry = Registry::new(3);
        let s = registry.open(1, request(1, 0), None).unwrap();
        let token = Arc::new(TaskToken::default());
        assert!(task(&registry, &s, &token));
        assert!(task(&registry, &s, &token));
        assert!(!task(&registry, &s, &token));
        assert!(registry.open(2, request(2, 0), None).is_none());
        assert_eq!((registry.len(), registry.skipped()), (3, 2));

        // A request that ends gives its room back at once; its task keeps its own, and is
        // judged from when the request closed.
        registry.retire(s.clone());
        assert_eq!(registry.len(), 2);
        assert!(s.closed_at().is_some());
        drop(token);
        registry.sweep_objects(|_, object| object.liveness.is_alive());
        assert_eq!(registry.len(), 0);
        assert!(registry.open(3, request(3, 0), None).is_some());
    }

    #[test]
    fn a_clean_request_is_forgotten_when_it_ends_and_its_scope_reused() {
        let registry = Registry::new(8);
        let first = registry.open(1, request(1, 4), None).unwrap();
        let address = Arc::as_ptr(&first);
        assert_eq!((registry.len(), registry.requests_in_flight()), (1, 1));
        registry.retire(first);
        assert_eq!((registry.len(), registry.requests_in_flight()), (0, 0));
        assert_eq!(registry.finished_requests(), [0, 0, 0, 0, 1]);
        let mut judged = 0;
        assert!(registry
            .sweep_scopes(|_, _| {
                judged += 1;
                true
            })
            .is_empty());
        assert_eq!(judged, 0, "the sweeper never sees it");
        // The next request on this thread reuses the scope's allocation and its place.
        let second = registry.open(2, request(2, 4), None).unwrap();
        assert_eq!(Arc::as_ptr(&second), address);
        assert_eq!((second.id, second.place.index), (2, 0));
        assert!(second.stuck.load().reported().is_none());
    }

    #[test]
    fn requests_that_freed_their_memory_give_their_slot_back_on_their_thread() {
        let registry = Registry::new(1024);
        let open = |id, charged: (u64, u64)| {
            let slot = SlotGuard::acquire(9).unwrap();
            slot.charge(charged.0, charged.1);
            registry.open(id, request(id, 1), Some(slot)).unwrap()
        };
        // Nothing else may hold a scope whose slot is given back: the test keeps none.
        registry.retire(open(1, (100, 60)));
        registry.retire(open(2, (100, 100)));
        assert_eq!(registry.len(), 2, "decided on later");
        assert!(registry.take_clean().iter().all(|&n| n == 0));
        for id in 3..3 + DEFERRED_PER_SHARD as u64 {
            registry.retire(open(id, (0, 0)));
        }
        // The two have waited for as many requests of this thread to end: the one that freed
        // all it allocated gave its slot back and is counted clean; the other is the sweeper's.
        assert_eq!(registry.take_clean()[9], 1);
        assert_eq!(registry.take_clean().get(9), Some(&0), "taken once");
        assert_eq!(registry.len(), DEFERRED_PER_SHARD + 1);
        let mut handed = Vec::new();
        registry.sweep_scopes(|scope, _| {
            handed.push(scope.id);
            assert!(scope.counts_memory());
            true
        });
        assert_eq!(
            handed.len(),
            DEFERRED_PER_SHARD + 1,
            "the sweeper takes the rest"
        );
        assert!(handed.contains(&1) && !handed.contains(&2));
    }

    #[test]
    fn a_request_reported_stuck_is_handed_to_the_sweeper() {
        let registry = Registry::new(8);
        let stuck = registry.open(1, request(1, 0), None).unwrap();
        let fine = registry.open(2, request(2, 0), None).unwrap();
        let mut seen = Vec::new();
        let released = registry.sweep_scopes(|scope, lifecycle| {
            seen.push(scope.id);
            if scope.id == 1 {
                lifecycle.alive(0);
            }
            true
        });
        seen.sort_unstable();
        assert_eq!((seen, released.len()), (vec![1, 2], 0));
        assert!(stuck.stuck.load().is_active());
        let mut active = Vec::new();
        registry.for_each_open_request(|s| {
            if s.stuck.load().is_active() {
                active.push(s.id)
            }
        });
        assert_eq!(active, [1]);

        registry.retire(fine);
        registry.retire(stuck);
        assert_eq!(registry.len(), 1, "the stuck one waits for its release");
        assert_eq!(registry.requests_in_flight(), 0);
        let mut gone = Vec::new();
        let released = registry.sweep_scopes(|scope, lifecycle| {
            gone.extend(lifecycle.gone().map(|state| (scope.id, state)));
            scope.is_open()
        });
        assert_eq!(gone, [(1, crate::report::LeakState::Released)]);
        assert_eq!(released.len(), 1);
        assert_eq!(registry.len(), 0);
        assert_eq!(registry.finished_requests(), [2]);
    }

    #[test]
    fn calls_go_to_the_sweeper_when_they_open() {
        let registry = Registry::new(8);
        let call = registry
            .open_call(1, request(1, RouteInfo::NO_INDEX))
            .unwrap();
        assert_eq!(
            registry.requests_in_flight(),
            0,
            "a call is not a request in flight"
        );
        let mut seen = Vec::new();
        registry.sweep_scopes(|scope, _| {
            seen.push(scope.id);
            true
        });
        assert_eq!(seen, [1]);
        registry.retire(call);
        assert_eq!(registry.len(), 1, "the sweeper lets it go");
        assert_eq!(registry.sweep_scopes(|s, _| s.is_open()).len(), 1);
        assert!(registry.finished_requests().iter().all(|&n| n == 0));
    }

    #[test]
    fn only_scopes_nothing_else_holds_are_reused() {
        let registry = Registry::new(64);
        let unused = scope(1);
        let address = Arc::as_ptr(&unused);
        let held = scope(2);
        let holder = held.clone(); // say, a task the request spawned
        registry.recycle(vec![unused, held]);
        let pooled: Vec<*const Scope> = registry
            .shards
            .iter()
            .flat_map(|shard| lock(shard).pool.iter().map(Arc::as_ptr).collect::<Vec<_>>())
            .collect();
        assert_eq!(pooled, [address]);
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
