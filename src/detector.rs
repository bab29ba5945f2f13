//! [`LeakDetector`]: the handle users hold. Every method users call on it is here: building
//! ([`LeakDetectorBuilder::build`]), the layers, the read side (leaks, stats, snapshot, metrics)
//! and the test assertion; each hands over to the stage that does the work.

use std::fmt;
use std::sync::Arc;

use std::future::Future;
use std::time::Duration;

use crate::client::ClientLeakLayer;
use crate::config::{ConfigError, LeakDetectorBuilder};
use crate::engine::{self, Engine};
use crate::report::LeakReport;
use crate::server::LeakLayer;
#[cfg(feature = "serde")]
use crate::snapshot::SnapshotService;
use crate::snapshot::{self, Snapshot};
use crate::stats::Stats;
use crate::unit::Unit;
use crate::util::panic_at_await::PanicAtAwait;

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
///     .service_fn(|_req: http::Request<leakwatch::server::RequestBody<String>>| async {
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
    pub(crate) engine: Arc<Engine>,
}

impl fmt::Debug for LeakDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakDetector")
            .field("registry_entries", &self.engine.registry_entries())
            .field("uncounted", &self.engine.uncounted())
            .finish_non_exhaustive()
    }
}

impl LeakDetector {
    /// How many one-shot findings ([`UnconsumedBody`](crate::LeakKind::UnconsumedBody)) a
    /// detector remembers for [`leaks`](Self::leaks) and
    /// [`assert_no_leaks`](Self::assert_no_leaks); older ones are forgotten.
    pub const FINDINGS_CAPACITY: usize = engine::FINDINGS_CAPACITY;

    /// Starts configuring a detector.
    pub fn builder() -> LeakDetectorBuilder {
        LeakDetectorBuilder::default()
    }

    /// A layer that opens a scope for every request passing through it.
    ///
    /// See the [`server` module docs](crate::server) for how it is used with axum and hyper.
    pub fn layer(&self) -> LeakLayer {
        LeakLayer::new(self.engine.clone())
    }

    /// A layer for an outgoing HTTP client: reports upstream response bodies kept past the
    /// server request that made the call, or dropped unread. See [`crate::client`].
    pub fn client_layer(&self) -> ClientLeakLayer {
        ClientLeakLayer::new(self.engine.clone())
    }

    cfg_feature! {
        "reqwest",
        /// The same as [`client_layer`](Self::client_layer), for a `reqwest` client: a
        /// `reqwest-middleware` middleware. See [`ReqwestMiddleware`](crate::client::ReqwestMiddleware).
        pub fn reqwest_middleware(&self) -> crate::client::ReqwestMiddleware {
            crate::client::ReqwestMiddleware::new(self.engine.clone())
        }
    }

    /// Runs `future` as one unit of work named `name` — a queue message, a job, a stream item,
    /// a test — judged as a request is: what it spawns, allocates and watches is charged to it,
    /// and what outlives it is reported under its name ([`LeakReport::unit`]). See
    /// [`crate::unit`].
    ///
    /// The name is one of a fixed set, like a route template (`"consumer/orders"`), never an
    /// id. The unit's scope opens at the first poll and closes when `future` completes or the
    /// returned [`Unit`] is dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let detector = leakwatch::LeakDetector::builder()
    ///     .grace(Duration::ZERO)
    ///     .confirm_sweeps(0)
    ///     .build()
    ///     .unwrap();
    /// detector
    ///     .scope("job/reindex", async {
    ///         // A task the job forgets: reported under the job's name.
    ///         leakwatch::spawn(std::future::pending::<()>());
    ///     })
    ///     .await;
    /// let leaks = detector.sweep_now();
    /// assert_eq!((leaks[0].route.as_str(), leaks[0].unit), ("job/reindex", true));
    /// # }
    /// ```
    pub fn scope<F: Future>(&self, name: &'static str, future: F) -> Unit<F> {
        Unit::new(
            self.engine.clone(),
            std::borrow::Cow::Borrowed(name),
            future,
        )
    }

    /// Runs one sweep now, on this thread, and returns the reports whose state changed in it
    /// (`Released` ones included). The reports also go to the configured sinks.
    pub fn sweep_now(&self) -> Vec<LeakReport> {
        self.engine.sweep()
    }

    /// The active reports: objects currently `Suspected` or `Confirmed`, stuck requests, routes
    /// retaining memory, growth alerts and the most recent one-shot findings
    /// ([`FINDINGS_CAPACITY`](Self::FINDINGS_CAPACITY) at most), ordered by id.
    ///
    /// This reads the last sweep's verdicts; it does not sweep.
    pub fn leaks(&self) -> Vec<LeakReport> {
        self.engine.leaks()
    }

    /// Counters and gauges describing the detector's own state. Counting builds no report.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Everything the detector knows now: requests in flight and finished per route, memory,
    /// tasks alive by spawn location, the active reports, allocation sites and the trend. Built
    /// on this thread, on demand; bounded in size (see [`Snapshot`]). It does not sweep.
    ///
    /// ```
    /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
    /// let snapshot = detector.snapshot();
    /// assert!(snapshot.reports.is_empty());
    /// println!("{snapshot}"); // tables for a terminal
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        snapshot::take(&self.engine, &snapshot::Only::default())
    }
}

