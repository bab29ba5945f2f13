//! The engine: the state a detector, its layers and its sweeper share, and what happens to it
//! when a request opens and at every sweep.
//!
//! A request asks the engine for a scope ([`Engine::open_scope`]); everything else on the
//! request's path goes to the scope and the registry. A sweep ([`Engine::sweep`]) runs the
//! judges over the registry, records the reports and hands them to the sinks.

#[cfg(leakwatch_taskdump)] // set by the build script
pub(crate) mod dump;
pub(crate) mod sweeper;
mod view;
mod warnings;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::alloc::{self, SlotGuard};
use crate::config::Config;
use crate::engine::sweeper::Sweeper;
use crate::judge::cells::CellReader;
use crate::judge::memory::{self, MemoryJudge};
use crate::judge::objects;
use crate::judge::tasks::{Census, TaskJudge};
use crate::judge::trend::Trend;
use crate::registry::Registry;
use crate::report::ReportSink;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::current;
use crate::request::id::{self, RequestId};
use crate::request::route::{self, Interner, RouteInfo, RoutePolicy};
use crate::request::scope::{RequestHead, Scope, UpstreamCall};
use crate::request::trace;
use crate::util::clock;
use crate::util::sync::lock;

use self::warnings::Warnings;

/// Each sweep looks at one in this many objects of requests still in flight (see
/// [`Engine::sweep`]): each, once every this many sweeps.
const CHECK_IN_FLIGHT_EVERY: u64 = 8;

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
    /// The active reports of tracked objects and stuck requests (shared with the task dumps,
    /// which add await traces to them). Never locked together with `judges`.
    active: Arc<Mutex<objects::Active>>,
    /// The requests that left orphan tasks, by route and spawn line (in the objects phase).
    lines: Mutex<objects::OrphanLines>,
    /// Reads the stacks of the task cells the allocator saw (in the objects phase).
    cells: Mutex<CellReader>,
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
    tasks: TaskJudge,
    trend: Trend,
    /// The most recent one-shot findings, oldest first ([`FINDINGS_CAPACITY`] at most).
    findings: VecDeque<LeakReport>,
    /// When what went uncounted was last warned about.
    warnings: Warnings,
}

/// What the objects phase of a sweep hands on.
#[derive(Default)]
struct Objects {
    /// The live tasks judged by growth.
    census: Census,
    /// The requests whose leftovers stand reported.
    reported: objects::Reported,
}

/// What the scopes phase of a sweep hands on.
#[derive(Default)]
struct Scopes {
    /// Scopes the registry let go of.
    released: Vec<Arc<Scope>>,
    /// Requests in flight (outgoing calls left out).
    open: u64,
    /// What requests not judged yet hold, by route slot.
    unjudged: HashMap<u32, u64>,
}

/// Totals since the detector was built.
#[derive(Default)]
struct Counters {
    sweeps: AtomicU64,
    confirmed: [AtomicU64; LeakKind::COUNT],
    released: AtomicU64,
    sink_panics: AtomicU64,
}

