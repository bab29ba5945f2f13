//! [`Snapshot`]: what a detector knows right now, taken on demand — for a `/debug/leaks`
//! endpoint ([`LeakDetector::snapshot_service`](crate::LeakDetector::snapshot_service)), a log
//! line or a test.
//!
//! A snapshot is built only when asked for, on the asking thread, never on a request's path. It
//! reads the last sweep's verdicts and the registry as they are; it does not sweep. It is
//! bounded whatever the traffic: at most [`Snapshot::MAX_REPORTS`] reports,
//! [`Snapshot::MAX_ROUTES`] routes, [`Snapshot::MAX_TASK_GROUPS`] groups of tasks and
//! [`LeakReport::MAX_SITES`] allocation sites for each of [`Snapshot::MAX_SITE_ROUTES`] routes;
//! what is left out is counted. Like reports, it names routes by their template and never holds
//! a header value, a query string, a body or a raw path.
//!
//! Its [`Display`](std::fmt::Display) form is a set of tables for a terminal; with the `serde`
//! feature it serialises (to JSON, for the endpoint).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use crate::alloc;
use crate::alloc::symbolize::Symbolizer;
use crate::engine::stats::Stats;
use crate::engine::Engine;
use crate::judge::trend::{Sample, TrendWindow};
use crate::report::{AllocationSite, LeakKind, LeakReport, LeakState, SourceLocation};
use crate::request::liveness::Liveness;
use crate::request::scope;
use crate::util::clock;

cfg_feature! {
    "serde",
    mod service;
    pub use self::service::SnapshotService;
}
mod text;

#[cfg(feature = "serde")]
use crate::report::ser;

/// Everything a detector knows at one moment; from
/// [`LeakDetector::snapshot`](crate::LeakDetector::snapshot).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// When the snapshot was taken (Unix milliseconds in JSON).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::unix_millis"))]
    pub taken_at: SystemTime,
    /// How the byte figures below were counted.
    pub memory: MemoryAccounting,
    /// The detector's counters and gauges, as [`LeakDetector::stats`](crate::LeakDetector::stats)
    /// returns them.
    pub stats: Stats,
    /// Per route: requests in flight and finished, memory, tasks alive; by template.
    pub routes: Vec<RouteSnapshot>,
    /// Routes left out past [`MAX_ROUTES`](Self::MAX_ROUTES) (the least active ones).
    pub routes_omitted: usize,
    /// Tracked tasks still alive, grouped by route and spawn location, most tasks first.
    pub tasks: Vec<TaskGroup>,
    /// Groups left out past [`MAX_TASK_GROUPS`](Self::MAX_TASK_GROUPS).
    pub task_groups_omitted: usize,
    /// The active reports, as [`LeakDetector::leaks`](crate::LeakDetector::leaks) returns them
    /// (await traces included where there are some), oldest first.
    pub reports: Vec<LeakReport>,
    /// Reports left out past [`MAX_REPORTS`](Self::MAX_REPORTS) (the newest ones).
    pub reports_omitted: usize,
    /// Where routes' live memory was allocated, when allocation sites are on
    /// ([`TrackingAllocator::set_allocation_sites`](crate::TrackingAllocator::set_allocation_sites));
    /// routes holding the most first.
    pub sites: Vec<RouteSites>,
    /// How the sites' bytes were counted: `Exact` with [`AllocationSites::Exact`](crate::AllocationSites::Exact),
    /// `Estimated` when sampled, `Untracked` when sites are off.
    pub sites_accounting: MemoryAccounting,
    /// The trend sampler's window and its alerts.
    pub trend: TrendSnapshot,
}

impl Snapshot {
    /// The most reports a snapshot lists.
    pub const MAX_REPORTS: usize = 256;
    /// The most routes a snapshot lists.
    pub const MAX_ROUTES: usize = 1024;
    /// The most groups of tasks a snapshot lists.
    pub const MAX_TASK_GROUPS: usize = 256;
    /// The most routes whose allocation sites a snapshot lists.
    pub const MAX_SITE_ROUTES: usize = 32;
}

