//! The registry's shards: where a thread's requests in flight live, with the pool of finished
//! scopes its new requests reuse.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::Registry;
use crate::alloc::SlotGuard;
use crate::request::route::RouteInfo;
use crate::request::scope::{Owner, Place, RequestHead, Scope};

/// How many shards requests are spread over (by thread), so that requests on different threads
/// rarely meet on one lock.
pub(super) const SHARDS: usize = 16;

/// The most finished scopes kept for reuse per shard.
pub(super) const POOLED_PER_SHARD: usize = 256;

/// How many ended requests whose memory is counted wait in a shard to be decided on: each waits
/// for this many more requests of its thread to end, by which time its response's bytes have
/// been written and freed, and the response's header map, which hyper keeps for the next
/// request on the connection, has been reused and freed.
pub(super) const DEFERRED_PER_SHARD: usize = 128;

/// Source of each thread's shard.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard (`usize::MAX` until the thread opens its first scope).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The shard the requests of this thread open in: one per thread, handed out in turn.
pub(super) fn this_threads_shard() -> usize {
    SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            shard.get()
        })
        .unwrap_or(0)
}

/// One shard of the scopes.
pub(super) struct Shard {
    /// Requests in flight, each at its [`Place::index`]; `None` where a request has ended.
    pub(super) live: Vec<Option<Arc<Scope>>>,
    /// The free places in `live`.
    pub(super) vacant: Vec<u32>,
    /// Scopes for the sweeper to take over: requests that ended with something left to judge,
    /// and outgoing calls.
    pub(super) handed: Vec<Arc<Scope>>,
    /// Requests that ended holding an allocator slot and nothing else, oldest first, to be
    /// decided on, on this thread (at most [`DEFERRED_PER_SHARD`]; the sweeper takes what is left).
    pub(super) deferred: VecDeque<Arc<Scope>>,
    /// Finished scopes nothing else holds, for new requests to reuse (at most
    /// [`POOLED_PER_SHARD`]).
    pub(super) pool: Vec<Arc<Scope>>,
    /// Requests that ended with nothing left to judge, by route index.
    pub(super) finished: Vec<u64>,
    /// Requests let go clean on this thread, by allocator route slot, not yet
    /// taken by the sweeper.
    pub(super) clean: Vec<u64>,
}

impl Shard {
    pub(super) const fn new() -> Self {
        Shard {
            live: Vec::new(),
            vacant: Vec::new(),
            handed: Vec::new(),
            deferred: VecDeque::new(),
            pool: Vec::new(),
            finished: Vec::new(),
            clean: Vec::new(),
        }
    }

    /// The scope of a new request: a pooled one renewed in place when one is free (no
    /// allocation on the request's thread, and none freed in bulk on the sweeper's), else a new
    /// one.
    pub(super) fn scope(
        &mut self,
        id: u64,
        head: RequestHead,
        memory: Option<SlotGuard>,
        place: Place,
        owner: &Weak<Registry>,
    ) -> Arc<Scope> {
        if let Some(mut pooled) = self.pool.pop() {
            if let Some(scope) = Arc::get_mut(&mut pooled) {
                scope.renew(id, head, memory, place);
                return pooled;
            }
        }
        let owner: Weak<dyn Owner> = owner.clone();
        Arc::new(Scope::new(id, head, owner, memory, place))
    }

    pub(super) fn vacant_index(&mut self) -> u32 {
        self.vacant.pop().unwrap_or_else(|| {
            self.live.push(None);
            (self.live.len() - 1) as u32
        })
    }
}

/// Adds one request of route `index` (a route index or slot) to `counts`.
pub(super) fn count_finished(counts: &mut Vec<u64>, index: u32) {
    if index == RouteInfo::NO_INDEX {
        return;
    }
    let index = index as usize;
    if counts.len() <= index {
        counts.resize(index + 1, 0);
    }
    counts[index] += 1;
}
