//! [`Snapshot`]: what a detector knows right now, taken on demand — for a `/debug/leaks`
//! endpoint ([`LeakDetector::snapshot_service`](crate::LeakDetector::snapshot_service)), a log
//! line or a test.
//!
//! A snapshot is built only when asked for, on the asking thread, never on a request's path. It
//! reads the last sweep's verdicts and the registry as they are; it does not sweep. It is
//! bounded whatever the traffic: at most [`Snapshot::MAX_REPORTS`] reports (examples: every
//! report is counted, by route in [`Stats::routes`] and by route, kind and place in at most
//! [`Snapshot::MAX_REPORT_GROUPS`] groups), [`Snapshot::MAX_TASK_GROUPS`] groups of tasks and [`LeakReport::MAX_SITES`] allocation sites
//! for each of [`Snapshot::MAX_SITE_ROUTES`] routes, what is left out counted; its routes are
//! those of [`Stats::routes`], at most [`route::MAX_ROUTES`](crate::route::MAX_ROUTES) templates
//! and the few stand-in names. Like reports, it names routes by their template and never holds
//! a header value, a query string, a body or a raw path.
//!
//! Its [`Display`](std::fmt::Display) form is a set of tables for a terminal; with the `serde`
//! feature it serialises (to JSON, for the endpoint).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::alloc::symbolize::Symbolizer;
use crate::alloc::RawSite;
use crate::engine::Engine;
use crate::judge::trend::{Sample, TrendWindow};
use crate::report::{AllocationSite, LeakKind, LeakReport, LeakState};
use crate::request::current;
use crate::stats::{MemoryAccounting, Stats, TaskGroup};
use crate::util::clock;

cfg_feature! {
    "serde",
    mod service;
    pub use self::service::{SnapshotBody, SnapshotService};
}
#[cfg(feature = "serde")]
mod html;
#[cfg(feature = "pprof")]
mod pprof;
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
    /// The detector's counters and gauges, as [`LeakDetector::stats`](crate::LeakDetector::stats)
    /// returns them: how memory is counted ([`Stats::memory`]) and the figures of every route
    /// ([`Stats::routes`]) among them.
    pub stats: Stats,
    /// Tracked tasks still alive, grouped by route and spawn location, most tasks first.
    pub tasks: Vec<TaskGroup>,
    /// Groups left out past [`MAX_TASK_GROUPS`](Self::MAX_TASK_GROUPS).
    pub task_groups_omitted: usize,
    /// Every active report, grouped by route, kind and place (spawn or watch line, or the
    /// allocation site holding the most), most reports first: counted from the detector, so
    /// that no cap hides a route. At most [`MAX_REPORT_GROUPS`](Self::MAX_REPORT_GROUPS).
    pub report_groups: Vec<ReportGroup>,
    /// Groups left out past [`MAX_REPORT_GROUPS`](Self::MAX_REPORT_GROUPS) (the smallest ones).
    pub report_groups_omitted: usize,
    /// The active reports, as [`LeakDetector::leaks`](crate::LeakDetector::leaks) returns them
    /// (await traces included where there are some), oldest first: examples, at most
    /// [`MAX_REPORTS`](Self::MAX_REPORTS); [`report_groups`](Self::report_groups) counts them
    /// all.
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
    /// The most groups of reports a snapshot lists.
    pub const MAX_REPORT_GROUPS: usize = 256;
    /// The most groups of tasks a snapshot lists.
    pub const MAX_TASK_GROUPS: usize = 256;
    /// The most routes whose allocation sites a snapshot lists.
    pub const MAX_SITE_ROUTES: usize = 32;
}

/// Active reports of one route and kind from one place, in [`Snapshot::report_groups`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ReportGroup {
    /// The route template of the requests the reports are about.
    pub route: String,
    /// What leaked.
    pub kind: LeakKind,
    /// Where: the spawn or watch line (`file:line`), or for retained memory the allocation
    /// site holding the most (when allocation sites are on).
    pub place: Option<String>,
    /// How many active reports the group has.
    pub count: u64,
    /// Of those, how many are confirmed (the rest are suspected).
    pub confirmed: u64,
    /// When the group's oldest report was made (Unix milliseconds in JSON).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::unix_millis"))]
    pub first_detected: SystemTime,
    /// When its newest report was made.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::unix_millis"))]
    pub last_detected: SystemTime,
    /// One of its reports (the oldest).
    pub example: LeakReport,
}

/// What a snapshot is narrowed to (`?route=` and `?kind=` of the snapshot service): its
/// reports, groups, routes and tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Only {
    pub(crate) route: Option<String>,
    pub(crate) kind: Option<LeakKind>,
}

impl Only {
    fn report(&self, report: &LeakReport) -> bool {
        self.route.as_ref().is_none_or(|r| *r == report.route)
            && self.kind.is_none_or(|k| k == report.kind)
    }

    fn route(&self, route: &str) -> bool {
        self.route.as_ref().is_none_or(|r| r == route)
    }
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
    /// Every sample of the window, oldest first, one per trend interval.
    pub series: Vec<TrendSample>,
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
    pub runtime_tasks: Option<u64>,
    /// Requests in flight.
    pub in_flight: u64,
}

impl From<Sample> for TrendSample {
    fn from(sample: Sample) -> Self {
        TrendSample {
            heap_bytes: sample.heap_bytes,
            runtime_tasks: sample.runtime_tasks,
            in_flight: sample.in_flight,
        }
    }
}

/// Takes a snapshot of `engine`, narrowed to `only`. Whatever it allocates is never charged to
/// a request.
pub(crate) fn take(engine: &Engine, only: &Only) -> Snapshot {
    current::outside(|| collect(engine, only))
}

