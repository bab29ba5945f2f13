//! The engine's read side: the one place the detector's state is read.
//!
//! [`Stats`], the snapshot, the CI guard, the OpenTelemetry gauges and `assert_no_leaks` all
//! read through the methods here: the active reports and what is still unsettled, the one
//! settle loop, how memory is counted, and the per-route figures ([`Engine::routes`]). None of
//! them sweeps except [`Engine::settle`]; none runs on a request's path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Engine;
use crate::alloc::{self, RawSite};
use crate::judge::objects;
use crate::judge::trend::TrendWindow;
use crate::report::{render_list, LeakKind, LeakReport, LeakState, SourceLocation};
use crate::request::liveness::Liveness;
use crate::stats::{KindCounts, MemoryAccounting, RouteStats, Stats, TaskGroup, Uncounted};
use crate::util::sync::lock;

/// How long [`Engine::settle`] waits between sweeps.
const SETTLE_RETRY: Duration = Duration::from_millis(5);

impl Engine {
    /// Calls `f` with every active report, as its judge made it: those of tracked objects and
    /// stuck requests, the remembered one-shot findings and the standing alerts. Nothing is
    /// rebuilt: a report's `detected_at` is when the sweep made it.
    fn for_each_report(&self, mut f: impl FnMut(&LeakReport)) {
        lock(&self.active).iter().for_each(&mut f);
        let judges = lock(&self.judges);
        let made = judges.findings.iter();
        let alerts = judges
            .memory
            .active_reports()
            .chain(judges.tasks.active_reports())
            .chain(judges.trend.active_reports());
        made.chain(alerts).for_each(f);
    }

    /// The active reports `keep` keeps, ordered by id.
    fn reports(&self, keep: impl Fn(&LeakReport) -> bool) -> Vec<LeakReport> {
        let mut reports = Vec::new();
        self.for_each_report(|report| {
            if keep(report) {
                reports.push(report.clone());
            }
        });
        reports.sort_by_key(|r| r.id);
        reports
    }

    /// The active reports, ordered by id.
    pub(crate) fn leaks(&self) -> Vec<LeakReport> {
        self.reports(|_| true)
    }

    /// Active reports by kind, counted without copying them.
    pub(crate) fn active_counts(&self) -> KindCounts {
        let mut counts = KindCounts::default();
        self.for_each_report(|report| counts.add(report.kind, 1));
        counts
    }