impl Engine {
    /// Builds the engine and starts its sweeper thread.
    pub(crate) fn start(config: Config, sinks: Vec<Box<dyn ReportSink>>) -> Arc<Engine> {
        clock::wall(Instant::now()); // fixes the wall-clock epoch before any request
        let memory_tracked = alloc::is_installed();
        let threshold = config.memory_threshold;
        let registry = Registry::with(
            config.registry_capacity,
            config.ignored_spawns.clone(),
            Box::new(move |usage| memory::holds_memory(usage, threshold)),
        );
        let policy = RoutePolicy {
            ignored: config.ignored_routes.clone(),
            streaming: config.streaming_routes.clone(),
        };
        let trend = Trend::new(config.trend.clone(), config.confirm_sweeps, registry.ids());
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
                tasks: TaskJudge::default(),
                trend,
                findings: VecDeque::new(),
                warnings: Warnings::default(),
            }),
            active: Arc::default(),
            cells: Mutex::default(),
            lines: Mutex::default(),
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
        current::outside(|| {
            let route_fn = self.config.route_fn.as_ref().map(|f| &*f.0);
            let (route, info) = route::resolve(request, route_fn, &self.routes);
            if info.ignored {
                return None;
            }
            let id = self.registry.next_id();
            let memory = self.memory_slot(info);
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

    /// Opens the scope of a unit of work named `name` ([`LeakDetector::scope`]), or returns
    /// `None` when the name is ignored or the registry is full. It is judged as a request is;
    /// opened inside a request (or another unit), it is in that request's trace, and what it
    /// does while it is current is its own, not the request's.
    ///
    /// [`LeakDetector::scope`]: crate::LeakDetector::scope
    pub(crate) fn open_unit_scope(&self, name: &str) -> Option<Arc<Scope>> {
        let trace = current::current().and_then(|current| current.request()?.trace);
        current::outside(|| {
            let (route, info) = self.routes.intern_unit(name);
            if info.ignored {
                return None;
            }
            let id = self.registry.next_id();
            let head = RequestHead {
                request_id: RequestId::Generated {
                    prefix: self.id_prefix,
                    number: id,
                },
                method: http::Method::GET,
                route,
                // A unit however its name was first seen (a route's name used for a unit).
                info: RouteInfo { unit: true, ..info },
                trace,
                upstream: None,
            };
            self.registry.open(id, head, self.memory_slot(info))
        })
    }

    /// Why the memory of the units named `name` is not counted, if it is not: the allocator is
    /// not installed, or every route slot of the allocator was taken before the name was seen.
    pub(crate) fn unit_memory_uncounted(&self, name: &str) -> Option<&'static str> {
        if !self.memory_tracked {
            return Some(
                "memory is not tracked: install leakwatch::TrackingAllocator as the test \
                 binary's global allocator",
            );
        }
        let (_, info) = current::outside(|| self.routes.intern_unit(name));
        (info.slot == 0).then_some(
            "memory is not counted for this unit: every one of the allocator's route slots (one \
             per route or unit name, for the process's life) was taken before it",
        )
    }

    /// The allocator's scope slot for a request of a route, when memory is counted.
    fn memory_slot(&self, info: RouteInfo) -> Option<SlotGuard> {
        (self.memory_tracked && info.slot != 0)
            .then(|| SlotGuard::acquire(info.slot))
            .flatten()
    }

    /// Opens the scope of an outgoing call, or returns `None` when the registry is full.
    ///
    /// Made inside a request (the current scope), the call is that request's: its scope closes
    /// when the request does, and its reports carry the request's route, method, request id and
    /// trace. Made outside any request, its route is [`route::CLIENT`] and it closes when the
    /// caller's [`ScopeGuard`](crate::request::current::ScopeGuard) on it is dropped.
    pub(crate) fn open_call_scope<B>(&self, request: &http::Request<B>) -> Option<Arc<Scope>> {
        // A call made from within another call's scope belongs to the request that made that.
        let parent = current::current().and_then(|current| current.request().cloned());
        current::outside(|| {
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
                // A call is as long as its request, which is judged on its own; a unit's call
                // is reported as the unit's.
                info: RouteInfo {
                    streaming: true,
                    unit: parent.as_ref().is_some_and(|p| p.unit),
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
    /// them. Its phases run in this order, each handing the next what it found.
    pub(crate) fn sweep(&self) -> Vec<LeakReport> {
        let _one_at_a_time = lock(&self.sweeping);
        let now = Instant::now();
        let mut reports = Vec::new();
        let objects = self.judge_objects(now, &mut reports);
        let scopes = self.judge_scopes(now, &mut reports);
        lock(&self.active).record(&reports);
        let finished = self.judge_routes(now, objects, scopes, &mut reports);
        self.registry.recycle(finished);
        #[cfg(leakwatch_taskdump)]
        self.dumps
            .after_sweep(&self.registry, &self.active, &reports);
        self.count(&reports);
        self.deliver(&reports);
        reports
    }

    /// First phase: the objects requests left behind (tasks, bodies, watched objects), each
    /// against its request; returns the census of the tasks judged by growth instead, and the
    /// requests whose leftovers stand reported.
    ///
    /// An object of a request still in flight is judged once the request has ended; until
    /// then each sweep looks at one in `CHECK_IN_FLIGHT_EVERY` of them (by id; all of them when
    /// the registry is more than half full) to forget those that are gone: a sweep over many
    /// requests in flight reads their scopes, and only a few of their objects.
    fn judge_objects(&self, now: Instant, reports: &mut Vec<LeakReport>) -> Objects {
        let mut found = Objects::default();
        let turn = self.counters.sweeps.load(Ordering::Relaxed) % CHECK_IN_FLIGHT_EVERY;
        let all = self.registry.len() > self.registry.capacity() / 2;
        // Before any is judged: the task cells' stacks are read (letting go of what is no
        // task), and the orphans of every spawn line counted.
        let config = &self.config;
        let mut cells = lock(&self.cells);
        cells.read_new_stacks(config);
        let mut lines = lock(&self.lines);
        self.registry.sweep_objects(|_, object| {
            let keep = cells.read(object, config);
            if keep {
                lines.count(object, now, config);
            }
            keep
        });
        drop(cells);
        self.registry.sweep_objects(|id, object| {
            let its_turn = all || id % CHECK_IN_FLIGHT_EVERY == turn;
            if !its_turn && object.scope.is_open() && !object.judged_by_growth() {
                return true;
            }
            let keep = objects::judge_object(id, object, &lines, now, config, reports);
            found.census.count(object);
            if keep {
                found.reported.note(object);
            }
            keep
        });
        found
    }

    /// Second phase: the requests' scopes — stuck requests, and finished ones the registry can
    /// let go of.
    fn judge_scopes(&self, now: Instant, reports: &mut Vec<LeakReport>) -> Scopes {
        let mut scopes = Scopes::default();
        let released = self.registry.sweep_scopes(|scope, lifecycle| {
            scopes.open += u64::from(scope.is_open() && !scope.is_upstream_call());
            let keep = objects::judge_scope(scope, lifecycle, now, &self.config, reports);
            if let Some(usage) = scope.usage().filter(|_| keep) {
                *scopes.unjudged.entry(scope.route_slot()).or_default() += usage.retained_bytes();
            }
            keep
        });
        scopes.released = released;
        scopes
    }

    /// Last phase, under the judges' lock: the memory of the requests let go and of every
    /// route, the tasks of shared resources, the process trend, the one-shot findings to
    /// remember, and what went uncounted. Returns the scopes nothing needs any more.
    fn judge_routes(
        &self,
        now: Instant,
        objects: Objects,
        scopes: Scopes,
        reports: &mut Vec<LeakReport>,
    ) -> Vec<Arc<Scope>> {
        let config = &self.config;
        let ids = self.registry.ids();
        let mut guard = lock(&self.judges);
        let judges = &mut *guard;
        let (counted, mut finished): (Vec<_>, Vec<_>) = scopes
            .released
            .into_iter()
            .partition(|scope| scope.memory.is_some());
        judges.memory.count_clean(&self.registry.take_clean(), ids);
        let memory = &mut judges.memory;
        finished.extend(memory.judge_requests(counted, &objects.reported, config, ids));
        memory.judge_routes(now, config, &objects.reported, &scopes.unjudged, reports);
        let finished_by_route = self.registry.finished_requests();
        judges.tasks.judge(
            objects.census,
            &finished_by_route,
            now,
            config,
            ids,
            reports,
        );
        let live_heap = || self.live_heap_bytes();
        judges.trend.sample(now, live_heap, scopes.open, reports);
        for finding in reports
            .iter()
            .filter(|r| r.kind == LeakKind::UnconsumedBody)
        {
            if judges.findings.len() == FINDINGS_CAPACITY {
                judges.findings.pop_front();
            }
            judges.findings.push_back(finding.clone());
        }
        judges.warnings.check(self.uncounted(), now);
        finished
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
}
