//! Retained memory, judged per route by request generations.
//!
//! With the [`TrackingAllocator`](crate::TrackingAllocator) installed, every request knows the
//! bytes it allocated and freed, and every route the bytes its requests still hold. Retained
//! memory is not a leak by itself: a lazily initialised `OnceLock` retains once, a bounded cache
//! retains its newest entries. What marks a leak is memory that *old* requests still hold after
//! many newer requests of the same route have come and gone.
//!
//! So once a request has closed and its grace period passed, its retained bytes are read. A
//! request retaining at least `memory_threshold` bytes may become one of its route's
//! *witnesses* ([`WITNESSES_PER_ROUTE`] at most; others are retired at once, and their later
//! frees still count for the route). Each sweep re-reads the witnesses: one that has let go of
//! its memory (an evicted cache entry) is dropped. A witness is *old* once `memory_window` newer
//! requests of the route have been judged after it. A route with at least
//! [`MIN_OLD_WITNESSES`] old witnesses still holding memory *whose memory grows with its
//! requests* is reported as [`RetainedMemory`](LeakKind::RetainedMemory), with the bytes they
//! hold per request and the route's total. Old requests holding memory alone are no leak: a
//! bounded cache that keeps old entries on purpose (TinyLFU, S3-FIFO) has them too. So the
//! route's retained bytes must amount to at least three quarters of the witnesses' median per
//! request judged (a leak's do; a cache holds its capacity's worth, less than `memory_window`
//! requests' worth), and, when its requests come spread over sweeps (steady traffic), have
//! grown lately by at least half the median per request: over the window closed last, or since
//! the first window (a warm-up) ended. (A burst of requests between two sweeps closes no
//! window: the total alone decides.) Once none of
//! its old witnesses holds memory any more, or the route's memory stopped growing, the report
//! is released.
//!
//! The criterion counts requests, not seconds: it holds whether a route's requests arrive in a
//! burst between two sweeps or spread over many.
//!
//! Requests that keep less than the threshold each are judged together: a route whose retained
//! bytes grow steadily with its requests is reported too (see [`growth`](super::growth)).
//!
//! Whose memory it is decides which rules apply (see [`owner`](super::owner)): a route whose
//! bytes sit mostly at dependencies' allocation sites is reported only when its memory grew in
//! [`DEPENDENCY_WINDOWS`] windows in a row and for `dependency_growth_span` — a library frees
//! on its own schedule — and, while the owner is unknown, growth no witness backs must last
//! that span too.
//!
//! One cause, one report: a request whose task, body or watched object stands reported holds
//! that leftover's memory (a task's cell and what it allocated, a kept body's buffers, a
//! watched object). Such a request is not judged for memory while the leftover lives: what it
//! held when it would have been judged is set aside (left out of its route's retained bytes,
//! never a witness), and once the leftover is gone the request counts as judged. Memory the
//! request keeps beyond its leftover is judged with the route's requests that left nothing,
//! or once the leftover is fixed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::growth::{RetainedGrowth, Steady, GROWTH_WINDOWS};
use super::owner::{self, Owner};
use crate::alloc;
use crate::alloc::symbolize::Symbolizer;
use crate::alloc::Usage;
use crate::config::Config;
use crate::judge::build::request_report;
use crate::judge::objects::Reported;
use crate::report::lifecycle::StandingAlert;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::scope::{Scope, Words};
use crate::util::clock;
use crate::util::Ids;

/// How many requests per route are kept as witnesses.
pub(crate) const WITNESSES_PER_ROUTE: usize = 8;

/// How many old witnesses still holding memory make a route leak.
pub(crate) const MIN_OLD_WITNESSES: usize = 3;

/// Windows in a row a dependency's memory must grow in to be reported (besides lasting
/// `dependency_growth_span`).
pub(crate) const DEPENDENCY_WINDOWS: u64 = 8;

/// The sweeper's view of every route's memory, by allocator route slot.
#[derive(Default)]
pub(crate) struct MemoryJudge {
    routes: HashMap<u32, RouteMemory>,
    /// Requests whose leftovers stand reported, by scope id: their route slot and what they
    /// held when set aside. Bounded by the registry's capacity (one leftover each at least).
    set_aside: HashMap<u64, (u32, u64)>,
    symbols: Symbolizer,
}

