//! Configuration: [`LeakDetectorBuilder`], its defaults and validation, and [`ConfigError`].
//!
//! The builder only gathers and checks settings; [`LeakDetectorBuilder::build`] (with the
//! detector) turns them into a running detector.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::report::ReportSink;
use crate::request::route::{RouteFn, UNMATCHED};

/// Every setting of a detector, declared once: the builder wraps it, validation reads it, and
/// the engine runs with it once [`LeakDetectorBuilder::build`] has checked it.
///
/// A new setting is a field here, its default in [`Default`] (an associated `DEFAULT_…`
/// constant of the builder), a setter, and — when some values are invalid — a row in
/// [`LeakDetectorBuilder::validate`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) grace: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) confirm_sweeps: u32,
    pub(crate) max_request_age: Duration,
    pub(crate) registry_capacity: usize,
    pub(crate) settle_timeout: Duration,
    pub(crate) memory_threshold: u64,
    pub(crate) memory_window: u64,
    pub(crate) dependency_growth_span: Duration,
    pub(crate) trend: TrendConfig,
    pub(crate) route_fn: Option<RouteFnBox>,
    pub(crate) ignored_routes: Vec<Box<str>>,
    pub(crate) streaming_routes: Vec<Box<str>>,
    pub(crate) ignored_spawns: Vec<Box<str>>,
}

impl Default for Config {
    fn default() -> Self {
        type B = LeakDetectorBuilder;
        Config {
            grace: B::DEFAULT_GRACE,
            sweep_interval: B::DEFAULT_SWEEP_INTERVAL,
            confirm_sweeps: B::DEFAULT_CONFIRM_SWEEPS,
            max_request_age: B::DEFAULT_MAX_REQUEST_AGE,
            registry_capacity: B::DEFAULT_REGISTRY_CAPACITY,
            settle_timeout: B::DEFAULT_SETTLE_TIMEOUT,
            memory_threshold: B::DEFAULT_MEMORY_THRESHOLD,
            memory_window: B::DEFAULT_MEMORY_WINDOW,
            dependency_growth_span: B::DEFAULT_DEPENDENCY_GROWTH_SPAN,
            trend: TrendConfig {
                interval: B::DEFAULT_TREND_INTERVAL,
                window: B::DEFAULT_TREND_WINDOW,
                growth_ratio: B::DEFAULT_GROWTH_RATIO,
                heap_growth_bytes: B::DEFAULT_HEAP_GROWTH_BYTES,
                task_growth: B::DEFAULT_TASK_GROWTH,
            },
            route_fn: None,
            ignored_routes: Vec::new(),
            streaming_routes: Vec::new(),
            ignored_spawns: Vec::new(),
        }
    }
}

/// The user's route function, shown as `<fn>` in `Debug`.
#[derive(Clone)]
pub(crate) struct RouteFnBox(pub(crate) Arc<RouteFn>);

impl fmt::Debug for RouteFnBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<fn>")
    }
}

/// The trend sampler's settings.
#[derive(Clone, Debug)]
pub(crate) struct TrendConfig {
    pub(crate) interval: Duration,
    pub(crate) window: usize,
    pub(crate) growth_ratio: f64,
    pub(crate) heap_growth_bytes: u64,
    pub(crate) task_growth: u64,
}

/// Builder for a [`LeakDetector`](crate::LeakDetector), made by
/// [`LeakDetector::builder`](crate::LeakDetector::builder).
///
/// Every setting has a production default (an associated constant, `DEFAULT_…`); tests usually
/// shorten the grace period and call [`sweep_now`](crate::LeakDetector::sweep_now) or
/// [`assert_no_leaks`](crate::LeakDetector::assert_no_leaks) instead of waiting for the timer.
///
/// ```
/// use std::time::Duration;
///
/// let detector = leakwatch::LeakDetector::builder()
///     .grace(Duration::from_millis(200))
///     .sweep_interval(Duration::from_millis(100))
///     .confirm_sweeps(1)
///     .ignore_route("/health")
///     .build()
///     .expect("valid configuration");
/// # drop(detector);
/// ```
#[must_use = "a builder does nothing until `build()` is called"]
#[derive(Default)]
pub struct LeakDetectorBuilder {
    config: Config,
    /// `None` until a sink is added: the default sinks are then used.
    sinks: Option<Vec<Box<dyn ReportSink>>>,
}