cfg_feature! {
    "serde",
    impl LeakDetector {
        /// A tower service answering `GET` with this detector's [`snapshot`](Self::snapshot)
        /// (JSON, or a table with `?format=text`) and, under `…/heap` and `…/tasks`, its heap
        /// and task profiles in pprof's format (feature `pprof`). Mount it on an operators-only
        /// path; see [`SnapshotService`].
        ///
        /// ```
        /// # #[cfg(feature = "axum")]
        /// # fn build() {
        /// use axum::{routing::get, Router};
        ///
        /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
        /// let app: Router = Router::new()
        ///     .route("/hello", get(|| async { "hello" }))
        ///     // `/debug/leaks`, `/debug/leaks/heap`, `/debug/leaks/tasks`
        ///     .nest_service("/debug/leaks", detector.snapshot_service())
        ///     .layer(detector.layer());
        /// # }
        /// ```
        pub fn snapshot_service(&self) -> SnapshotService {
            SnapshotService::new(self.engine.clone())
        }
    }
}

cfg_feature! {
    "otel",
    impl LeakDetector {
    /// Registers observable instruments on `meter`, read at each collection:
    ///
    /// | name | unit | what |
    /// |---|---|---|
    /// | `leakwatch.leaks.active` | `{leak}` | active reports, by `leak.kind` |
    /// | `leakwatch.heap.live` | `By` | the process's live heap (only with the `TrackingAllocator`) |
    /// | `leakwatch.tasks.alive` | `{task}` | alive tokio tasks at the last trend sample |
    /// | `leakwatch.requests.in_flight` | `{request}` | requests in flight |
    /// | `leakwatch.registry.entries` | `{entry}` | scopes and objects held by the registry |
    /// | `leakwatch.registry.uncounted` | `{entry}` | entries not tracked because the registry was full (counter; [`Uncounted::registry_entries`](crate::stats::Uncounted::registry_entries)) |
    /// | `leakwatch.requests.uncounted` | `{request}` | requests whose memory was not counted per request: every allocator slot was taken (counter; [`Uncounted::requests`](crate::stats::Uncounted::requests)) |
    ///
    /// Each instrument reads only its own figure; none builds a report. The callbacks hold
    /// only a weak reference: once the detector is gone they report nothing.
    ///
    /// ```
    /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
    /// detector.register_metrics(&opentelemetry::global::meter("my-service"));
    /// ```
        pub fn register_metrics(&self, meter: &opentelemetry::metrics::Meter) {
            crate::sink::gauges::register(&self.engine, meter);
        }
    }
}

/// Test assertions.
///
/// goleak-style: the assertion sweeps, and while objects of finished requests are still alive it
/// waits a little and sweeps again, up to a settle timeout — so a task that ends a few
/// milliseconds after its response is not a failure. What is still alive then (whatever the grace
/// period), stuck requests and one-shot findings such as an unconsumed body fail the assertion,
/// which panics at the test's `.await` with every report printed. Requests still in flight are
/// not judged: assert after their responses have been read.
///
/// What it can see depends on the set-up, and the failure message says which applies:
///
/// - **Tasks** spawned in a request through [`spawn`](crate::spawn) or [`scoped`](crate::scoped);
///   a plain `tokio::spawn` with the [`TrackingAllocator`](crate::TrackingAllocator) installed
///   (its task cell), or on a runtime set up with `instrument_runtime` (built with
///   `--cfg tokio_unstable`), which also sees tasks spawned inside other tasks.
/// - **Bodies** (request bodies; upstream bodies through
///   [`client_layer`](LeakDetector::client_layer)), **watched objects** and **stuck requests**:
///   always.
/// - **Memory** only with the [`TrackingAllocator`](crate::TrackingAllocator) as the global
///   allocator, and only for a route with more finished requests than
///   [`memory_window`](crate::LeakDetectorBuilder::memory_window): retained memory is judged by
///   what old requests still hold while newer ones come and go, so a test of 10 requests that
///   each keep 4 KiB passes unless the window is under 10. Send enough requests, or lower the
///   window in the test's detector. Memory a dependency allocated, and growth no request
///   witnesses while allocation sites cannot tell whose it is, must also keep growing for
///   [`dependency_growth_span`](crate::LeakDetectorBuilder::dependency_growth_span): set it to
///   zero in a test to judge by requests alone (see [whose memory](crate#whose-memory)).
impl LeakDetector {
    /// Panics at the caller's `.await`, listing every report, if a finished request left
    /// anything behind. What it checks, and what it needs to see memory and plain spawns, is
    /// written above, on this group of methods.
    ///
    /// Retries for the [`settle_timeout`](crate::LeakDetectorBuilder::settle_timeout) (default
    /// 2 s) before failing. Needs a tokio runtime with its timer enabled (`#[tokio::test]` has
    /// one).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
    /// // … drive requests through detector.layer() …
    /// detector.assert_no_leaks().await;
    /// # }
    /// ```
    pub fn assert_no_leaks(&self) -> impl Future<Output = ()> + Send + '_ {
        self.assert_no_leaks_within(self.engine.config.settle_timeout)
    }

    /// [`assert_no_leaks`](Self::assert_no_leaks) with an explicit settle timeout.
    pub fn assert_no_leaks_within(&self, settle: Duration) -> impl Future<Output = ()> + Send + '_ {
        PanicAtAwait::new(self.engine.check(settle, |_| true, "requests", None))
    }
}

impl LeakDetectorBuilder {
    /// Validates the settings and builds the detector.
    ///
    /// Its background sweeper thread starts at once and ends when the last handle on the
    /// detector (and every layer made from it) is dropped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field.
    pub fn build(self) -> Result<LeakDetector, ConfigError> {
        let (config, sinks) = self.into_parts()?;
        let sinks = sinks.unwrap_or_else(crate::sink::default_sinks);
        Ok(LeakDetector {
            engine: Engine::start(config, sinks),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn sweeper_thread_ends_when_the_detector_is_dropped() {
        let detector = LeakDetector::builder()
            .sweep_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let layer = detector.layer();
        let handle = detector
            .engine
            .sweeper
            .take_thread()
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
}