struct RouteMemory {
    /// Requests of the route judged so far.
    judged: u64,
    witnesses: VecDeque<Witness>,
    /// The route's retained bytes, window by window (small leaks).
    growth: RetainedGrowth,
    /// The request judged last: a report of steady growth names it.
    latest: Option<Arc<Scope>>,
    /// The route's `RetainedMemory` finding.
    alert: StandingAlert,
}

struct Witness {
    scope: Arc<Scope>,
    /// The route's `judged` count when this request was judged.
    seq: u64,
}

/// Whether a finished request still holds memory worth judging: at least `memory_threshold`
/// bytes. The one verdict on a request's memory: the registry applies it on the request's
/// thread (to let a request go without the sweeper), the objects judge before the grace period
/// ends, and this judge to choose witnesses and to drop those that let go.
pub(crate) fn holds_memory(usage: &Usage, memory_threshold: u64) -> bool {
    usage.retained_bytes() >= memory_threshold
}

impl MemoryJudge {
    /// Judges requests whose scopes closed more than the grace period ago (or let go earlier),
    /// oldest first. Keeps some as witnesses; returns the others, whose memory is no longer
    /// counted per request.
    /// Those whose leftovers stand `reported` are set aside instead.
    pub(crate) fn judge_requests(
        &mut self,
        mut scopes: Vec<Arc<Scope>>,
        reported: &Reported,
        config: &Config,
        ids: &Ids,
    ) -> Vec<Arc<Scope>> {
        // In request order: "older" means opened earlier, not first in the registry.
        scopes.sort_unstable_by_key(|scope| scope.id);
        let mut done = Vec::with_capacity(scopes.len());
        for scope in scopes {
            if reported.contains(scope.id) {
                self.set_aside(&scope);
                done.push(scope);
            } else if let Some(scope) = self.judge_request(scope, config, ids) {
                done.push(scope);
            }
        }
        done
    }

    /// Counts as judged the requests that had freed all they allocated a few requests after
    /// they ended (by route slot): they gave their allocator slot back on their thread, and
    /// retain nothing.
    pub(crate) fn count_clean(&mut self, clean: &[u64], ids: &Ids) {
        for (slot, &n) in clean.iter().enumerate().skip(1) {
            if n != 0 {
                self.route(slot as u32, ids).judged += n;
            }
        }
    }

    /// Sets aside a request whose leftover stands reported: what it holds now is the
    /// leftover's, left out of its route's retained bytes until the leftover is gone.
    fn set_aside(&mut self, scope: &Scope) {
        if let Some(usage) = scope.usage() {
            if scope.route_slot() != 0 {
                let held = (scope.route_slot(), usage.retained_bytes());
                self.set_aside.insert(scope.id, held);
            }
        }
        scope.retire_memory();
    }

    /// Counts as judged the requests set aside whose leftovers are no longer reported (gone),
    /// and returns what the others hold, by route slot.
    fn take_back(&mut self, reported: &Reported) -> HashMap<u32, u64> {
        let mut held: HashMap<u32, u64> = HashMap::new();
        let mut back: Vec<u32> = Vec::new();
        self.set_aside.retain(|&id, &mut (slot, bytes)| {
            let keep = reported.contains(id);
            if keep {
                *held.entry(slot).or_default() += bytes;
            } else {
                back.push(slot);
            }
            keep
        });
        for slot in back {
            if let Some(route) = self.routes.get_mut(&slot) {
                route.judged += 1;
            }
        }
        held
    }

    /// The memory of the route of allocator slot `slot`, added if new.
    fn route(&mut self, slot: u32, ids: &Ids) -> &mut RouteMemory {
        self.routes.entry(slot).or_insert_with(|| RouteMemory {
            judged: 0,
            witnesses: VecDeque::new(),
            growth: RetainedGrowth::default(),
            latest: None,
            alert: StandingAlert::new(ids.next()),
        })
    }

    /// Judges one request; returns it unless it is kept as a witness.
    fn judge_request(
        &mut self,
        scope: Arc<Scope>,
        config: &Config,
        ids: &Ids,
    ) -> Option<Arc<Scope>> {
        let Some(usage) = scope.usage() else {
            return Some(scope);
        };
        // An upgraded request's memory lives with its connection (a WebSocket session's
        // buffers): its route still counts it, but it is no witness.
        if scope.route_slot() == 0 || scope.is_upgraded() {
            scope.retire_memory();
            return Some(scope);
        }
        let route = self.route(scope.route_slot(), ids);
        route.judged += 1;
        route.latest = Some(scope.clone());
        if holds_memory(&usage, config.memory_threshold)
            && route.witnesses.len() < WITNESSES_PER_ROUTE
        {
            route.witnesses.push_back(Witness {
                scope,
                seq: route.judged,
            });
            None
        } else {
            scope.retire_memory();
            Some(scope)
        }
    }

