//! A leak guard for CI: drive a service route by route and fail the build when a route leaks.
//!
//! [`LeakGuard`] sends a fixed number of requests to each listed route — through a request
//! maker per route — and asserts, per route:
//!
//! - no leak report of any kind (orphan tasks, retained or unconsumed bodies, watched objects,
//!   retained memory, …);
//! - with the [`TrackingAllocator`](crate::TrackingAllocator) installed, at most a budget of
//!   heap bytes kept per request: the growth of the route's live bytes over the measured
//!   requests (after a warm-up, so that one-time initialisation and caches filling up are not
//!   counted), divided by their number;
//! - with a baseline file, no regression past a tolerance against the figures committed in it.
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use leakwatch::guard::LeakGuard;
//!
//! fn app(detector: &leakwatch::LeakDetector) -> Router {
//!     Router::new()
//!         .route("/users/{id}", get(|| async { "user" }))
//!         .layer(detector.layer())
//! }
//!
//! LeakGuard::new()
//!     .route("/users/{id}", |i| Request::get(format!("/users/{i}")).body(Body::empty()).unwrap())
//!     .check(app)
//!     .await;
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! # Baseline
//!
//! With `LEAKWATCH_BASELINE=path` in the environment (or [`LeakGuard::baseline`]), the guard
//! compares each route's bytes per request with the file's and fails, with a table of the
//! differences, when a route grew past the [tolerance](LeakGuard::tolerance). With
//! `LEAKWATCH_BASELINE_UPDATE=1` as well, it rewrites the file from this run instead. The file
//! is small and meant to be committed; its format is one `<bytes per request> <route>` line per
//! route, `#` comments allowed.
//!
//! # The detector it uses
//!
//! The guard builds its own detector, from [`LeakGuard::with_detector`]'s builder when given
//! one (for a `route_fn`, say), and sets on it: no grace period and no confirming sweeps (it
//! waits for objects to settle, as [`assert_no_leaks`](crate::LeakDetector::assert_no_leaks)
//! does), no background sweeps, and a [`memory_window`](crate::LeakDetectorBuilder::memory_window)
//! of a quarter of the measured requests, so that retained memory can be judged within a run.
//! Requests are sent one at a time and their responses read to the end.

mod baseline;
mod outcome;

use std::error::Error;
use std::fmt;
use std::future::poll_fn;
use std::pin::pin;
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;

use self::baseline::{Baseline, BaselineMode};
pub use self::baseline::{BASELINE_ENV, BASELINE_UPDATE_ENV};
pub use self::outcome::{GuardError, GuardOutcome, RouteVerdict};
use crate::config::LeakDetectorBuilder;
use crate::detector::LeakDetector;
use crate::stats::RouteStats;
use crate::util::panic_at_await::PanicAtAwait;

/// Makes the `i`-th request to a route.
type MakeRequest<B> = Box<dyn Fn(usize) -> Request<B> + Send + Sync>;

/// A route to drive, with its request maker and budget.
struct RouteSpec<B> {
    route: String,
    make: MakeRequest<B>,
    budget: Option<u64>,
}

/// Drives a service route by route and judges each route; see the [module docs](self).
pub struct LeakGuard<B> {
    builder: LeakDetectorBuilder,
    routes: Vec<RouteSpec<B>>,
    requests: usize,
    warmup: usize,
    budget: u64,
    tolerance: (u64, f64),
    baseline: Option<BaselineMode>,
}

impl<B> fmt::Debug for LeakGuard<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<&str> = self.routes.iter().map(|r| r.route.as_str()).collect();
        f.debug_struct("LeakGuard")
            .field("routes", &routes)
            .field("requests", &self.requests)
            .field("warmup", &self.warmup)
            .field("budget", &self.budget)
            .field("tolerance", &self.tolerance)
            .field("baseline", &self.baseline)
            .finish_non_exhaustive()
    }
}

impl<B> Default for LeakGuard<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> LeakGuard<B> {
    /// Requests measured per route by default.
    pub const DEFAULT_REQUESTS: usize = 200;
    /// Warm-up requests per route by default.
    pub const DEFAULT_WARMUP: usize = 50;
    /// Retained heap bytes allowed per request by default.
    pub const DEFAULT_BUDGET: u64 = 64;
    /// Growth allowed past a baseline figure by default: 16 bytes per request, or 10 % of the
    /// figure when that is more.
    pub const DEFAULT_TOLERANCE: (u64, f64) = (16, 0.10);

