//! The engine's read side: the one place the detector's state is read.
//!
//! [`Stats`], the snapshot, the CI guard, the OpenTelemetry gauges and `assert_no_leaks` all
//! read through the methods here: the active reports and what is still unsettled, the one
//! settle loop, how memory is counted, and the per-route figures ([`Engine::routes`]). None of
//! them sweeps except [`Engine::settle`]; none runs on a request's path.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::warnings::Uncounted;
use super::Engine;
use crate::alloc;
use crate::config::Config;
use crate::judge::objects;
use crate::judge::trend::TrendWindow;
use crate::registry::{Registry, TrackedObject};
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::liveness::Liveness;
use crate::request::scope::Scope;
use crate::stats::{KindCounts, MemoryAccounting, RouteStats, Stats};
use crate::util::sync::lock;

/// How long [`Engine::settle`] waits between sweeps.
const SETTLE_RETRY: Duration = Duration::from_millis(5);

/// Something active that a report can be made of.
enum Finding<'a> {
    Object(u64, &'a TrackedObject, LeakState),
    Stuck(&'a Scope, LeakState),
    Made(&'a LeakReport),
}

impl Finding<'_> {
    fn kind(&self) -> LeakKind {
        match self {
            Finding::Object(_, object, _) => object.liveness.leak_kind(),
            Finding::Stuck(..) => LeakKind::StuckRequest,
            Finding::Made(report) => report.kind,
        }
    }

    fn report(&self, now: Instant, config: &Config) -> LeakReport {
        match *self {
            Finding::Object(id, object, state) => objects::object_report(id, object, state, now),
            Finding::Stuck(scope, state) => objects::stuck_report(scope, state, now, config),
            Finding::Made(report) => report.clone(),
        }
    }
}

impl Engine {
    /// Calls `f` with every active finding: the objects `object_state` gives a state, the
    /// stuck requests, the remembered one-shot findings and the standing alerts.
    fn for_each_finding(
        &self,
        object_state: impl Fn(&TrackedObject) -> Option<LeakState>,
        mut f: impl FnMut(Finding<'_>),
    ) {
        self.registry.for_each_object(|id, object| {
            if let Some(state) = object_state(object) {
                f(Finding::Object(id, object, state));
            }
        });
        self.registry.for_each_scope(|scope| {
            if let Some(state) = scope.stuck.load().reported().filter(|s| s.is_active()) {
                f(Finding::Stuck(scope, state));
            }
        });
        let judges = lock(&self.judges);
        let made = judges.findings.iter();
        let alerts = judges
            .memory
            .active_reports()
            .chain(judges.tasks.active_reports())
            .chain(judges.trend.active_reports());
        made.chain(alerts)
            .for_each(|report| f(Finding::Made(report)));
    }

    /// Reports for the findings [`for_each_finding`](Self::for_each_finding) visits that `keep`
    /// keeps, ordered by id, and how many of them are objects.
    fn reports(
        &self,
        object_state: impl Fn(&TrackedObject) -> Option<LeakState>,
        keep: impl Fn(&LeakReport) -> bool,
    ) -> (Vec<LeakReport>, usize) {
        let now = Instant::now();
        let mut reports = Vec::new();
        let mut objects = 0;
        self.for_each_finding(object_state, |finding| {
            let report = finding.report(now, &self.config);
            if keep(&report) {
                objects += usize::from(matches!(finding, Finding::Object(..)));
                reports.push(report);
            }
        });
        reports.sort_by_key(|r| r.id);
        (reports, objects)
    }

    /// The active reports, ordered by id.
    pub(crate) fn leaks(&self) -> Vec<LeakReport> {
        self.reports(reported_active, |_| true).0
    }

    /// Active reports by kind, counted without building them.
    pub(crate) fn active_counts(&self) -> KindCounts {
        let mut counts = KindCounts::default();
        self.for_each_finding(reported_active, |finding| counts.add(finding.kind(), 1));
        counts
    }

    /// Sweeps until nothing `keep` keeps is left that may still go away by itself — an object
    /// (task, body, watched object) of a finished request still alive — or until `timeout`
    /// passes; returns what is left of interest: every such object still alive (grace period
    /// or not), stuck requests, one-shot findings and standing alerts.
    ///
    /// goleak-style: a task that ends a few milliseconds after its response is not a leak. The
    /// one settle loop of the crate: `assert_no_leaks` and the CI guard both use it.
    pub(crate) async fn settle(
        &self,
        timeout: Duration,
        keep: impl Fn(&LeakReport) -> bool,
    ) -> Vec<LeakReport> {
        let deadline = Instant::now() + timeout;
        loop {
            self.sweep();
            let (reports, objects) = self.reports(
                |object| {
                    let finished = !object.scope.is_open() && !object.judged_by_growth();
                    (finished && object.liveness.is_alive())
                        .then(|| object.lifecycle.reported().unwrap_or(LeakState::Suspected))
                },
                &keep,
            );
            if objects == 0 || Instant::now() >= deadline {
                return reports;
            }
            tokio::time::sleep(SETTLE_RETRY).await;
        }
    }

    /// How the byte figures are counted.
    pub(crate) fn memory_accounting(&self) -> MemoryAccounting {
        match (self.memory_tracked, alloc::sampling_mean().is_some()) {
            (false, _) => MemoryAccounting::Untracked,
            (true, false) => MemoryAccounting::Exact,
            (true, true) => MemoryAccounting::Estimated,
        }
    }

    /// Requests in flight: their response has not finished.
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.registry.requests_in_flight()
    }

    /// The process's live heap bytes, when the allocator counts them.
    pub(crate) fn live_heap_bytes(&self) -> Option<u64> {
        self.memory_tracked
            .then(|| alloc::process_live_bytes().max(0) as u64)
    }

    /// The runtime's alive tasks at the last trend sample.
    pub(crate) fn alive_tasks(&self) -> Option<u64> {
        lock(&self.judges)
            .trend
            .latest()
            .and_then(|sample| sample.alive_tasks)
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The trend sampler's window: how many samples, and the oldest and newest with their
    /// times.
    pub(crate) fn trend_window(&self) -> TrendWindow {
        lock(&self.judges).trend.window()
    }

    /// Every route with an allocator route slot, with that slot.
    pub(crate) fn route_slots(&self) -> Vec<(u32, Arc<str>)> {
        self.routes.slots()
    }

    /// The figures of every route the detector has seen a request of, ordered by template: the
    /// one place that counts per-route figures.
    pub(crate) fn routes(&self) -> Vec<RouteStats> {
        let now = Instant::now();
        let tracked = self.memory_tracked;
        let mut routes: BTreeMap<Arc<str>, RouteStats> = BTreeMap::new();
        // What requests in flight hold: the rest of a route's live bytes is retained.
        let mut in_flight_bytes: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        self.registry.for_each_open_request(|scope| {
            let name = scope.route.as_str();
            let entry = route_entry(&mut routes, name, tracked);
            entry.requests_in_flight += 1;
            let age = now.saturating_duration_since(scope.opened_at);
            entry.oldest_in_flight = Some(entry.oldest_in_flight.map_or(age, |a| a.max(age)));
            if let Some(usage) = scope.usage() {
                *in_flight_bytes.entry(name.into()).or_default() += usage.retained_bytes();
            }
        });
        let finished = self.registry.finished_requests().into_iter().enumerate();
        for (index, n) in finished.filter(|&(_, n)| n > 0) {
            if let Some(name) = self.routes.name_at(index as u32) {
                route_entry(&mut routes, &name, tracked).finished_requests = n;
            }
        }
        let witnesses: Vec<_> = lock(&self.judges).memory.witnesses().collect();
        for (slot, witnesses) in witnesses {
            if let Some(name) = self.routes.name_of(slot) {
                route_entry(&mut routes, &name, tracked).witnesses = witnesses;
            }
        }
        self.registry.for_each_object(|_, object| {
            if matches!(object.liveness, Liveness::Task(_)) && object.liveness.is_alive() {
                route_entry(&mut routes, object.scope.route.as_str(), tracked).tasks_alive += 1;
            }
        });
        if tracked {
            for (slot, name) in self.routes.slots() {
                let (bytes, blocks) = alloc::route_live(slot);
                if bytes == 0 && blocks == 0 && !routes.contains_key(&name) {
                    continue;
                }
                let held = in_flight_bytes.get(&name).copied().unwrap_or(0);
                let entry = route_entry(&mut routes, &name, tracked);
                let bytes = bytes.max(0) as u64;
                entry.live_bytes = Some(bytes);
                entry.live_blocks = Some(blocks.max(0) as u64);
                entry.retained_bytes = Some(bytes.saturating_sub(held));
            }
        }
        routes.into_values().collect()
    }

    /// What went uncounted since start-up: requests without memory counting, entries the
    /// registry had no room for.
    pub(crate) fn uncounted(&self) -> Uncounted {
        Uncounted {
            untracked_requests: if self.memory_tracked {
                alloc::slots_exhausted()
            } else {
                0
            },
            skipped: self.registry.skipped(),
        }
    }

    /// Counters and gauges of the detector's own state.
    pub(crate) fn stats(&self) -> Stats {
        let counters = &self.counters;
        let mut stats = Stats {
            requests_in_flight: self.requests_in_flight(),
            registry_entries: self.registry.len(),
            registry_capacity: self.registry.capacity(),
            skipped: self.registry.skipped(),
            sweeps: counters.sweeps.load(Ordering::Relaxed),
            active: self.active_counts(),
            released_total: counters.released.load(Ordering::Relaxed),
            sink_panics: counters.sink_panics.load(Ordering::Relaxed),
            memory: self.memory_accounting(),
            live_heap_bytes: self.live_heap_bytes(),
            untracked_requests: self.uncounted().untracked_requests,
            memory_slots_in_use: if self.memory_tracked {
                alloc::slots_in_use()
            } else {
                0
            },
            routes: self.routes(),
            alive_tasks: self.alive_tasks(),
            sites_dropped: alloc::sites_dropped(),
            samples_unserved: alloc::samples_unserved(),
            sampled_region_bytes: alloc::sampled_region_bytes(),
            ..Stats::default()
        };
        for &kind in LeakKind::ALL {
            let confirmed = counters.confirmed[kind.index()].load(Ordering::Relaxed);
            stats.confirmed_total.add(kind, confirmed);
        }
        self.registry
            .for_each_object(|_, object| match object.liveness {
                Liveness::Task(_) => stats.tracked_tasks += 1,
                Liveness::Body(_) => stats.tracked_bodies += 1,
                Liveness::Object(_) => stats.watched_objects += 1,
            });
        stats
    }
}

/// The state of an object whose report is active.
fn reported_active(object: &TrackedObject) -> Option<LeakState> {
    object.lifecycle.reported().filter(|s| s.is_active())
}

/// The entry of the route `name`, added if new (with zero byte figures when memory is tracked).
fn route_entry<'a>(
    routes: &'a mut BTreeMap<Arc<str>, RouteStats>,
    name: &str,
    tracked: bool,
) -> &'a mut RouteStats {
    routes.entry(name.into()).or_insert_with(|| RouteStats {
        route: name.to_owned(),
        live_bytes: tracked.then_some(0),
        live_blocks: tracked.then_some(0),
        retained_bytes: tracked.then_some(0),
        ..RouteStats::default()
    })
}
