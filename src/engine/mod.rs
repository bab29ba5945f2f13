//! The engine: the state a detector, its layers and its sweeper share, and what happens to it
//! when a request opens and at every sweep.
//!
//! A request asks the engine for a scope ([`Engine::open_scope`]); everything else on the
//! request's path goes to the scope and the registry. A sweep ([`Engine::sweep`]) runs the
//! judges over the registry, records the reports and hands them to the sinks.

#[cfg(leakwatch_taskdump)] // set by the build script
pub(crate) mod dump;
pub(crate) mod stats;
pub(crate) mod sweeper;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use self::stats::{KindCounts, RouteMemoryStats, Stats};
use crate::alloc::{self, SlotGuard};
use crate::config::Config;
use crate::engine::sweeper::Sweeper;
use crate::judge::memory::MemoryJudge;
use crate::judge::objects;
use crate::judge::trend::{Trend, TrendWindow};
use crate::registry::{Registry, TrackedObject};
use crate::report::ReportSink;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::id::{self, RequestId};
use crate::request::liveness::Liveness;
use crate::request::route::{self, Interner, RouteInfo, RoutePolicy};
use crate::request::scope::{self, RequestHead, Scope, UpstreamCall};
use crate::request::trace;
use crate::util::clock;
use crate::util::sync::lock;

/// How many one-shot findings ([`LeakKind::UnconsumedBody`]) are remembered.
pub(crate) const FINDINGS_CAPACITY: usize = 1024;

/// The state shared by every handle on one detector.
pub(crate) struct Engine {
    pub(crate) config: Config,
    registry: Arc<Registry>,
    routes: Interner,
    /// The `TrackingAllocator` is the global allocator: requests' memory is counted.
    memory_tracked: bool,
    /// The prefix of the request ids this detector generates.
    id_prefix: u32,
    /// The judges' own state; locked for their part of a sweep.
    judges: Mutex<Judges>,
    /// Held for a whole sweep, so that sweeps run (and deliver) one at a time, in order.
    sweeping: Mutex<()>,
    sinks: Vec<Box<dyn ReportSink>>,
    counters: Counters,
    /// Await traces of orphan tasks, from task dumps (where tokio can take them).
    #[cfg(leakwatch_taskdump)]
    dumps: crate::engine::dump::TaskDumps,
    pub(crate) sweeper: Sweeper,
}

/// What the judges keep between sweeps.
struct Judges {
    memory: MemoryJudge,
    trend: Trend,
    /// The most recent one-shot findings, oldest first ([`FINDINGS_CAPACITY`] at most).
    findings: VecDeque<LeakReport>,
}