    /// Sweeps until nothing `keep` keeps is left that may still go away by itself — an object
    /// (task, body, watched object) of a finished request still alive — or until `timeout`
    /// passes; returns what is left of interest: the active reports, and a `Suspected` report,
    /// made now, of every such object not reported yet (still in its grace period).
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
            let (reports, objects) = self.left(&keep);
            if objects == 0 || Instant::now() >= deadline {
                return reports;
            }
            tokio::time::sleep(SETTLE_RETRY).await;
        }
    }

    /// [`settle`](Self::settle)s, then says what is left, in the message of a failed
    /// assertion: what `keep` keeps of the reports left by finished `what` (`"requests"`, a
    /// unit's name). `memory` says how memory was judged, when the routes' rule does not
    /// (a test's units).
    pub(crate) async fn check(
        &self,
        timeout: Duration,
        keep: impl Fn(&LeakReport) -> bool,
        what: &str,
        memory: Option<String>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let reports = self.settle(timeout, keep).await;
        if reports.is_empty() {
            return Ok(());
        }
        Err(format!(
            "leakwatch: {} leak(s) outlived their {what} (after {} ms of waiting for them to \
             end, of up to {} ms):\n{}{}",
            reports.len(),
            started.elapsed().as_millis(),
            timeout.as_millis(),
            render_list(&reports),
            self.coverage(what, memory)
        ))
    }

    /// What [`settle`](Self::settle) returns, ordered by id, and how many objects of finished
    /// requests that `keep` keeps are still alive.
    fn left(&self, keep: &impl Fn(&LeakReport) -> bool) -> (Vec<LeakReport>, usize) {
        let mut reports = self.reports(keep);
        let now = Instant::now();
        let mut objects = 0;
        let active = lock(&self.active);
        self.registry.for_each_object(|id, object| {
            let finished = !object.scope.is_open() && !object.judged_by_growth();
            if !finished || !object.liveness.is_alive() {
                return;
            }
            match active.get(id) {
                Some(report) => objects += usize::from(keep(report)),
                None => {
                    let report = objects::object_report(id, object, LeakState::Suspected, now);
                    if keep(&report) {
                        objects += 1;
                        reports.push(report);
                    }
                }
            }
        });
        drop(active);
        reports.sort_by_key(|r| r.id);
        (reports, objects)
    }

    /// What a test assertion of `what` could see with this set-up, for its failure message:
    /// which tasks are tracked, and whether and for which routes memory was judged (or
    /// `memory`, said by the caller).
    pub(crate) fn coverage(&self, what: &str, memory: Option<String>) -> String {
        let plain = match (self.memory_tracked, cfg!(tokio_unstable)) {
            (true, _) => {
                "plain tokio::spawn seen through its task cell; one spawned inside another task \
                 only on a runtime set up with instrument_runtime"
            }
            (false, true) => {
                "plain tokio::spawn only on a runtime set up with instrument_runtime, or with \
                 leakwatch::TrackingAllocator as the global allocator"
            }
            (false, false) => {
                "plain tokio::spawn not tracked: install leakwatch::TrackingAllocator as the \
                 global allocator"
            }
        };
        let mut text = format!(
            "checked: tasks spawned in {what} with leakwatch::spawn or scoped ({plain}); \
             request and upstream bodies; watched objects; stuck requests; "
        );
        let window = self.config.memory_window;
        match (self.memory_accounting(), memory) {
            (MemoryAccounting::Untracked, _) => text.push_str(
                "memory not tracked (install leakwatch::TrackingAllocator as the global \
                 allocator)",
            ),
            (_, Some(said)) => text.push_str(&said),
            (accounting, None) => {
                let short: Vec<String> = self
                    .routes()
                    .into_iter()
                    .filter(|r| r.finished_requests > 0 && r.finished_requests <= window)
                    .map(|r| format!("{} ({} finished)", r.route, r.finished_requests))
                    .collect();
                text.push_str(&format!(
                    "memory ({}) judged for routes with more than memory_window = {window} \
                     finished requests",
                    accounting.as_str()
                ));
                if !short.is_empty() {
                    let listed = short.len().min(5);
                    let more = short.len() - listed;
                    text.push_str(&format!("; not judged: {}", short[..listed].join(", ")));
                    if more > 0 {
                        text.push_str(&format!(" and {more} more"));
                    }
                }
            }
        }
        text.push('\n');
        text
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
    pub(crate) fn runtime_tasks(&self) -> Option<u64> {
        lock(&self.judges)
            .trend
            .latest()
            .and_then(|sample| sample.runtime_tasks)
    }

    /// Scopes and objects the registry holds.
    pub(crate) fn registry_entries(&self) -> usize {
        self.registry.len()
    }

    /// Tracked tasks still alive, grouped by route and spawn location, most tasks first: the
    /// one count of live tasks (the per-route figures add these up).
    pub(crate) fn task_groups(&self, now: Instant) -> Vec<TaskGroup> {
        // By route, then spawn location: a route's name is copied once, not once per task (a
        // registry can hold 100 000 of them).
        type ByLocation = HashMap<Option<SourceLocation>, TaskGroup>;
        let mut groups: HashMap<Box<str>, ByLocation> = HashMap::new();
        self.registry.for_each_object(|_, object| {
            if !object.liveness.is_task() || !object.liveness.is_alive() {
                return;
            }
            let location = object.location;
            let route = object.scope.route.as_str();
            if !groups.contains_key(route) {
                groups.insert(route.into(), ByLocation::new());
            }
            let Some(by_location) = groups.get_mut(route) else {
                return;
            };
            let group = by_location.entry(location).or_insert_with(|| TaskGroup {
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
        let mut groups: Vec<TaskGroup> = groups
            .into_values()
            .flat_map(HashMap::into_values)
            .collect();
        groups.sort_by(|a, b| {
            (b.alive, &a.route, a.location.map(|l| (l.file, l.line))).cmp(&(
                a.alive,
                &b.route,
                b.location.map(|l| (l.file, l.line)),
            ))
        });
        groups
    }

    /// The trend sampler's window: how many samples, and the oldest and newest with their
    /// times.
    pub(crate) fn trend_window(&self) -> TrendWindow {
        lock(&self.judges).trend.window()
    }

    /// How allocation sites count bytes: `Untracked` when memory is not counted or sites are
    /// off, `Exact` when every allocation is recorded, else `Estimated`.
    pub(crate) fn sites_accounting(&self) -> MemoryAccounting {
        match self.memory_accounting() {
            MemoryAccounting::Untracked => MemoryAccounting::Untracked,
            _ if !alloc::sites_enabled() => MemoryAccounting::Untracked,
            MemoryAccounting::Exact if alloc::sites_exact() => MemoryAccounting::Exact,
            _ => MemoryAccounting::Estimated,
        }
    }

    /// The bytes one recorded allocation stands for: 1 when sites are exact, else the mean of
    /// the sampling.
    #[cfg(feature = "pprof")]
    pub(crate) fn sites_period(&self) -> u64 {
        match self.sites_accounting() {
            MemoryAccounting::Exact => 1,
            _ => alloc::sampling_mean().unwrap_or_else(alloc::sites_mean),
        }
    }

    /// The `max` allocation stacks holding the most live bytes of each route that has any.
    pub(crate) fn top_sites(&self, max: usize) -> Vec<(Arc<str>, Vec<RawSite>)> {
        self.routes
            .slots()
            .into_iter()
            .map(|(slot, name)| (name, alloc::top_sites(slot, max)))
            .filter(|(_, top)| !top.is_empty())
            .collect()
    }

    /// Every recorded allocation stack still holding memory, with its route.
    #[cfg(feature = "pprof")]
    pub(crate) fn live_sites(&self) -> Vec<(Arc<str>, RawSite)> {
        let names: HashMap<u32, Arc<str>> = self.routes.slots().into_iter().collect();
        alloc::live_sites()
            .into_iter()
            .filter_map(|(slot, site)| Some((names.get(&slot)?.clone(), site)))
            .collect()
    }

    /// The label a profile's sample gives the name of a route or unit: `unit` for a unit of
    /// work's, `route` otherwise.
    #[cfg(feature = "pprof")]
    pub(crate) fn name_label(&self, name: &str) -> &'static str {
        match self.routes.is_unit(name) {
            true => "unit",
            false => "route",
        }
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
        for group in self.task_groups(now) {
            route_entry(&mut routes, &group.route, tracked).tracked_tasks += group.alive;
        }
        self.for_each_report(|report| {
            route_entry(&mut routes, &report.route, tracked).active_reports += 1;
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
        let mut routes: Vec<RouteStats> = routes.into_values().collect();
        for route in &mut routes {
            route.unit = self.routes.is_unit(&route.route);
        }
        routes
    }

    /// What went uncounted since start-up: entries the registry had no room for, requests
    /// without memory counting, allocation sites and samples the allocator could not record.
    pub(crate) fn uncounted(&self) -> Uncounted {
        Uncounted {
            registry_entries: self.registry.skipped(),
            requests: if self.memory_tracked {
                alloc::slots_exhausted()
            } else {
                0
            },
            allocation_sites: alloc::sites_dropped(),
            samples: alloc::samples_unserved(),
            task_cells: alloc::cells_dropped(),
        }
    }

    /// Counters and gauges of the detector's own state.
    pub(crate) fn stats(&self) -> Stats {
        let counters = &self.counters;
        let mut stats = Stats {
            requests_in_flight: self.requests_in_flight() as u64,
            registry_entries: self.registry.len(),
            registry_capacity: self.registry.capacity(),
            uncounted: self.uncounted(),
            sweeps: counters.sweeps.load(Ordering::Relaxed),
            active: self.active_counts(),
            released_total: counters.released.load(Ordering::Relaxed),
            sink_panics: counters.sink_panics.load(Ordering::Relaxed),
            memory: self.memory_accounting(),
            live_heap_bytes: self.live_heap_bytes(),
            memory_slots_in_use: if self.memory_tracked {
                alloc::slots_in_use()
            } else {
                0
            },
            routes: self.routes(),
            runtime_tasks: self.runtime_tasks(),
            sampled_region_bytes: alloc::sampled_region_bytes(),
            ..Stats::default()
        };
        for &kind in LeakKind::ALL {
            let confirmed = counters.confirmed[kind.index()].load(Ordering::Relaxed);
            stats.confirmed_total.add(kind, confirmed);
        }
        self.registry
            .for_each_object(|_, object| match object.liveness {
                Liveness::Task(_) | Liveness::Cell(_) => stats.tracked_tasks += 1,
                Liveness::Body(_) => stats.tracked_bodies += 1,
                Liveness::Object(_) => stats.watched_objects += 1,
            });
        stats
    }
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