/// How a snapshot's byte figures were counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum MemoryAccounting {
    /// Every block is counted: the figures are exact.
    Exact,
    /// The figures are estimates from sampled blocks.
    Estimated,
    /// The [`TrackingAllocator`](crate::TrackingAllocator) is not installed: there are no byte
    /// figures.
    Untracked,
}

impl MemoryAccounting {
    /// `"exact"`, `"estimated"` or `"untracked"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemoryAccounting::Exact => "exact",
            MemoryAccounting::Estimated => "estimated",
            MemoryAccounting::Untracked => "untracked",
        }
    }
}

/// One route in a [`Snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RouteSnapshot {
    /// The route template, or one of the names in [`crate::route`].
    pub route: String,
    /// Requests of the route in flight (their response has not finished).
    pub in_flight: u64,
    /// How long the oldest request in flight has been open (milliseconds in JSON).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::opt_millis"))]
    pub oldest_in_flight: Option<Duration>,
    /// Requests of the route that finished and were judged, since the detector was built.
    pub finished_requests: u64,
    /// Bytes allocated by the route's requests (and the tasks they spawned) and still live;
    /// `None` when memory is not tracked.
    pub live_bytes: Option<u64>,
    /// Blocks counted like [`live_bytes`](Self::live_bytes).
    pub live_blocks: Option<u64>,
    /// Of [`live_bytes`](Self::live_bytes), what requests that have finished still hold (the
    /// rest is held by requests in flight).
    pub retained_bytes: Option<u64>,
    /// Finished requests kept as witnesses because they still hold memory.
    pub witnesses: usize,
    /// Tracked tasks of the route still alive.
    pub tasks_alive: u64,
}

/// Tracked tasks of one route spawned at one place, in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TaskGroup {
    /// The route of the requests that spawned them.
    pub route: String,
    /// Where they were spawned, when known.
    pub location: Option<SourceLocation>,
    /// How many are alive.
    pub alive: u64,
    /// Of those, how many outlive a request that has finished.
    pub after_request: u64,
    /// How long ago the oldest of them was spawned (milliseconds in JSON).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::millis"))]
    pub oldest: Duration,
}

/// Where one route's live memory was allocated, in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RouteSites {
    /// The route template.
    pub route: String,
    /// Its sites holding the most bytes, most first.
    pub sites: Vec<AllocationSite>,
}

/// The trend sampler in a [`Snapshot`]: its window and its alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TrendSnapshot {
    /// Samples in the window.
    pub samples: usize,
    /// Time from the oldest sample to the newest (milliseconds in JSON).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::millis"))]
    pub span: Duration,
    /// The oldest sample of the window.
    pub first: Option<TrendSample>,
    /// The newest sample.
    pub latest: Option<TrendSample>,
    /// The state of the [`HeapGrowth`](LeakKind::HeapGrowth) alert, when raised.
    pub heap_growth: Option<LeakState>,
    /// The state of the [`TaskGrowth`](LeakKind::TaskGrowth) alert, when raised.
    pub task_growth: Option<LeakState>,
}

/// One trend sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TrendSample {
    /// Live heap bytes (from the allocator, else the resident set size).
    pub heap_bytes: Option<u64>,
    /// Alive tokio tasks of the detector's runtime.
    pub alive_tasks: Option<u64>,
    /// Requests in flight.
    pub in_flight: u64,
}

impl From<Sample> for TrendSample {
    fn from(sample: Sample) -> Self {
        TrendSample {
            heap_bytes: sample.heap_bytes,
            alive_tasks: sample.alive_tasks,
            in_flight: sample.in_flight,
        }
    }
}

/// Takes a snapshot of `engine`. Whatever it allocates is never charged to a request.
pub(crate) fn take(engine: &Engine) -> Snapshot {
    scope::outside(|| collect(engine))
}