/// Totals since the detector was built.
#[derive(Default)]
struct Counters {
    sweeps: AtomicU64,
    confirmed: [AtomicU64; LeakKind::COUNT],
    released: AtomicU64,
    sink_panics: AtomicU64,
}

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
    /// Builds the engine and starts its sweeper thread.
    pub(crate) fn start(config: Config, sinks: Vec<Box<dyn ReportSink>>) -> Arc<Engine> {
        clock::wall(Instant::now()); // fixes the wall-clock epoch before any request
        let memory_tracked = alloc::is_installed();
        let registry = Registry::new(config.registry_capacity);
        let policy = RoutePolicy {
            ignored: config.ignored_routes.clone(),
            streaming: config.streaming_routes.clone(),
        };
        let trend = Trend::new(config.trend.clone(), config.confirm_sweeps, &registry);
        let (sweeper, stopped) = Sweeper::new();
        let interval = config.sweep_interval;
        let engine = Arc::new(Engine {
            config,
            registry,
            routes: Interner::new(memory_tracked, policy),
            memory_tracked,
            id_prefix: id::random_prefix(),
            judges: Mutex::new(Judges {
                memory: MemoryJudge::default(),
                trend,
                findings: VecDeque::new(),
            }),
            sweeping: Mutex::new(()),
            sinks,
            counters: Counters::default(),
            #[cfg(leakwatch_taskdump)]
            dumps: Default::default(),
            sweeper,
        });
        let weak: Weak<Engine> = Arc::downgrade(&engine);
        engine.sweeper.start(interval, stopped, move || {
            weak.upgrade().map(|engine| engine.sweep()).is_some()
        });
        engine
    }

    /// Opens a scope for a request, or returns `None` when its route is ignored or the registry
    /// is full.
    pub(crate) fn open_scope<B>(&self, request: &http::Request<B>) -> Option<Arc<Scope>> {
        // Nothing the detector allocates here is charged to an enclosing request.
        scope::outside(|| {
            let route_fn = self.config.route_fn.as_ref().map(|f| &*f.0);
            let (route, info) = route::resolve(request, route_fn, &self.routes);
            if info.ignored {
                return None;
            }
            let id = self.registry.next_id();
            let memory = (self.memory_tracked && info.slot != 0)
                .then(|| SlotGuard::acquire(info.slot))
                .flatten();
            let found = id::scan(request.headers());
            let head = RequestHead {
                request_id: RequestId::from_header(found.request_id, self.id_prefix, id),
                method: request.method().clone(),
                route,
                info,
                trace: trace::capture(request.headers(), found.traceparent),
                upstream: None,
            };
            self.registry.open(id, head, memory)
        })
    }

    /// Opens the scope of an outgoing call, or returns `None` when the registry is full.
    ///
    /// Made inside a request (the current scope), the call is that request's: its scope closes
    /// when the request does, and its reports carry the request's route, method, request id and
    /// trace. Made outside any request, its route is [`route::CLIENT`] and it closes when the
    /// caller's [`ScopeGuard`](crate::request::scope::ScopeGuard) on it is dropped.
    pub(crate) fn open_call_scope<B>(&self, request: &http::Request<B>) -> Option<Arc<Scope>> {
        // A call made from within another call's scope belongs to the request that made that.
        let parent = scope::current().and_then(|current| current.request().cloned());
        scope::outside(|| {
            let id = self.registry.next_id();
            let uri = request.uri();
            let host: Box<str> = match (uri.host(), uri.port_u16()) {
                (Some(host), Some(port)) => format!("{host}:{port}").into(),
                (Some(host), None) => host.into(),
                (None, _) => "<unknown>".into(),
            };
            let (request_id, method, route, trace) = match &parent {
                Some(p) => (
                    p.request_id.clone(),
                    p.method.clone(),
                    p.route.clone(),
                    p.trace,
                ),
                None => (
                    RequestId::Generated {
                        prefix: self.id_prefix,
                        number: id,
                    },
                    request.method().clone(),
                    route::Route::Static(route::CLIENT),
                    None,
                ),
            };
            let head = RequestHead {
                request_id,
                method,
                route,
                // A call is as long as its request, which is judged on its own.
                info: RouteInfo {
                    streaming: true,
                    ..RouteInfo::NONE
                },
                trace,
                upstream: Some(Box::new(UpstreamCall {
                    method: request.method().clone(),
                    host,
                    parent,
                })),
            };
            self.registry.open_call(id, head)
        })
    }

    /// One sweep: judge everything tracked, record and deliver the state changes, and return
    /// them.
    pub(crate) fn sweep(&self) -> Vec<LeakReport> {
        let _one_at_a_time = lock(&self.sweeping);
        let now = Instant::now();
        let config = &self.config;
        let mut reports = Vec::new();
        self.registry.sweep_objects(|id, object| {
            objects::judge_object(id, object, now, config, &mut reports)
        });
        let mut open = 0;
        // What requests not judged yet hold, by route slot.
        let mut unjudged: HashMap<u32, u64> = HashMap::new();
        let released = self.registry.sweep_scopes(|scope, lifecycle| {
            open += u64::from(scope.is_open() && !scope.is_upstream_call());
            let keep = objects::judge_scope(scope, lifecycle, now, config, &mut reports);
            if let Some(usage) = scope.usage().filter(|_| keep) {
                *unjudged.entry(scope.route_slot()).or_default() += usage.retained_bytes();
            }
            keep
        });
        let mut guard = lock(&self.judges);
        let judges = &mut *guard;
        let (counted, mut finished): (Vec<_>, Vec<_>) = released
            .into_iter()
            .partition(|scope| scope.memory.is_some());
        let returned = judges
            .memory
            .judge_requests(counted, config, &self.registry);
        finished.extend(returned);
        judges
            .memory
            .judge_routes(now, config, &unjudged, &mut reports);
        let live_heap = || self.live_heap_bytes();
        judges.trend.sample(now, live_heap, open, &mut reports);
        for finding in reports
            .iter()
            .filter(|r| r.kind == LeakKind::UnconsumedBody)
        {
            if judges.findings.len() == FINDINGS_CAPACITY {
                judges.findings.pop_front();
            }
            judges.findings.push_back(finding.clone());
        }
        drop(guard);
        self.registry.recycle(finished);
        #[cfg(leakwatch_taskdump)]
        self.dumps.after_sweep(&self.registry, &reports);
        self.count(&reports);
        self.deliver(&reports);
        reports
    }

    fn count(&self, reports: &[LeakReport]) {
        let counters = &self.counters;
        counters.sweeps.fetch_add(1, Ordering::Relaxed);
        for report in reports {
            match report.state {
                LeakState::Confirmed => {
                    counters.confirmed[report.kind.index()].fetch_add(1, Ordering::Relaxed);
                }
                LeakState::Released => {
                    counters.released.fetch_add(1, Ordering::Relaxed);
                }
                LeakState::Suspected => {}
            }
        }
    }

    fn deliver(&self, reports: &[LeakReport]) {
        for report in reports {
            for sink in &self.sinks {
                // A panicking sink must not take the sweeper down with it.
                if catch_unwind(AssertUnwindSafe(|| sink.report(report))).is_err() {
                    self.counters.sink_panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

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
            .chain(judges.trend.active_reports());
        made.chain(alerts)
            .for_each(|report| f(Finding::Made(report)));
    }

    /// Reports for the findings [`for_each_finding`](Self::for_each_finding) visits, ordered by
    /// id, and how many are objects.
    fn reports(
        &self,
        object_state: impl Fn(&TrackedObject) -> Option<LeakState>,
    ) -> (Vec<LeakReport>, usize) {
        let now = Instant::now();
        let mut reports = Vec::new();
        let mut objects = 0;
        self.for_each_finding(object_state, |finding| {
            objects += usize::from(matches!(finding, Finding::Object(..)));
            reports.push(finding.report(now, &self.config));
        });
        reports.sort_by_key(|r| r.id);
        (reports, objects)
    }

    /// The active reports, ordered by id.
    pub(crate) fn leaks(&self) -> Vec<LeakReport> {
        self.reports(reported_active).0
    }

    /// Everything `assert_no_leaks` would complain about now: every object of a closed scope
    /// that is still alive (grace or not), active stuck requests, one-shot findings and standing
    /// alerts. The flag says whether any of it is an object that may still go away.
    pub(crate) fn unsettled(&self) -> (Vec<LeakReport>, bool) {
        let (reports, objects) = self.reports(|object| {
            (!object.scope.is_open() && object.liveness.is_alive())
                .then(|| object.lifecycle.reported().unwrap_or(LeakState::Suspected))
        });
        (reports, objects > 0)
    }

    /// Active reports by kind, counted without building them.
    pub(crate) fn active_counts(&self) -> KindCounts {
        let mut counts = KindCounts::default();
        self.for_each_finding(reported_active, |finding| counts.add(finding.kind(), 1));
        counts
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

    /// Requests finished and let go of since the detector was built, by route template.
    pub(crate) fn finished_requests(&self) -> Vec<(String, u64)> {
        let counts = self.registry.finished_requests().into_iter().enumerate();
        counts
            .filter(|&(_, n)| n > 0)
            .filter_map(|(index, n)| Some((self.routes.name_at(index as u32)?.to_string(), n)))
            .collect()
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

    /// The `TrackingAllocator` is the global allocator.
    pub(crate) fn memory_tracked(&self) -> bool {
        self.memory_tracked
    }

    /// The `TrackingAllocator` is the global allocator, in sampled mode: byte figures are
    /// estimates.
    pub(crate) fn memory_estimated(&self) -> bool {
        self.memory_tracked && alloc::sampling_mean().is_some()
    }

    /// Counters and gauges of the detector's own state.
    pub(crate) fn stats(&self) -> Stats {
        let counters = &self.counters;
        // Each lock is taken and released on its own (a guard in the struct expression below
        // would live to its end).
        let judged: Vec<_> = lock(&self.judges).memory.routes().collect();
        let mut routes: Vec<RouteMemoryStats> = judged
            .into_iter()
            .map(|route| {
                let (bytes, blocks) = alloc::route_live(route.slot);
                RouteMemoryStats {
                    route: (self.routes.name_of(route.slot))
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    live_bytes: bytes.max(0) as u64,
                    live_blocks: blocks.max(0) as u64,
                    judged_requests: route.judged,
                    witnesses: route.witnesses,
                }
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        let alive_tasks = self.alive_tasks();
        let active = self.active_counts();
        let mut stats = Stats {
            open_scopes: self.registry.open_scopes(),
            registry_entries: self.registry.len(),
            registry_capacity: self.registry.capacity(),
            skipped: self.registry.skipped(),
            sweeps: counters.sweeps.load(Ordering::Relaxed),
            active,
            released_total: counters.released.load(Ordering::Relaxed),
            sink_panics: counters.sink_panics.load(Ordering::Relaxed),
            memory_tracked: self.memory_tracked,
            memory_estimated: self.memory_estimated(),
            live_heap_bytes: self.live_heap_bytes(),
            untracked_scopes: if self.memory_tracked {
                alloc::slots_exhausted()
            } else {
                0
            },
            routes,
            alive_tasks,
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