    /// Once per sweep: drops witnesses that let go of their memory and judges every route.
    /// `unjudged` holds, by route slot, what the route's requests not judged yet (in flight,
    /// or in their grace period) hold; the requests set aside hold what they held then (while
    /// their leftovers stand `reported`): the rest of its live bytes is retained.
    pub(crate) fn judge_routes(
        &mut self,
        now: Instant,
        config: &Config,
        reported: &Reported,
        unjudged: &HashMap<u32, u64>,
        reports: &mut Vec<LeakReport>,
    ) {
        let set_aside = self.take_back(reported);
        for (&slot, route) in &mut self.routes {
            let held = unjudged.get(&slot).copied().unwrap_or(0)
                + set_aside.get(&slot).copied().unwrap_or(0);
            let retained = alloc::route_live(slot).0 - held as i64;
            route
                .growth
                .observe(route.judged, retained, config.memory_window, now);
            route.witnesses.retain(|w| {
                let holds = w
                    .scope
                    .usage()
                    .is_some_and(|u| holds_memory(&u, config.memory_threshold));
                if !holds {
                    w.scope.retire_memory();
                }
                holds
            });
            let judged = route.judged;
            let old: Vec<&Witness> = route
                .witnesses
                .iter()
                .filter(|w| judged - w.seq >= config.memory_window)
                .collect();
            let steady = route.growth.steady();
            // Old requests holding memory are a leak only if the route's memory grows with its
            // requests: a bounded cache that keeps old entries on purpose (TinyLFU, S3-FIFO)
            // has old witnesses too, but a plateau. Counted exactly, a route whose requests each
            // keep about what its old witnesses hold retains about that much per request judged
            // (a cache holds its capacity's worth, under `memory_window` requests' worth). In
            // sampled mode a witness holds a sample's weight, not what a request keeps: the
            // route's own retained bytes per request judged stand in for it. Under steady
            // traffic the route must also have grown lately by at least half of that per
            // request (a cache's own bookkeeping grows for a while, by far less).
            let retained_per_request = retained.max(0) as u64 / route.judged.max(1);
            let (kept, like_witnesses) = if alloc::sampling_mean().is_some() {
                (retained_per_request, true)
            } else {
                let median = median_held(&old);
                (median, 4 * retained_per_request >= 3 * median)
            };
            let growth = &route.growth;
            let window = config.memory_window;
            let grew = like_witnesses
                && match growth.grew_lately(route.judged, window, kept / 2) {
                    Some(grew) if growth.is_steady() => grew,
                    // A burst between a few sweeps, or traffic that stopped before a window
                    // could be read: none will be, the total must do.
                    _ => !growth.is_steady() || growth.is_quiet(),
                };
            let witnessed = old.len() >= MIN_OLD_WITNESSES && grew;
            // Whose memory it is, read only for a route that may be reported.
            let owner = if witnessed || steady.is_some() {
                let sites = alloc::top_sites(slot, owner::SITES_READ);
                let mean = alloc::sampling_mean().unwrap_or_else(alloc::sites_mean);
                owner::owner(&sites, mean, &mut self.symbols)
            } else {
                Owner::Unknown
            };
            // Memory not plainly the user's must have kept growing for `dependency_growth_span`
            // (and, a dependency's, for `DEPENDENCY_WINDOWS` windows) to be reported.
            let outlasted = |windows: u64| {
                let streak = route.growth.growing_for(now);
                streak.filter(|&(growth, lasted)| {
                    growth.requests >= windows * config.memory_window
                        && lasted >= config.dependency_growth_span
                })
            };
            let latest = route.latest.as_ref();
            let by_growth = |steady: Steady| {
                latest.map(|l| growth_report(slot, judged, steady, l, now, config))
            };
            let current = match owner {
                Owner::User | Owner::Unknown if witnessed => {
                    Some(route_report(slot, judged, &old, now, config))
                }
                Owner::User => steady.and_then(by_growth),
                Owner::Unknown => steady
                    .filter(|_| outlasted(GROWTH_WINDOWS as u64).is_some())
                    .and_then(by_growth),
                Owner::Dependency => outlasted(DEPENDENCY_WINDOWS).and_then(|(s, _)| by_growth(s)),
            };
            let change = if let Some(mut current) = current {
                current.sites = self
                    .symbols
                    .sites(&alloc::top_sites(slot, LeakReport::MAX_SITES));
                route.alert.raise(current, config.confirm_sweeps)
            } else if old.is_empty() && steady.is_none() {
                let detail = "the route's old requests no longer hold memory".to_owned();
                route.alert.release(clock::wall(now), detail)
            } else if !grew && steady.is_none() {
                let detail = "the route's retained memory no longer grows".to_owned();
                route.alert.release(clock::wall(now), detail)
            } else {
                None
            };
            reports.extend(change);
        }
    }