    /// A guard with a default detector, taking its baseline setting from the environment
    /// ([`BASELINE_ENV`], [`BASELINE_UPDATE_ENV`]).
    pub fn new() -> Self {
        Self::with_detector(LeakDetector::builder())
    }

    /// A guard whose detector is built from `builder` (see the [module docs](self) for the
    /// settings the guard overrides).
    pub fn with_detector(builder: LeakDetectorBuilder) -> Self {
        LeakGuard {
            builder,
            routes: Vec::new(),
            requests: Self::DEFAULT_REQUESTS,
            warmup: Self::DEFAULT_WARMUP,
            budget: Self::DEFAULT_BUDGET,
            tolerance: Self::DEFAULT_TOLERANCE,
            baseline: BaselineMode::from_env(|name| std::env::var(name).ok()),
        }
    }

    /// Adds a route: its template, as the service names it (axum's `MatchedPath`, or the
    /// detector's `route_fn`), and a maker of its `i`-th request.
    pub fn route(
        mut self,
        route: impl Into<String>,
        make: impl Fn(usize) -> Request<B> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(RouteSpec {
            route: route.into(),
            make: Box::new(make),
            budget: None,
        });
        self
    }

    /// Adds a route with a budget of its own (see [`budget`](Self::budget)).
    pub fn route_with_budget(
        self,
        route: impl Into<String>,
        budget: u64,
        make: impl Fn(usize) -> Request<B> + Send + Sync + 'static,
    ) -> Self {
        let mut guard = self.route(route, make);
        if let Some(spec) = guard.routes.last_mut() {
            spec.budget = Some(budget);
        }
        guard
    }

    /// Requests measured per route (default [`DEFAULT_REQUESTS`](Self::DEFAULT_REQUESTS)).
    pub fn requests(mut self, requests: usize) -> Self {
        self.requests = requests;
        self
    }

    /// Requests sent to each route before measuring (default
    /// [`DEFAULT_WARMUP`](Self::DEFAULT_WARMUP)).
    pub fn warmup(mut self, requests: usize) -> Self {
        self.warmup = requests;
        self
    }

    /// Retained heap bytes allowed per request, for routes without a budget of their own
    /// (default [`DEFAULT_BUDGET`](Self::DEFAULT_BUDGET)).
    pub fn budget(mut self, bytes_per_request: u64) -> Self {
        self.budget = bytes_per_request;
        self
    }

    /// Growth allowed past a baseline figure: `bytes` per request, or `ratio` of the figure when
    /// that is more (default [`DEFAULT_TOLERANCE`](Self::DEFAULT_TOLERANCE)).
    pub fn tolerance(mut self, bytes: u64, ratio: f64) -> Self {
        self.tolerance = (bytes, ratio);
        self
    }

    /// Compares against the baseline file at `path`, whatever the environment says.
    pub fn baseline(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.baseline = Some(BaselineMode {
            path: path.into(),
            update: false,
        });
        self
    }

    /// Rewrites the baseline file at `path` from this run, whatever the environment says.
    pub fn update_baseline(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.baseline = Some(BaselineMode {
            path: path.into(),
            update: true,
        });
        self
    }

    /// Uses no baseline, whatever the environment says.
    pub fn without_baseline(mut self) -> Self {
        self.baseline = None;
        self
    }