fn collect(engine: &Engine, only: &Only) -> Snapshot {
    let now = Instant::now();
    let mut stats = engine.stats();
    stats.routes.retain(|r| only.route(&r.route));
    let mut tasks = engine.task_groups(now);
    tasks.retain(|t| only.route(&t.route));
    let (tasks, task_groups_omitted) = truncated(tasks, Snapshot::MAX_TASK_GROUPS);
    let sites_accounting = engine.sites_accounting();
    let all = engine.leaks();
    let trend = trend(engine.trend_window(), &all);
    let reports: Vec<LeakReport> = all.into_iter().filter(|r| only.report(r)).collect();
    let (report_groups, report_groups_omitted) =
        truncated(report_groups(&reports), Snapshot::MAX_REPORT_GROUPS);
    let (reports, reports_omitted) = truncated(reports, Snapshot::MAX_REPORTS);
    Snapshot {
        taken_at: clock::wall(now),
        stats,
        tasks,
        task_groups_omitted,
        report_groups,
        report_groups_omitted,
        reports,
        reports_omitted,
        sites: if sites_accounting.is_tracked() {
            sites(engine)
        } else {
            Vec::new()
        },
        sites_accounting,
        trend,
    }
}

/// `reports` (ordered by id) grouped by route, kind and place, the largest groups first.
fn report_groups(reports: &[LeakReport]) -> Vec<ReportGroup> {
    let mut groups: HashMap<(&str, LeakKind, Option<String>), ReportGroup> = HashMap::new();
    for report in reports {
        let place = match (&report.location, report.sites.first()) {
            (Some(location), _) => Some(location.to_string()),
            (None, Some(site)) => Some(match (&site.file, site.line) {
                (Some(file), Some(line)) => format!("{file}:{line}"),
                _ => site.function.clone(),
            }),
            (None, None) => None,
        };
        let group = groups
            .entry((&report.route, report.kind, place.clone()))
            .or_insert_with(|| ReportGroup {
                route: report.route.clone(),
                kind: report.kind,
                place,
                count: 0,
                confirmed: 0,
                first_detected: report.detected_at,
                last_detected: report.detected_at,
                example: report.clone(),
            });
        group.count += 1;
        group.confirmed += u64::from(report.state == LeakState::Confirmed);
        group.first_detected = group.first_detected.min(report.detected_at);
        group.last_detected = group.last_detected.max(report.detected_at);
    }
    let mut groups: Vec<ReportGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        (b.count, &a.route, a.kind, &a.place).cmp(&(a.count, &b.route, b.kind, &b.place))
    });
    groups
}

/// A place as a person reads it: a file in cargo's registry from the crate's own directory on
/// (`tokio-1.54.1/src/runtime/task/core.rs:261`), one in cargo's git checkouts from the
/// checkout's directory on, anything else as it is.
pub(crate) fn short_place(place: &str) -> &str {
    if let Some(at) = place.find("/registry/src/") {
        let rest = &place[at + "/registry/src/".len()..];
        // Past the registry index's directory.
        if let Some(slash) = rest.find('/') {
            return &rest[slash + 1..];
        }
    }
    if let Some(at) = place.find("/git/checkouts/") {
        return &place[at + "/git/checkouts/".len()..];
    }
    place
}

/// The first `max` items, and how many were left out.
fn truncated<T>(mut items: Vec<T>, max: usize) -> (Vec<T>, usize) {
    let omitted = items.len().saturating_sub(max);
    items.truncate(max);
    (items, omitted)
}

/// The routes' top allocation sites, resolved to source lines.
fn sites(engine: &Engine) -> Vec<RouteSites> {
    let mut raw = engine.top_sites(LeakReport::MAX_SITES);
    let held = |top: &[RawSite]| top.iter().map(|s| s.bytes).sum::<u64>();
    raw.sort_by_key(|(_, top)| std::cmp::Reverse(held(top)));
    raw.truncate(Snapshot::MAX_SITE_ROUTES);
    let mut symbols = Symbolizer::default();
    raw.into_iter()
        .map(|(route, top)| RouteSites {
            route: route.to_string(),
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
        series: window.series.iter().map(|&s| s.into()).collect(),
        latest: window.latest.map(|(_, s)| s.into()),
        heap_growth: state_of(LeakKind::HeapGrowth),
        task_growth: state_of(LeakKind::TaskGrowth),
    }
}

#[cfg(test)]
mod tests {
    use super::short_place;

    #[test]
    fn places_in_dependencies_are_named_from_their_crate() {
        let registry = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/\
                        src/runtime/task/core.rs:261";
        assert_eq!(
            short_place(registry),
            "tokio-1.54.1/src/runtime/task/core.rs:261"
        );
        let git = "/home/u/.cargo/git/checkouts/hyper-0a1b2c/5d6e7f/src/proto/h1/io.rs:10";
        assert_eq!(
            short_place(git),
            "hyper-0a1b2c/5d6e7f/src/proto/h1/io.rs:10"
        );
        assert_eq!(short_place("src/main.rs:7"), "src/main.rs:7");
    }

    #[test]
    fn an_empty_detector_has_an_empty_snapshot() {
        let detector = crate::LeakDetector::builder().build().unwrap();
        let snapshot = detector.snapshot();
        assert!(snapshot.stats.routes.is_empty() && snapshot.tasks.is_empty());
        assert_eq!(
            (snapshot.reports_omitted, snapshot.task_groups_omitted),
            (0, 0)
        );
        let text = snapshot.to_string();
        assert!(
            text.contains("ROUTE") && text.contains("reports (0)"),
            "{text}"
        );
    }
}