    /// Routes currently reported as retaining memory.
    pub(crate) fn active_reports(&self) -> impl Iterator<Item = &LeakReport> + '_ {
        self.routes.values().filter_map(|r| r.alert.active())
    }

    /// Per route slot judged so far, how many of its finished requests are kept as
    /// witnesses because they still hold memory.
    pub(crate) fn witnesses(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        let routes = self.routes.iter();
        routes.map(|(&slot, route)| (slot, route.witnesses.len()))
    }
}

/// The `RetainedMemory` report of a route whose retained bytes grow steadily with its requests
/// (its id and state are the alert's), naming the request judged last.
fn growth_report(
    slot: u32,
    judged: u64,
    steady: Steady,
    latest: &Scope,
    now: Instant,
    config: &Config,
) -> LeakReport {
    let per_request = steady.bytes.max(0) as u64 / steady.requests.max(1);
    let (live_bytes, live_blocks) = alloc::route_live(slot);
    let (live_bytes, live_blocks) = (live_bytes.max(0) as u64, live_blocks.max(0) as u64);
    let Words { one, many, group } = latest.words();
    let detail = format!(
        "the memory the {group}'s finished {many} hold grows with their number: by {} bytes over \
         the last {} {many} ({per_request} bytes per {one}), in every window of at least {} \
         {many}; the {group}'s {many} hold {live_bytes} bytes in {live_blocks} blocks ({judged} \
         {many} judged)",
        steady.bytes, steady.requests, config.memory_window,
    );
    LeakReport {
        bytes: Some(live_bytes),
        allocations: Some(live_blocks),
        bytes_per_request: Some(per_request),
        // Route figures: estimates whenever the allocator samples.
        bytes_estimated: alloc::sampling_mean().is_some(),
        ..request_report(
            latest,
            0,
            LeakKind::RetainedMemory,
            LeakState::Suspected,
            now,
            detail,
        )
    }
}

/// What old witnesses still hold per request: the median, so that one request that also paid
/// for a lazy initialisation does not skew the figure.
fn median_held(old: &[&Witness]) -> u64 {
    let mut held: Vec<u64> = old
        .iter()
        .filter_map(|w| w.scope.usage())
        .map(|u| u.retained_bytes())
        .collect();
    held.sort_unstable();
    held.get(held.len() / 2).copied().unwrap_or(0)
}

/// The `RetainedMemory` report of a route whose old witnesses still hold memory (its id and
/// state are the alert's).
fn route_report(
    slot: u32,
    judged: u64,
    old: &[&Witness],
    now: Instant,
    config: &Config,
) -> LeakReport {
    let per_request = median_held(old);
    let (live_bytes, live_blocks) = alloc::route_live(slot);
    let (live_bytes, live_blocks) = (live_bytes.max(0) as u64, live_blocks.max(0) as u64);
    let oldest = &old[0].scope;
    let Words { many, group, .. } = oldest.words();
    let detail = format!(
        "{} {many} judged more than {} {many} ago still hold memory, a median {per_request} bytes \
         each; the {group}'s {many} hold {live_bytes} bytes in {live_blocks} blocks ({judged} \
         {many} judged)",
        old.len(),
        config.memory_window,
    );
    LeakReport {
        bytes: Some(live_bytes),
        allocations: Some(live_blocks),
        bytes_per_request: Some(per_request),
        // Route figures: estimates whenever the allocator samples.
        bytes_estimated: alloc::sampling_mean().is_some(),
        ..request_report(
            oldest,
            0,
            LeakKind::RetainedMemory,
            LeakState::Suspected,
            now,
            detail,
        )
    }
}