fn collect(engine: &Engine) -> Snapshot {
    let now = Instant::now();
    let tracked = engine.memory_tracked();
    let stats = engine.stats();
    let mut routes: BTreeMap<String, RouteSnapshot> = BTreeMap::new();
    // What requests in flight hold, per route: the rest of the route's live bytes is retained.
    let mut in_flight_bytes: HashMap<String, u64> = HashMap::new();
    engine.registry().for_each_open_request(|scope| {
        let entry = route(&mut routes, scope.route.as_str());
        entry.in_flight += 1;
        let age = now.saturating_duration_since(scope.opened_at);
        entry.oldest_in_flight = Some(entry.oldest_in_flight.map_or(age, |a| a.max(age)));
        if let Some(usage) = scope.usage() {
            *in_flight_bytes
                .entry(scope.route.as_str().to_owned())
                .or_default() += usage.retained_bytes();
        }
    });
    for (name, finished) in engine.finished_requests() {
        route(&mut routes, &name).finished_requests = finished;
    }
    for memory in &stats.routes {
        let entry = route(&mut routes, &memory.route);
        entry.live_bytes = Some(memory.live_bytes);
        entry.live_blocks = Some(memory.live_blocks);
        let held = in_flight_bytes.get(&memory.route).copied().unwrap_or(0);
        entry.retained_bytes = Some(memory.live_bytes.saturating_sub(held));
        entry.witnesses = memory.witnesses;
    }
    let tasks = task_groups(engine, now);
    for group in &tasks {
        route(&mut routes, &group.route).tasks_alive += group.alive;
    }
    let (routes, routes_omitted) = most_active_routes(routes.into_values().collect());
    let (tasks, task_groups_omitted) = truncated(tasks, Snapshot::MAX_TASK_GROUPS);
    let exact_sites = alloc::sites_exact() && !engine.memory_estimated();
    let sites_accounting = match (tracked && alloc::sites_enabled(), exact_sites) {
        (false, _) => MemoryAccounting::Untracked,
        (true, true) => MemoryAccounting::Exact,
        (true, false) => MemoryAccounting::Estimated,
    };
    let reports = engine.leaks();
    let trend = trend(engine.trend_window(), &reports);
    let (reports, reports_omitted) = truncated(reports, Snapshot::MAX_REPORTS);
    Snapshot {
        taken_at: clock::wall(now),
        memory: match (tracked, engine.memory_estimated()) {
            (false, _) => MemoryAccounting::Untracked,
            (true, false) => MemoryAccounting::Exact,
            (true, true) => MemoryAccounting::Estimated,
        },
        stats,
        routes,
        routes_omitted,
        tasks,
        task_groups_omitted,
        reports,
        reports_omitted,
        sites: if sites_accounting == MemoryAccounting::Untracked {
            Vec::new()
        } else {
            sites(engine)
        },
        sites_accounting,
        trend,
    }
}

/// The entry of the route `name`, added if new.
fn route<'a>(routes: &'a mut BTreeMap<String, RouteSnapshot>, name: &str) -> &'a mut RouteSnapshot {
    routes
        .entry(name.to_owned())
        .or_insert_with(|| RouteSnapshot {
            route: name.to_owned(),
            ..RouteSnapshot::default()
        })
}

/// Tracked tasks still alive, grouped by route and spawn location, most tasks first.
fn task_groups(engine: &Engine, now: Instant) -> Vec<TaskGroup> {
    let mut groups: HashMap<(String, Option<SourceLocation>), TaskGroup> = HashMap::new();
    engine.registry().for_each_object(|_, object| {
        if !matches!(object.liveness, Liveness::Task(_)) || !object.liveness.is_alive() {
            return;
        }
        let location = object.location.map(SourceLocation::from_std);
        let route = object.scope.route.as_str();
        let group = groups
            .entry((route.to_owned(), location))
            .or_insert_with(|| TaskGroup {
                route: route.to_owned(),
                location,
                alive: 0,
                after_request: 0,
                oldest: Duration::ZERO,
            });
        group.alive += 1;
        group.after_request += u64::from(!object.scope.is_open());
        group.oldest = group
            .oldest
            .max(now.saturating_duration_since(object.created_at));
    });
    let mut groups: Vec<TaskGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        (b.alive, &a.route, a.location.map(|l| (l.file, l.line))).cmp(&(
            a.alive,
            &b.route,
            b.location.map(|l| (l.file, l.line)),
        ))
    });
    groups
}