impl fmt::Debug for LeakDetectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakDetectorBuilder")
            .field("config", &self.config)
            .field("sinks", &self.sinks.as_ref().map(Vec::len))
            .finish()
    }
}

impl LeakDetectorBuilder {
    /// Default [`grace`](Self::grace): 5 seconds.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
    /// Default [`sweep_interval`](Self::sweep_interval): 1 second.
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
    /// Default [`confirm_sweeps`](Self::confirm_sweeps): 2.
    pub const DEFAULT_CONFIRM_SWEEPS: u32 = 2;
    /// The largest accepted [`confirm_sweeps`](Self::confirm_sweeps): 10 000.
    pub const MAX_CONFIRM_SWEEPS: u32 = 10_000;
    /// Default [`max_request_age`](Self::max_request_age): 60 seconds.
    pub const DEFAULT_MAX_REQUEST_AGE: Duration = Duration::from_secs(60);
    /// Default [`registry_capacity`](Self::registry_capacity): 100 000 scopes and objects.
    pub const DEFAULT_REGISTRY_CAPACITY: usize = 100_000;
    /// Default [`settle_timeout`](Self::settle_timeout): 2 seconds.
    pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default [`memory_threshold`](Self::memory_threshold): 1 byte — any request still holding
    /// memory can witness for its route; whether that memory is a leak is decided by how the
    /// route's memory grows, not by a size.
    pub const DEFAULT_MEMORY_THRESHOLD: u64 = 1;
    /// Default [`memory_window`](Self::memory_window): 256 requests.
    pub const DEFAULT_MEMORY_WINDOW: u64 = 256;
    /// Default [`dependency_growth_span`](Self::dependency_growth_span): 10 minutes — past a
    /// metrics recorder's upkeep (every 5 s), a batch exporter's flush (5 s) and the minutes a
    /// lock-free structure's deferred garbage can wait.
    pub const DEFAULT_DEPENDENCY_GROWTH_SPAN: Duration = Duration::from_secs(600);
    /// Default [`trend_interval`](Self::trend_interval): 5 seconds.
    pub const DEFAULT_TREND_INTERVAL: Duration = Duration::from_secs(5);
    /// Default [`trend_window`](Self::trend_window): 12 samples.
    pub const DEFAULT_TREND_WINDOW: usize = 12;
    /// Default [`growth_ratio`](Self::growth_ratio): 0.3 (30 %).
    pub const DEFAULT_GROWTH_RATIO: f64 = 0.3;
    /// Default [`heap_growth_bytes`](Self::heap_growth_bytes): 16 MiB.
    pub const DEFAULT_HEAP_GROWTH_BYTES: u64 = 16 << 20;
    /// Default [`task_growth`](Self::task_growth): 1 000 tasks.
    pub const DEFAULT_TASK_GROWTH: u64 = 1000;

