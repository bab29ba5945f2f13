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
//! *witnesses* (a few per route; others are retired at once, and their later frees still count
//! for the route). Each sweep re-reads the witnesses: one that has let go of its memory (an
//! evicted cache entry) is dropped. A witness is *old* once `memory_window` newer requests of
//! the route have been judged after it. A route with at least [`MIN_OLD_WITNESSES`] old
//! witnesses still holding memory is reported as [`RetainedMemory`](LeakKind::RetainedMemory),
//! with the bytes they hold per request and the route's total.
//!
//! The criterion counts requests, not seconds: it holds whether a route's requests arrive in a
//! burst between two sweeps or spread over many.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::alloc;
use crate::config::Config;
use crate::registry::{Registry, ReportParts};
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::scope::Scope;
use crate::sweep::{Outcome, Tracker};
use crate::symbolize::Symbolizer;

/// How many requests per route are kept as witnesses.
pub(crate) const WITNESSES_PER_ROUTE: usize = 8;

/// How many old witnesses still holding memory make a route leak.
pub const MIN_OLD_WITNESSES: usize = 3;

/// The sweeper's view of every route's memory.
#[derive(Default)]
pub(crate) struct MemoryJudge {
    routes: HashMap<u32, RouteMemory>,
    symbols: Symbolizer,
}

/// How many allocation sites a `RetainedMemory` report lists.
pub const REPORTED_SITES: usize = 5;

struct RouteMemory {
    /// Report id of this route's `RetainedMemory` reports.
    id: u64,
    /// Requests of the route judged so far.
    judged: u64,
    witnesses: VecDeque<Witness>,
    tracker: Tracker,
    /// The last report made, in its current state.
    report: Option<LeakReport>,
}

struct Witness {
    scope: Arc<Scope>,
    /// The route's `judged` count when this request was judged.
    seq: u64,
}

/// Per-route memory numbers, from [`LeakDetector::stats`](crate::LeakDetector::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteMemoryStats {
    /// The route template.
    pub route: String,
    /// Bytes allocated by the route's requests (and the tasks they spawned) and still live.
    pub live_bytes: u64,
    /// Blocks allocated by the route's requests and still live.
    pub live_blocks: u64,
    /// Requests of the route whose retained memory has been judged.
    pub judged_requests: u64,
    /// Judged requests kept as witnesses because they still hold memory.
    pub witnesses: usize,
}

impl MemoryJudge {
    /// Judges a request whose scope closed more than the grace period ago.
    pub(crate) fn judge_request(
        &mut self,
        scope: &Arc<Scope>,
        config: &Config,
        registry: &Registry,
    ) {
        let Some(usage) = scope.usage() else {
            return;
        };
        if scope.route_slot() == 0 {
            scope.retire_memory();
            return;
        }
        let route = self
            .routes
            .entry(scope.route_slot())
            .or_insert_with(|| RouteMemory {
                id: registry.next_id(),
                judged: 0,
                witnesses: VecDeque::new(),
                tracker: Tracker::default(),
                report: None,
            });
        route.judged += 1;
        if usage.retained_bytes() >= config.memory_threshold
            && route.witnesses.len() < WITNESSES_PER_ROUTE
        {
            route.witnesses.push_back(Witness {
                scope: scope.clone(),
                seq: route.judged,
            });
        } else {
            scope.retire_memory();
        }
    }

    /// Once per sweep: drops witnesses that let go of their memory and judges every route.
    pub(crate) fn judge_routes(&mut self, now: Instant, config: &Config, out: &mut Outcome) {
        for (&slot, route) in &mut self.routes {
            let symbols = &mut self.symbols;
            route.witnesses.retain(|w| {
                let holds = w
                    .scope
                    .usage()
                    .is_some_and(|u| u.retained_bytes() >= config.memory_threshold);
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
            if old.len() >= MIN_OLD_WITNESSES {
                let mut current = route_report(route.id, slot, judged, &old, now, config);
                current.sites = symbols.sites(&alloc::top_sites(slot, REPORTED_SITES));
                match route.tracker.alive(config.confirm_sweeps) {
                    Some(state) => {
                        current.state = state;
                        out.reports.push(current.clone());
                    }
                    None => {
                        current.state = route.tracker.reported().unwrap_or(LeakState::Suspected)
                    }
                }
                route.report = Some(current);
            } else if old.is_empty() {
                if let (Some(state), Some(mut last)) = (route.tracker.gone(), route.report.take()) {
                    last.state = state;
                    last.detected_at = crate::scope::wall(now);
                    last.detail = "the route's old requests no longer hold memory".to_owned();
                    out.reports.push(last);
                    route.tracker = Tracker::default();
                }
            }
        }
    }

    /// Routes currently reported as retaining memory.
    pub(crate) fn active_reports(&self) -> impl Iterator<Item = LeakReport> + '_ {
        self.routes
            .values()
            .filter(|r| r.tracker.reported().is_some_and(LeakState::is_active))
            .filter_map(|r| r.report.clone())
    }

    /// Per-route numbers.
    pub(crate) fn stats(&self, names: impl Fn(u32) -> Option<String>) -> Vec<RouteMemoryStats> {
        let mut stats: Vec<RouteMemoryStats> = self
            .routes
            .iter()
            .map(|(&slot, route)| {
                let (bytes, blocks) = alloc::route_live(slot);
                RouteMemoryStats {
                    route: names(slot).unwrap_or_default(),
                    live_bytes: bytes.max(0) as u64,
                    live_blocks: blocks.max(0) as u64,
                    judged_requests: route.judged,
                    witnesses: route.witnesses.len(),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.route.cmp(&b.route));
        stats
    }
}

/// The `RetainedMemory` report of a route whose old witnesses still hold memory.
fn route_report(
    id: u64,
    slot: u32,
    judged: u64,
    old: &[&Witness],
    now: Instant,
    config: &Config,
) -> LeakReport {
    // The median, so that one request that also paid for a lazy initialisation does not skew
    // the figure.
    let mut held: Vec<u64> = old
        .iter()
        .filter_map(|w| w.scope.usage())
        .map(|u| u.retained_bytes())
        .collect();
    held.sort_unstable();
    let per_request = held.get(held.len() / 2).copied().unwrap_or(0);
    let (live_bytes, live_blocks) = alloc::route_live(slot);
    let live_bytes = live_bytes.max(0) as u64;
    let oldest = &old[0].scope;
    let mut report = ReportParts {
        id,
        kind: LeakKind::RetainedMemory,
        state: LeakState::Suspected,
        scope: oldest,
        location: None,
        type_name: None,
        detail: format!(
            "{} requests judged more than {} requests ago still hold memory, a median {} bytes each; \
             the route's requests hold {} bytes in {} blocks ({} requests judged)",
            old.len(),
            config.memory_window,
            per_request,
            live_bytes,
            live_blocks.max(0),
            judged
        ),
    }
    .build(now);
    report.bytes = Some(live_bytes);
    report.allocations = Some(live_blocks.max(0) as u64);
    report.bytes_per_request = Some(per_request);
    report
}
