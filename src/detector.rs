//! The detector: shared state, the handle users hold, and statistics.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe, Location};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::alloc;
use crate::config::{Config, LeakDetectorBuilder};
use crate::layer::LeakLayer;
use crate::memory::{MemoryJudge, RouteMemoryStats};
use crate::registry::{Entry, Liveness, Registry};
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request_id::{self, RequestId};
use crate::route::{self, Interner};
use crate::scope::{self, RequestHead, Scope};
use crate::sink::ReportSink;
use crate::sweep::{self, Outcome};
use crate::trace_context;
use crate::trend::Trend;

/// How many one-shot findings ([`LeakKind::UnconsumedBody`]) a detector remembers for
/// [`LeakDetector::leaks`] and [`LeakDetector::assert_no_leaks`]; older ones are forgotten.
pub const FINDINGS_CAPACITY: usize = 1024;

/// Finds what requests leave behind. Cheap to clone: every clone shares one state.
///
/// Build it with [`LeakDetector::builder`], put [`LeakDetector::layer`] in front of a service,
/// and read the results from the configured sinks, [`LeakDetector::leaks`], or — in tests —
/// [`LeakDetector::assert_no_leaks`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let detector = leakwatch::LeakDetector::builder()
///     .grace(Duration::ZERO)
///     .confirm_sweeps(0)
///     .build()
///     .unwrap();
/// let service = ServiceBuilder::new()
///     .layer(detector.layer())
///     .service_fn(|_req: http::Request<leakwatch::RequestBody<String>>| async {
///         // A task that outlives the request.
///         leakwatch::spawn(std::future::pending::<()>());
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
///     });
/// let response = service.oneshot(http::Request::new(String::new())).await.unwrap();
/// drop(response); // the response is finished: the request's scope closes
///
/// let leaks = detector.sweep_now();
/// assert_eq!(leaks.len(), 1);
/// assert_eq!(leaks[0].kind, leakwatch::LeakKind::OrphanTask);
/// # }
/// ```
#[derive(Clone)]
pub struct LeakDetector {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for LeakDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakDetector")
            .field("registry_entries", &self.shared.registry.len())
            .field("skipped", &self.shared.registry.skipped())
            .finish_non_exhaustive()
    }
}