    /// Runs the guard and panics at the caller's `.await`, with the table, when a route fails
    /// or the guard cannot run.
    pub fn check<S, ResBody>(
        self,
        make_service: impl FnOnce(&LeakDetector) -> S,
    ) -> impl std::future::Future<Output = ()>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        S::Error: Into<Box<dyn Error + Send + Sync>>,
        ResBody: http_body::Body,
        ResBody::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        let run = self.run(make_service);
        PanicAtAwait::new(async move {
            match run.await {
                Ok(report) if report.passed() => Ok(()),
                Ok(report) => Err(format!("leakwatch guard failed:\n{report}")),
                Err(error) => Err(format!("leakwatch guard could not run: {error}")),
            }
        })
    }

    /// Builds the detector, makes the service with it, drives every route and judges it.
    ///
    /// # Errors
    ///
    /// A [`GuardError`] when the settings are invalid, when the baseline file is missing,
    /// malformed or cannot be written, or when a baseline is asked for without the allocator.
    pub async fn run<S, ResBody>(
        self,
        make_service: impl FnOnce(&LeakDetector) -> S,
    ) -> Result<GuardOutcome, GuardError>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        S::Error: Into<Box<dyn Error + Send + Sync>>,
        ResBody: http_body::Body,
        ResBody::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        self.validate()?;
        let detector = self
            .builder
            .grace(Duration::ZERO)
            .confirm_sweeps(0)
            .sweep_interval(Duration::from_secs(24 * 3600))
            .memory_window((self.requests as u64 / 4).max(1))
            .build()?;
        let memory = detector.engine.memory_accounting();
        let compare_with = match &self.baseline {
            Some(_) if !memory.is_tracked() => return Err(GuardError::MemoryNotTracked),
            Some(mode) if !mode.update => Some(baseline::read(&mode.path)?),
            _ => None,
        };
        let mut service = make_service(&detector);
        let mut routes = Vec::with_capacity(self.routes.len());
        for spec in &self.routes {
            let mut verdict =
                drive(&detector, &mut service, spec, self.warmup, self.requests).await;
            verdict.budget = spec.budget.unwrap_or(self.budget);
            judge(&mut verdict, compare_with.as_ref(), self.tolerance);
            routes.push(verdict);
        }
        if let Some(mode) = self.baseline.as_ref().filter(|mode| mode.update) {
            let measured = routes
                .iter()
                .filter_map(|r| Some((r.route.clone(), r.bytes_per_request?.max(0) as u64)));
            baseline::write(&mode.path, &measured.collect())?;
        }
        Ok(GuardOutcome {
            routes,
            warmup: self.warmup,
            memory,
            baseline: self.baseline.map(|mode| (mode.path, mode.update)),
        })
    }

    fn validate(&self) -> Result<(), GuardError> {
        let invalid = |field, message: &str| {
            Err(GuardError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.routes.is_empty() {
            return invalid("route", "no route to drive: add one with `route`");
        }
        if self.requests == 0 {
            return invalid("requests", "must be at least 1");
        }
        let (_, ratio) = self.tolerance;
        if !ratio.is_finite() || ratio < 0.0 {
            return invalid("tolerance", "the ratio must be a finite number, 0 or more");
        }
        for (i, spec) in self.routes.iter().enumerate() {
            if self.routes[..i].iter().any(|r| r.route == spec.route) {
                return invalid("route", &format!("`{}` is listed twice", spec.route));
            }
        }
        Ok(())
    }
}

/// Sends a route's warm-up and measured requests and collects what they left behind.
async fn drive<B, S, ResBody>(
    detector: &LeakDetector,
    service: &mut S,
    spec: &RouteSpec<B>,
    warmup: usize,
    requests: usize,
) -> RouteVerdict
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
    ResBody: http_body::Body,
    ResBody::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let mut errors = Vec::new();
    for i in 0..warmup {
        if let Err(error) = send(service, (spec.make)(i)).await {
            errors.push(error);
        }
    }
    let figures = detector
        .engine
        .routes()
        .into_iter()
        .find(|r| r.route == spec.route);
    let before = live_bytes(figures.as_ref());
    for i in warmup..warmup + requests {
        if let Err(error) = send(service, (spec.make)(i)).await {
            errors.push(error);
        }
    }
    // The route's leak reports once its objects have settled (a task ending a little after its
    // response is not a leak).
    let engine = &detector.engine;
    let settle = engine.config.settle_timeout;
    let leaks = engine.settle(settle, |r| r.route == spec.route).await;
    let figures = engine.routes().into_iter().find(|r| r.route == spec.route);
    let after = live_bytes(figures.as_ref());
    let seen = figures.map_or(0, |r| r.finished_requests);
    let mut problems = Vec::new();
    let sent = (warmup + requests) as u64;
    if seen < sent {
        problems.push(format!(
            "the detector saw {seen} of the {sent} requests sent under this route: is the \
             template the one the service uses?"
        ));
    }
    if let Some(first) = errors.first() {
        problems.push(format!(
            "{} requests failed; the first: {first}",
            errors.len()
        ));
    }
    if !leaks.is_empty() {
        let plural = if leaks.len() == 1 { "" } else { "s" };
        problems.push(format!("{} leak report{plural}", leaks.len()));
    }
    RouteVerdict {
        route: spec.route.clone(),
        requests,
        finished_requests: seen,
        errors: errors.len(),
        bytes_per_request: before
            .zip(after)
            .map(|(before, after)| (after - before) / requests as i64),
        budget: 0,
        baseline: None,
        allowed: None,
        leaks,
        problems,
    }
}