/// Keeps the [`Snapshot::MAX_ROUTES`] most active routes (requests in flight and finished,
/// tasks alive), in template order; returns them and how many were left out.
fn most_active_routes(mut routes: Vec<RouteSnapshot>) -> (Vec<RouteSnapshot>, usize) {
    if routes.len() <= Snapshot::MAX_ROUTES {
        return (routes, 0);
    }
    let activity = |r: &RouteSnapshot| r.in_flight + r.finished_requests + r.tasks_alive;
    routes.sort_by_key(|r| std::cmp::Reverse(activity(r)));
    let (routes, omitted) = truncated(routes, Snapshot::MAX_ROUTES);
    let mut routes = routes;
    routes.sort_by(|a, b| a.route.cmp(&b.route));
    (routes, omitted)
}

/// The first `max` items, and how many were left out.
fn truncated<T>(mut items: Vec<T>, max: usize) -> (Vec<T>, usize) {
    let omitted = items.len().saturating_sub(max);
    items.truncate(max);
    (items, omitted)
}

/// The routes' top allocation sites, resolved to source lines.
fn sites(engine: &Engine) -> Vec<RouteSites> {
    let mut raw: Vec<(String, Vec<alloc::RawSite>)> = engine
        .route_slots()
        .into_iter()
        .map(|(slot, name)| {
            let top = alloc::top_sites(slot, LeakReport::MAX_SITES);
            (name.to_string(), top)
        })
        .filter(|(_, top)| !top.is_empty())
        .collect();
    let held = |top: &[alloc::RawSite]| top.iter().map(|s| s.bytes).sum::<u64>();
    raw.sort_by_key(|(_, top)| std::cmp::Reverse(held(top)));
    raw.truncate(Snapshot::MAX_SITE_ROUTES);
    let mut symbols = Symbolizer::default();
    raw.into_iter()
        .map(|(route, top)| RouteSites {
            route,
            sites: symbols.sites(&top),
        })
        .collect()
}

/// The trend window, with the states of the growth alerts among `reports`.
fn trend(window: TrendWindow, reports: &[LeakReport]) -> TrendSnapshot {
    let state_of = |kind: LeakKind| reports.iter().find(|r| r.kind == kind).map(|r| r.state);
    let span = match (window.first, window.latest) {
        (Some((first, _)), Some((latest, _))) => latest.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    TrendSnapshot {
        samples: window.samples,
        span,
        first: window.first.map(|(_, s)| s.into()),
        latest: window.latest.map(|(_, s)| s.into()),
        heap_growth: state_of(LeakKind::HeapGrowth),
        task_growth: state_of(LeakKind::TaskGrowth),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_with(name: String, finished_requests: u64) -> RouteSnapshot {
        RouteSnapshot {
            route: name,
            finished_requests,
            ..RouteSnapshot::default()
        }
    }

    #[test]
    fn past_the_bound_the_least_active_routes_are_left_out_and_counted() {
        let routes: Vec<RouteSnapshot> = (0..Snapshot::MAX_ROUTES as u64 + 10)
            .map(|i| route_with(format!("/r{i:05}"), i))
            .collect();
        let (kept, omitted) = most_active_routes(routes);
        assert_eq!((kept.len(), omitted), (Snapshot::MAX_ROUTES, 10));
        assert!(kept.iter().all(|r| r.finished_requests >= 10));
        assert!(kept.windows(2).all(|w| w[0].route < w[1].route));
        let (few, none) = most_active_routes(vec![route_with("/a".into(), 1)]);
        assert_eq!((few.len(), none), (1, 0));
    }

    #[test]
    fn an_empty_detector_has_an_empty_snapshot() {
        let detector = crate::LeakDetector::builder().build().unwrap();
        let snapshot = detector.snapshot();
        assert!(snapshot.routes.is_empty() && snapshot.tasks.is_empty());
        assert_eq!((snapshot.reports_omitted, snapshot.routes_omitted), (0, 0));
        let text = snapshot.to_string();
        assert!(
            text.contains("ROUTE") && text.contains("reports (0)"),
            "{text}"
        );
    }
}