/// The state every clone of a detector, its layers and its sweeper share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    routes: Interner,
    /// The `TrackingAllocator` is the global allocator: requests' memory is counted.
    memory: bool,
    judge: Mutex<MemoryJudge>,
    trend: Mutex<Trend>,
    sinks: Vec<Box<dyn ReportSink>>,
    findings: Mutex<VecDeque<LeakReport>>,
    id_prefix: u32,
    sweep_lock: Mutex<()>,
    sweeps: AtomicU64,
    confirmed_total: [AtomicU64; LeakKind::ALL.len()],
    released_total: AtomicU64,
    sink_panics: AtomicU64,
    /// Dropping it (with this state) wakes the sweeper thread, which then exits.
    _stop_sweeper: Mutex<Sender<()>>,
    pub(crate) sweeper: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LeakDetector {
    /// Starts configuring a detector.
    pub fn builder() -> LeakDetectorBuilder {
        LeakDetectorBuilder::default()
    }

    pub(crate) fn from_parts(config: Config, sinks: Vec<Box<dyn ReportSink>>) -> Self {
        scope::wall(Instant::now()); // fixes the wall-clock epoch before any request
        let (stop, stopped) = std::sync::mpsc::channel();
        let interval = config.sweep_interval;
        let memory = alloc::is_installed();
        let registry = Registry::new(config.registry_capacity);
        let trend = Mutex::new(Trend::new(&registry));
        let shared = Arc::new(Shared {
            registry,
            trend,
            config,
            routes: Interner::new(memory),
            memory,
            judge: Mutex::new(MemoryJudge::default()),
            sinks,
            findings: Mutex::new(VecDeque::new()),
            id_prefix: request_id::random_prefix(),
            sweep_lock: Mutex::new(()),
            sweeps: AtomicU64::new(0),
            confirmed_total: Default::default(),
            released_total: AtomicU64::new(0),
            sink_panics: AtomicU64::new(0),
            _stop_sweeper: Mutex::new(stop),
            sweeper: Mutex::new(None),
        });
        let handle = sweep::spawn_sweeper(Arc::downgrade(&shared), interval, stopped);
        *lock(&shared.sweeper) = handle;
        LeakDetector { shared }
    }

    /// A layer that opens a scope for every request passing through it.
    ///
    /// See the [`layer` module docs](crate::layer) for how it is used with axum and hyper.
    pub fn layer(&self) -> LeakLayer {
        LeakLayer::new(self.shared.clone())
    }

    /// Runs one sweep now, on this thread, and returns the reports whose state changed in it
    /// (`Released` ones included). The reports also go to the configured sinks.
    pub fn sweep_now(&self) -> Vec<LeakReport> {
        self.shared.sweep()
    }

    /// The active reports: objects currently `Suspected` or `Confirmed`, stuck requests, and the
    /// most recent one-shot findings ([`FINDINGS_CAPACITY`] at most), ordered by id.
    ///
    /// This reads the last sweep's verdicts; it does not sweep.
    pub fn leaks(&self) -> Vec<LeakReport> {
        self.shared
            .collect_reports(|e| e.tracker.reported().filter(|s| s.is_active()))
            .0
    }

    /// Counters and gauges describing the detector's own state.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        let mut stats = Stats {
            registry_entries: shared.registry.len(),
            registry_capacity: shared.registry.capacity(),
            skipped: shared.registry.skipped(),
            sweeps: shared.sweeps.load(Ordering::Relaxed),
            released_total: shared.released_total.load(Ordering::Relaxed),
            sink_panics: shared.sink_panics.load(Ordering::Relaxed),
            memory_tracked: shared.memory,
            live_heap_bytes: shared
                .memory
                .then(|| alloc::process_live_bytes().max(0) as u64),
            untracked_scopes: if shared.memory {
                alloc::slots_exhausted()
            } else {
                0
            },
            routes: lock(&shared.judge).stats(|slot| shared.routes.name_of(slot)),
            alive_tasks: lock(&shared.trend).latest().and_then(|s| s.alive_tasks),
            sites_dropped: alloc::sites_dropped(),
            ..Stats::default()
        };
        for (i, counter) in shared.confirmed_total.iter().enumerate() {
            stats.confirmed_total.0[i] = counter.load(Ordering::Relaxed);
        }
        shared.registry.for_each_scope(|scope| {
            if scope.is_open() {
                stats.open_scopes += 1;
            }
        });
        for entry in shared.registry.objects.iter() {
            match entry.liveness {
                Liveness::Task(_) => stats.tracked_tasks += 1,
                Liveness::Body(_) => stats.tracked_bodies += 1,
                Liveness::Object(_) => stats.watched_objects += 1,
            }
        }
        for report in self.leaks() {
            stats.active.0[report.kind.index()] += 1;
        }
        stats
    }
}

impl Shared {
    /// Opens a scope for a request, or returns `None` when its route is ignored or the registry
    /// is full.
    pub(crate) fn open_scope<B>(
        self: &Arc<Self>,
        request: &http::Request<B>,
    ) -> Option<Arc<Scope>> {
        // Nothing the detector allocates here is charged to an enclosing request.
        scope::outside(|| {
            let (route, route_slot) = route::resolve(request, &self.config, &self.routes);
            if self.config.is_ignored(route.as_str()) {
                return None;
            }
            let id = self.registry.next_id();
            let streaming = self.config.is_streaming(route.as_str());
            let memory = (self.memory && route_slot != 0)
                .then(|| alloc::SlotGuard::acquire(route_slot))
                .flatten();
            let head = RequestHead {
                request_id: RequestId::from_headers(request.headers(), self.id_prefix, id),
                method: request.method().clone(),
                route,
                route_slot,
                streaming,
                trace: trace_context::capture(request.headers()),
            };
            let fresh = Scope::new(id, head, Arc::downgrade(self), memory);
            self.registry.open(fresh)
        })
    }