/// Checks a driven route's bytes per request against its budget and the baseline.
fn judge(verdict: &mut RouteVerdict, baseline: Option<&Baseline>, tolerance: (u64, f64)) {
    let Some(bytes) = verdict.bytes_per_request else {
        return;
    };
    if bytes > verdict.budget as i64 {
        verdict.problems.push(format!(
            "{bytes} bytes retained per request, over the budget of {}",
            verdict.budget
        ));
    }
    let Some(baseline) = baseline else {
        return;
    };
    let Some(&before) = baseline.get(&verdict.route) else {
        verdict.problems.push(format!(
            "not in the baseline; add it by running with {BASELINE_UPDATE_ENV}=1"
        ));
        return;
    };
    let (absolute, ratio) = tolerance;
    let allowed = before + absolute.max((before as f64 * ratio) as u64);
    verdict.baseline = Some(before);
    verdict.allowed = Some(allowed);
    if bytes > allowed as i64 {
        verdict.problems.push(format!(
            "{bytes} bytes retained per request, up from {before} in the baseline (at most \
             {allowed} allowed)"
        ));
    }
}

/// Calls the service once and reads the response to its end.
async fn send<B, S, ResBody>(service: &mut S, request: Request<B>) -> Result<(), String>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
    ResBody: http_body::Body,
    ResBody::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let describe = |error: Box<dyn Error + Send + Sync>| error.to_string();
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| describe(e.into()))?;
    let response = service
        .call(request)
        .await
        .map_err(|e| describe(e.into()))?;
    let mut body = pin!(response.into_body());
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        frame.map_err(|e| describe(e.into()))?;
    }
    Ok(())
}

/// A route's live heap bytes from its figures, or `None` when memory is not tracked (a route
/// not seen yet holds none).
fn live_bytes(figures: Option<&RouteStats>) -> Option<i64> {
    match figures {
        Some(route) => route.live_bytes.map(|bytes| bytes as i64),
        None => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use std::task::{Context, Poll};

    /// Answers every request with an empty `String` body.
    #[derive(Clone)]
    struct Hello;

    impl<B> Service<Request<B>> for Hello {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<B>) -> Self::Future {
            ready(Ok(Response::new(String::new())))
        }
    }

    fn hello(i: usize) -> Request<String> {
        Request::get(format!("/hello/{i}"))
            .body(String::new())
            .unwrap()
    }

    fn guard() -> LeakGuard<String> {
        let builder = LeakDetector::builder().route_fn(|_, _| Some("/hello/{i}"));
        LeakGuard::with_detector(builder)
            .without_baseline()
            .requests(20)
            .warmup(5)
    }

    fn make(detector: &LeakDetector) -> crate::server::LeakService<Hello> {
        tower_layer::Layer::layer(&detector.layer(), Hello)
    }

    #[tokio::test]
    async fn without_the_allocator_only_reports_are_judged() {
        let report = guard().route("/hello/{i}", hello).run(make).await.unwrap();
        assert!(report.passed(), "{report}");
        assert!(!report.memory.is_tracked());
        let verdict = &report.routes[0];
        assert_eq!(
            (verdict.finished_requests, verdict.bytes_per_request),
            (25, None)
        );
        assert!(report.to_string().contains("memory: untracked"));
    }

    #[tokio::test]
    async fn a_baseline_needs_the_allocator() {
        let guarded = guard().baseline("unused").route("/hello/{i}", hello);
        let error = guarded.run(make).await.unwrap_err();
        assert!(matches!(error, GuardError::MemoryNotTracked), "{error}");
    }

    #[tokio::test]
    async fn invalid_settings_name_the_field() {
        let cases = [
            (guard(), "route"),
            (guard().route("/a", hello).route("/a", hello), "route"),
            (guard().route("/a", hello).requests(0), "requests"),
            (
                guard().route("/a", hello).tolerance(0, f64::NAN),
                "tolerance",
            ),
        ];
        for (guarded, field) in cases {
            match guarded.run(make).await {
                Err(GuardError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an invalid `{field}`, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    #[should_panic(expected = "leakwatch guard failed")]
    async fn check_panics_with_the_table() {
        guard().route("/not-the-template", hello).check(make).await;
    }
}