    /// How long an object may outlive its request before it is suspected.
    ///
    /// Default: [`DEFAULT_GRACE`](Self::DEFAULT_GRACE). Zero is allowed (tests). Must not
    /// exceed [`max_request_age`](Self::max_request_age).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.config.grace = grace;
        self
    }

    /// How often the background sweeper runs. Default:
    /// [`DEFAULT_SWEEP_INTERVAL`](Self::DEFAULT_SWEEP_INTERVAL). Must be greater than zero.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.config.sweep_interval = interval;
        self
    }

    /// How many further sweeps a suspected object must stay alive before it is confirmed.
    ///
    /// Default: [`DEFAULT_CONFIRM_SWEEPS`](Self::DEFAULT_CONFIRM_SWEEPS). Zero confirms at the
    /// first sweep after the grace period. At most [`MAX_CONFIRM_SWEEPS`](Self::MAX_CONFIRM_SWEEPS).
    pub fn confirm_sweeps(mut self, sweeps: u32) -> Self {
        self.config.confirm_sweeps = sweeps;
        self
    }

    /// Requests open longer than this are reported as [`StuckRequest`](crate::LeakKind::StuckRequest),
    /// unless their route is a [`streaming_route`](Self::streaming_route).
    ///
    /// Default: [`DEFAULT_MAX_REQUEST_AGE`](Self::DEFAULT_MAX_REQUEST_AGE). Must be greater than
    /// zero and at least the grace period.
    pub fn max_request_age(mut self, age: Duration) -> Self {
        self.config.max_request_age = age;
        self
    }

    /// The most scopes and tracked objects held at once. Past it, new requests and objects go
    /// untracked and [`Uncounted::registry_entries`](crate::stats::Uncounted::registry_entries)
    /// counts them, so the detector's own memory stays bounded.
    ///
    /// Default: [`DEFAULT_REGISTRY_CAPACITY`](Self::DEFAULT_REGISTRY_CAPACITY). Must be greater
    /// than zero.
    pub fn registry_capacity(mut self, capacity: usize) -> Self {
        self.config.registry_capacity = capacity;
        self
    }

    /// How long [`LeakDetector::assert_no_leaks`](crate::LeakDetector::assert_no_leaks) keeps
    /// re-sweeping before it gives up and panics. Default:
    /// [`DEFAULT_SETTLE_TIMEOUT`](Self::DEFAULT_SETTLE_TIMEOUT). Must be greater than zero.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.config.settle_timeout = timeout;
        self
    }

    /// Bytes a finished request must still hold to count as retaining memory — to become one of
    /// its route's witnesses (with the [`TrackingAllocator`](crate::TrackingAllocator)
    /// installed). Raising it only ignores requests that keep less; a route is reported by how
    /// its memory grows with its requests, whatever the size. Default:
    /// [`DEFAULT_MEMORY_THRESHOLD`](Self::DEFAULT_MEMORY_THRESHOLD). Must be greater than zero.
    pub fn memory_threshold(mut self, bytes: u64) -> Self {
        self.config.memory_threshold = bytes;
        self
    }

    /// How many newer requests of a route must have finished before an older request that
    /// still holds memory counts against the route. Make it larger than the capacity of any
    /// bounded cache a route fills, so that such a cache is seen to evict. Default:
    /// [`DEFAULT_MEMORY_WINDOW`](Self::DEFAULT_MEMORY_WINDOW). Must be greater than zero. See
    /// [retained memory](crate#retained-memory) in the crate docs.
    pub fn memory_window(mut self, requests: u64) -> Self {
        self.config.memory_window = requests;
        self
    }

    /// How long a route's memory must keep growing with its requests, window after window,
    /// before it is reported when it is not plainly the user's: memory a dependency allocated
    /// (a span buffer, a metrics bucket, an epoch's garbage, a pool's buffers), which a library
    /// frees on its own schedule — on a timer, not per request — and growth that no request
    /// witnesses when allocation sites cannot tell whose it is. Memory the user's code
    /// allocated is judged by requests alone. Default:
    /// [`DEFAULT_DEPENDENCY_GROWTH_SPAN`](Self::DEFAULT_DEPENDENCY_GROWTH_SPAN); zero judges by
    /// requests alone (tests). See [whose memory](crate#whose-memory) in the crate docs.
    pub fn dependency_growth_span(mut self, span: Duration) -> Self {
        self.config.dependency_growth_span = span;
        self
    }

    /// How often the trend sampler reads the live heap, alive tasks and requests in flight.
    /// Default: [`DEFAULT_TREND_INTERVAL`](Self::DEFAULT_TREND_INTERVAL). Must be greater than
    /// zero. See [trend alerts](crate#trend-alerts) in the crate docs.
    pub fn trend_interval(mut self, interval: Duration) -> Self {
        self.config.trend.interval = interval;
        self
    }

    /// How many samples the growth window spans (growth is measured from its oldest to its
    /// newest sample). Default: [`DEFAULT_TREND_WINDOW`](Self::DEFAULT_TREND_WINDOW) (a minute,
    /// at the default interval). At least 2.
    pub fn trend_window(mut self, samples: usize) -> Self {
        self.config.trend.window = samples;
        self
    }

    /// Relative growth over the window that, together with the absolute one, raises an alert:
    /// `0.3` is 30 %. Default: [`DEFAULT_GROWTH_RATIO`](Self::DEFAULT_GROWTH_RATIO). Must be a
    /// finite number greater than zero.
    pub fn growth_ratio(mut self, ratio: f64) -> Self {
        self.config.trend.growth_ratio = ratio;
        self
    }

    /// Live-heap growth in bytes over the window above which (together with
    /// [`growth_ratio`](Self::growth_ratio)) a [`HeapGrowth`](crate::LeakKind::HeapGrowth) is
    /// raised. Default: [`DEFAULT_HEAP_GROWTH_BYTES`](Self::DEFAULT_HEAP_GROWTH_BYTES). Must be
    /// greater than zero.
    pub fn heap_growth_bytes(mut self, bytes: u64) -> Self {
        self.config.trend.heap_growth_bytes = bytes;
        self
    }

    /// Growth in alive tokio tasks over the window above which (together with
    /// [`growth_ratio`](Self::growth_ratio)) a [`TaskGrowth`](crate::LeakKind::TaskGrowth) is
    /// raised. Default: [`DEFAULT_TASK_GROWTH`](Self::DEFAULT_TASK_GROWTH). Must be greater than
    /// zero.
    pub fn task_growth(mut self, tasks: u64) -> Self {
        self.config.trend.task_growth = tasks;
        self
    }

    /// Names routes for services without a router (plain hyper or tower).
    ///
    /// With the `axum` feature, axum's `MatchedPath` is used first; the function is asked only
    /// when there is none. Returning `None` names the route `"<unmatched>"`. The name is a
    /// `&'static str` so that a raw path can never become a route name.
    ///
    /// ```
    /// let detector = leakwatch::LeakDetector::builder()
    ///     .route_fn(|_method, uri| match uri.path() {
    ///         "/" => Some("/"),
    ///         p if p.starts_with("/users/") => Some("/users/{id}"),
    ///         _ => None,
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(detector);
    /// ```
    pub fn route_fn<F>(mut self, route_fn: F) -> Self
    where
        F: Fn(&http::Method, &http::Uri) -> Option<&'static str> + Send + Sync + 'static,
    {
        self.config.route_fn = Some(RouteFnBox(Arc::new(route_fn)));
        self
    }

    /// Does not track requests to this route template (health checks, metrics scrapes, the
    /// snapshot endpoint). Such requests take a path that allocates nothing.
    pub fn ignore_route(mut self, route: impl Into<String>) -> Self {
        self.config
            .ignored_routes
            .push(route.into().into_boxed_str());
        self
    }

    /// Allows requests on this route template to stay open longer than
    /// [`max_request_age`](Self::max_request_age) (server-sent events, long polling, streaming
    /// downloads). Objects they leave behind are still judged once they end.
    pub fn streaming_route(mut self, route: impl Into<String>) -> Self {
        self.config
            .streaming_routes
            .push(route.into().into_boxed_str());
        self
    }

    /// Does not track tasks spawned at a location matching `pattern`: a path prefix of the
    /// spawn's file (`"src/jobs/"`), or of one of its components (`"moka-"` matches every file of
    /// the `moka` crate under cargo's registry). goleak's `IgnoreTopFunction`, for what the
    /// rules cannot know: a task a dependency spawns is already judged by growth, and work your
    /// own code starts for the whole process is better wrapped in
    /// [`detach`](crate::detach) or spawned with [`spawn_detached`](crate::spawn_detached).
    ///
    /// ```
    /// let detector = leakwatch::LeakDetector::builder()
    ///     .ignore_spawned_at("src/background/")
    ///     .build()
    ///     .unwrap();
    /// # drop(detector);
    /// ```
    pub fn ignore_spawned_at(mut self, pattern: impl Into<String>) -> Self {
        self.config
            .ignored_spawns
            .push(pattern.into().into_boxed_str());
        self
    }

    /// Adds a sink that receives every report.
    ///
    /// The first call replaces the default sink (the [`TracingSink`](crate::sink::TracingSink)
    /// when the `tracing` feature is on); add it back explicitly to keep it.
    pub fn sink(mut self, sink: impl ReportSink) -> Self {
        self.sinks.get_or_insert_with(Vec::new).push(Box::new(sink));
        self
    }

    /// Checks every setting; returns the validated configuration and the sinks, `None` when
    /// none was added (the default sinks are then used).
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_parts(
        self,
    ) -> Result<(Config, Option<Vec<Box<dyn ReportSink>>>), ConfigError> {
        self.validate()?;
        Ok((self.config, self.sinks))
    }

    /// The first invalid setting, if any.
    fn validate(&self) -> Result<(), ConfigError> {
        let config = &self.config;
        let trend = &config.trend;
        let zero = [
            ("sweep_interval", config.sweep_interval.is_zero()),
            ("registry_capacity", config.registry_capacity == 0),
            ("max_request_age", config.max_request_age.is_zero()),
            ("settle_timeout", config.settle_timeout.is_zero()),
            ("memory_threshold", config.memory_threshold == 0),
            ("memory_window", config.memory_window == 0),
            ("trend_interval", trend.interval.is_zero()),
            ("heap_growth_bytes", trend.heap_growth_bytes == 0),
            ("task_growth", trend.task_growth == 0),
        ];
        if let Some((field, _)) = zero.into_iter().find(|&(_, zero)| zero) {
            return Err(ConfigError::new(field, "must be greater than zero"));
        }
        let rules: [(&'static str, bool, &dyn Fn() -> String); 4] = [
            ("grace", config.grace <= config.max_request_age, &|| {
                format!(
                    "must not exceed max_request_age ({:?} > {:?})",
                    config.grace, config.max_request_age
                )
            }),
            (
                "confirm_sweeps",
                config.confirm_sweeps <= Self::MAX_CONFIRM_SWEEPS,
                &|| format!("must be at most {}", Self::MAX_CONFIRM_SWEEPS),
            ),
            ("trend_window", trend.window >= 2, &|| {
                "must be at least 2 samples".to_owned()
            }),
            (
                "growth_ratio",
                trend.growth_ratio.is_finite() && trend.growth_ratio > 0.0,
                &|| {
                    format!(
                        "must be a finite number greater than zero, not {}",
                        trend.growth_ratio
                    )
                },
            ),
        ];
        if let Some((field, _, message)) = rules.into_iter().find(|(_, ok, _)| !ok) {
            return Err(ConfigError::new(field, message()));
        }
        if config.ignored_spawns.iter().any(|p| p.trim().is_empty()) {
            return Err(ConfigError::new(
                "ignore_spawned_at",
                "an empty pattern would ignore every task",
            ));
        }
        for (field, routes) in [
            ("ignore_route", &config.ignored_routes),
            ("streaming_route", &config.streaming_routes),
        ] {
            if let Some(bad) = routes.iter().find(|r| !is_route_template(r)) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{bad:?} is not a route template (it must start with '/' or be \"{UNMATCHED}\")"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_route_template(route: &str) -> bool {
    route == UNMATCHED || (route.starts_with('/') && !route.contains('?'))
}

/// An invalid setting, rejected by [`LeakDetectorBuilder::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            field,
            message: message.into(),
        }
    }

    /// The builder setting that was rejected (`"sweep_interval"`, `"grace"`, …).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid leakwatch configuration: `{}` {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(builder: LeakDetectorBuilder) -> &'static str {
        builder.validate().unwrap_err().field()
    }

    #[test]
    fn defaults_are_valid() {
        LeakDetectorBuilder::default().validate().unwrap();
    }

    #[test]
    fn zero_sweep_interval_is_rejected() {
        let b = LeakDetectorBuilder::default().sweep_interval(Duration::ZERO);
        assert_eq!(field_of(b), "sweep_interval");
    }

    #[test]
    fn zero_capacity_is_rejected() {
        let b = LeakDetectorBuilder::default().registry_capacity(0);
        assert_eq!(field_of(b), "registry_capacity");
    }

    #[test]
    fn grace_longer_than_max_request_age_is_rejected() {
        let b = LeakDetectorBuilder::default()
            .grace(Duration::from_secs(10))
            .max_request_age(Duration::from_secs(5));
        let err = b.validate().unwrap_err();
        assert_eq!(err.field(), "grace");
        assert!(err.to_string().contains("`grace`"), "{err}");
        assert!(err.to_string().contains("max_request_age"), "{err}");
    }

    #[test]
    fn zero_max_request_age_is_rejected() {
        let b = LeakDetectorBuilder::default()
            .grace(Duration::ZERO)
            .max_request_age(Duration::ZERO);
        assert_eq!(field_of(b), "max_request_age");
    }

    #[test]
    fn too_many_confirm_sweeps_are_rejected() {
        let b = LeakDetectorBuilder::default()
            .confirm_sweeps(LeakDetectorBuilder::MAX_CONFIRM_SWEEPS + 1);
        assert_eq!(field_of(b), "confirm_sweeps");
        LeakDetectorBuilder::default()
            .confirm_sweeps(0)
            .validate()
            .unwrap();
    }

    #[test]
    fn zero_settle_timeout_is_rejected() {
        let b = LeakDetectorBuilder::default().settle_timeout(Duration::ZERO);
        assert_eq!(field_of(b), "settle_timeout");
    }

    #[test]
    fn zero_memory_settings_are_rejected() {
        let b = LeakDetectorBuilder::default().memory_threshold(0);
        assert_eq!(field_of(b), "memory_threshold");
        let b = LeakDetectorBuilder::default().memory_window(0);
        assert_eq!(field_of(b), "memory_window");
    }

    #[test]
    fn invalid_trend_settings_are_rejected() {
        let b = LeakDetectorBuilder::default().trend_interval(Duration::ZERO);
        assert_eq!(field_of(b), "trend_interval");
        let b = LeakDetectorBuilder::default().trend_window(1);
        assert_eq!(field_of(b), "trend_window");
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let b = LeakDetectorBuilder::default().growth_ratio(ratio);
            assert_eq!(field_of(b), "growth_ratio");
        }
        let b = LeakDetectorBuilder::default().heap_growth_bytes(0);
        assert_eq!(field_of(b), "heap_growth_bytes");
        let b = LeakDetectorBuilder::default().task_growth(0);
        assert_eq!(field_of(b), "task_growth");
    }

    #[test]
    fn raw_paths_are_not_route_templates() {
        let b = LeakDetectorBuilder::default().ignore_route("health");
        assert_eq!(field_of(b), "ignore_route");
        let b = LeakDetectorBuilder::default().streaming_route("/events?x=1");
        assert_eq!(field_of(b), "streaming_route");
        LeakDetectorBuilder::default()
            .ignore_route("/health")
            .streaming_route("/events/{id}")
            .ignore_route("<unmatched>")
            .validate()
            .unwrap();
    }

    #[test]
    fn zero_grace_is_allowed() {
        LeakDetectorBuilder::default()
            .grace(Duration::ZERO)
            .validate()
            .unwrap();
    }
}