    /// Tracks an object left by `scope`. Runs outside the request's scope, so the detector's
    /// own allocations are never attributed to the request.
    pub(crate) fn track(
        &self,
        scope: &Arc<Scope>,
        liveness: Liveness,
        location: Option<&'static Location<'static>>,
        type_name: Option<&'static str>,
    ) -> bool {
        scope.mark_objects();
        scope::outside(|| {
            self.registry
                .insert_object(scope, liveness, location, type_name)
        })
    }

    /// One sweep: judge every entry, record and deliver the state changes.
    pub(crate) fn sweep(&self) -> Vec<LeakReport> {
        let _one_at_a_time = lock(&self.sweep_lock);
        let now = Instant::now();
        let mut out = Outcome::default();
        let mut judge = lock(&self.judge);
        self.registry
            .objects
            .retain(|id, entry| sweep::judge_object(*id, entry, now, &self.config, &mut out));
        self.registry
            .take_scopes()
            .retain_mut(|entry| sweep::judge_scope(entry, now, &self.config, &mut out));
        // In request order: "older" means opened earlier, not first in the map.
        let mut judged = std::mem::take(&mut out.memory_judged);
        judged.sort_unstable_by_key(|scope| scope.id);
        for scope in &judged {
            judge.judge_request(scope, &self.config, &self.registry);
        }
        judge.judge_routes(now, &self.config, &mut out);
        drop(judge);
        drop(judged);
        self.registry.recycle(std::mem::take(&mut out.finished));
        let memory = self.memory;
        lock(&self.trend).sample(
            now,
            || memory.then(|| alloc::process_live_bytes().max(0) as u64),
            out.open_scopes,
            &self.config.trend,
            self.config.confirm_sweeps,
            &mut out,
        );
        self.registry.released(out.removed);
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.record(&out.reports);
        self.deliver(&out.reports);
        out.reports
    }

    fn record(&self, reports: &[LeakReport]) {
        let mut findings = None;
        for report in reports {
            match report.state {
                LeakState::Confirmed => {
                    self.confirmed_total[report.kind.index()].fetch_add(1, Ordering::Relaxed);
                }
                LeakState::Released => {
                    self.released_total.fetch_add(1, Ordering::Relaxed);
                }
                LeakState::Suspected => {}
            }
            if report.kind == LeakKind::UnconsumedBody {
                let findings = findings.get_or_insert_with(|| lock(&self.findings));
                if findings.len() == FINDINGS_CAPACITY {
                    findings.pop_front();
                }
                findings.push_back(report.clone());
            }
        }
    }

    fn deliver(&self, reports: &[LeakReport]) {
        for report in reports {
            for sink in &self.sinks {
                // A panicking sink must not take the sweeper down with it.
                if catch_unwind(AssertUnwindSafe(|| sink.report(report))).is_err() {
                    self.sink_panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Everything `assert_no_leaks` would complain about now: every object of a closed scope
    /// that is still alive (grace or not), active stuck requests and one-shot findings. The
    /// flag says whether any of it is an object that may still go away.
    pub(crate) fn unsettled(&self) -> (Vec<LeakReport>, bool) {
        let (reports, objects) = self.collect_reports(|e| {
            (!e.scope.is_open() && e.liveness.is_alive())
                .then(|| e.tracker.reported().unwrap_or(LeakState::Suspected))
        });
        (reports, objects > 0)
    }

    /// Reports for the objects `object_state` gives a state, for active stuck requests and for
    /// the remembered one-shot findings, ordered by id; and how many are objects.
    fn collect_reports(
        &self,
        object_state: impl Fn(&Entry) -> Option<LeakState>,
    ) -> (Vec<LeakReport>, usize) {
        let now = Instant::now();
        let mut reports: Vec<LeakReport> = self
            .registry
            .objects
            .iter()
            .filter_map(|e| {
                let state = object_state(&e)?;
                Some(sweep::object_report(
                    *e.key(),
                    &e,
                    e.liveness.leak_kind(),
                    state,
                    now,
                ))
            })
            .collect();
        let objects = reports.len();
        reports.extend(lock(&self.registry.scopes).iter().filter_map(|e| {
            let state = e.tracker.reported().filter(|s| s.is_active())?;
            Some(sweep::scope_report(e, state, now, &self.config))
        }));
        reports.extend(lock(&self.findings).iter().cloned());
        reports.extend(lock(&self.judge).active_reports());
        reports.extend(lock(&self.trend).active_reports());
        reports.sort_by_key(|r| r.id);
        (reports, objects)
    }
}

/// Counts of reports by [`LeakKind`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; LeakKind::ALL.len()]);

impl KindCounts {
    /// The count for one kind.
    pub fn get(&self, kind: LeakKind) -> u64 {
        self.0[kind.index()]
    }

    /// The sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl fmt::Debug for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(LeakKind::ALL.iter().map(|k| (k.as_str(), self.get(*k))))
            .finish()
    }
}

/// A snapshot of the detector's own state, from [`LeakDetector::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests whose scope is open now (their response has not finished).
    pub open_scopes: usize,
    /// Entries held by the registry: scopes (open, or closed and not yet swept) and objects.
    pub registry_entries: usize,
    /// The configured [`registry_capacity`](crate::LeakDetectorBuilder::registry_capacity).
    pub registry_capacity: usize,
    /// Tasks tracked now (spawned through [`crate::spawn`] / [`crate::scoped`] in a request).
    pub tracked_tasks: usize,
    /// Request bodies tracked now.
    pub tracked_bodies: usize,
    /// Objects passed to [`crate::watch`] and tracked now.
    pub watched_objects: usize,
    /// Scopes and objects not tracked because the registry was full, since the detector was
    /// built.
    pub skipped: u64,
    /// Sweeps run, by the background sweeper or [`LeakDetector::sweep_now`].
    pub sweeps: u64,
    /// Active reports by kind, as [`LeakDetector::leaks`] returns them.
    pub active: KindCounts,
    /// Reports that reached `Confirmed`, by kind, since the detector was built.
    pub confirmed_total: KindCounts,
    /// Reports that reached `Released` since the detector was built.
    pub released_total: u64,
    /// Sink calls that panicked (the panic is caught; the report is lost for that sink).
    pub sink_panics: u64,
    /// Whether heap memory is counted: the [`TrackingAllocator`](crate::TrackingAllocator) is
    /// the global allocator.
    pub memory_tracked: bool,
    /// Live heap bytes of the whole process, from the allocator; `None` when memory is not
    /// tracked.
    pub live_heap_bytes: Option<u64>,
    /// Requests whose memory went uncounted because every scope slot of the allocator was taken
    /// (process-wide, since start-up).
    pub untracked_scopes: u64,
    /// Memory per route, for routes with judged requests.
    pub routes: Vec<RouteMemoryStats>,
    /// Alive tasks of the tokio runtime the detector was built in, at the last trend sample;
    /// `None` when built outside a runtime or before the first sample.
    pub alive_tasks: Option<u64>,
    /// Allocation-site samples not recorded because the site table was full (process-wide).
    pub sites_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sweeper_thread_ends_when_the_detector_is_dropped() {
        let detector = LeakDetector::builder()
            .sweep_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let layer = detector.layer();
        let handle = lock(&detector.shared.sweeper)
            .take()
            .expect("sweeper started");
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !handle.is_finished(),
            "the sweeper runs while handles exist"
        );
        drop(detector);
        assert!(!handle.is_finished(), "a layer keeps the detector alive");
        drop(layer);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            handle.join().unwrap();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the sweeper thread exits once the last handle is dropped");
    }

    #[test]
    fn background_sweeps_run_on_the_interval() {
        let detector = LeakDetector::builder()
            .sweep_interval(Duration::from_millis(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while detector.stats().sweeps < 2 {
            assert!(Instant::now() < deadline, "no background sweep ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn kind_counts_sum() {
        let mut counts = KindCounts::default();
        counts.0[LeakKind::OrphanTask.index()] = 2;
        counts.0[LeakKind::StuckRequest.index()] = 1;
        assert_eq!(counts.get(LeakKind::OrphanTask), 2);
        assert_eq!(counts.total(), 3);
        assert!(format!("{counts:?}").contains("\"OrphanTask\": 2"));
    }
}
