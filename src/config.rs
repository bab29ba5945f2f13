//! Configuration: [`LeakDetectorBuilder`], its validation and [`ConfigError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::alloc::AllocationSites;
use crate::detector::LeakDetector;
use crate::sink::ReportSink;
use crate::trend::TrendConfig;

/// Maps a request's method and URI to a route template, for services without a router.
///
/// Returning `&'static str` keeps route names a fixed set: a raw path (with its ids and personal
/// data) cannot end up in a report or a metric label by accident.
pub(crate) type RouteFn = dyn Fn(&http::Method, &http::Uri) -> Option<&'static str> + Send + Sync;

/// The validated settings a detector runs with.
pub(crate) struct Config {
    pub(crate) grace: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) confirm_sweeps: u32,
    pub(crate) max_request_age: Duration,
    pub(crate) registry_capacity: usize,
    pub(crate) settle_timeout: Duration,
    pub(crate) memory_threshold: u64,
    pub(crate) memory_window: u64,
    pub(crate) trend: TrendConfig,
    pub(crate) route_fn: Option<Arc<RouteFn>>,
    pub(crate) ignored_routes: Vec<Box<str>>,
    pub(crate) streaming_routes: Vec<Box<str>>,
}

impl Config {
    pub(crate) fn is_ignored(&self, route: &str) -> bool {
        self.ignored_routes.iter().any(|r| &**r == route)
    }

    pub(crate) fn is_streaming(&self, route: &str) -> bool {
        self.streaming_routes.iter().any(|r| &**r == route)
    }
}

/// The largest accepted value of [`LeakDetectorBuilder::confirm_sweeps`].
pub const MAX_CONFIRM_SWEEPS: u32 = 10_000;

/// Builder for a [`LeakDetector`], made by [`LeakDetector::builder`].
///
/// Every setting has a production default; tests usually shorten the grace period and call
/// [`LeakDetector::sweep_now`] or [`LeakDetector::assert_no_leaks`] instead of waiting for the
/// timer.
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
pub struct LeakDetectorBuilder {
    grace: Duration,
    sweep_interval: Duration,
    confirm_sweeps: u32,
    max_request_age: Duration,
    registry_capacity: usize,
    settle_timeout: Duration,
    memory_threshold: u64,
    memory_window: u64,
    trend: TrendConfig,
    sites: Option<AllocationSites>,
    route_fn: Option<Arc<RouteFn>>,
    ignored_routes: Vec<Box<str>>,
    streaming_routes: Vec<Box<str>>,
    sinks: Option<Vec<Box<dyn ReportSink>>>,
}

impl Default for LeakDetectorBuilder {
    fn default() -> Self {
        LeakDetectorBuilder {
            grace: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            confirm_sweeps: 2,
            max_request_age: Duration::from_secs(60),
            registry_capacity: 100_000,
            settle_timeout: Duration::from_secs(2),
            memory_threshold: 1024,
            memory_window: 256,
            trend: TrendConfig {
                interval: Duration::from_secs(5),
                window: 12,
                relative: 0.3,
                heap_absolute: 16 << 20,
                task_absolute: 1000,
            },
            sites: None,
            route_fn: None,
            ignored_routes: Vec::new(),
            streaming_routes: Vec::new(),
            sinks: None,
        }
    }
}

impl fmt::Debug for LeakDetectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakDetectorBuilder")
            .field("grace", &self.grace)
            .field("sweep_interval", &self.sweep_interval)
            .field("confirm_sweeps", &self.confirm_sweeps)
            .field("max_request_age", &self.max_request_age)
            .field("registry_capacity", &self.registry_capacity)
            .field("settle_timeout", &self.settle_timeout)
            .field("memory_threshold", &self.memory_threshold)
            .field("memory_window", &self.memory_window)
            .field("trend", &self.trend)
            .field("sites", &self.sites)
            .field("route_fn", &self.route_fn.is_some())
            .field("ignored_routes", &self.ignored_routes)
            .field("streaming_routes", &self.streaming_routes)
            .field("sinks", &self.sinks.as_ref().map(Vec::len))
            .finish()
    }
}

impl LeakDetectorBuilder {
    /// How long an object may outlive its request before it is suspected.
    ///
    /// Default: 5 seconds. Zero is allowed (tests). Must not exceed
    /// [`max_request_age`](Self::max_request_age).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How often the background sweeper runs. Default: 1 second. Must be greater than zero.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How many further sweeps a suspected object must stay alive before it is confirmed.
    ///
    /// Default: 2. Zero confirms at the first sweep after the grace period. At most
    /// [`MAX_CONFIRM_SWEEPS`].
    pub fn confirm_sweeps(mut self, sweeps: u32) -> Self {
        self.confirm_sweeps = sweeps;
        self
    }

    /// Requests open longer than this are reported as [`StuckRequest`](crate::LeakKind::StuckRequest),
    /// unless their route is a [`streaming_route`](Self::streaming_route).
    ///
    /// Default: 60 seconds. Must be greater than zero and at least the grace period.
    pub fn max_request_age(mut self, age: Duration) -> Self {
        self.max_request_age = age;
        self
    }

    /// The most scopes and tracked objects held at once. Past it, new requests and objects go
    /// untracked and [`Stats::skipped`](crate::Stats::skipped) counts them, so the detector's own
    /// memory stays bounded.
    ///
    /// Default: 100 000. Must be greater than zero.
    pub fn registry_capacity(mut self, capacity: usize) -> Self {
        self.registry_capacity = capacity;
        self
    }

    /// How long [`LeakDetector::assert_no_leaks`] keeps re-sweeping before it gives up and
    /// panics. Default: 2 seconds. Must be greater than zero.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// Bytes a finished request must still hold to count as retaining memory (with the
    /// [`TrackingAllocator`](crate::TrackingAllocator) installed). Default: 1024. Must be
    /// greater than zero.
    pub fn memory_threshold(mut self, bytes: u64) -> Self {
        self.memory_threshold = bytes;
        self
    }

    /// How many newer requests of a route must have finished before an older request that
    /// still holds memory counts against the route. Make it larger than the capacity of any
    /// bounded cache a route fills, so that such a cache is seen to evict. Default: 256. Must
    /// be greater than zero. See the [memory module docs](crate::memory).
    pub fn memory_window(mut self, requests: u64) -> Self {
        self.memory_window = requests;
        self
    }

    /// How often the trend sampler reads the live heap, alive tasks and requests in flight.
    /// Default: 5 seconds. Must be greater than zero. See the [trend module](crate::trend).
    pub fn trend_interval(mut self, interval: Duration) -> Self {
        self.trend.interval = interval;
        self
    }

    /// How many samples the growth window spans (growth is measured from its oldest to its
    /// newest sample). Default: 12 (a minute, at the default interval). At least 2.
    pub fn trend_window(mut self, samples: usize) -> Self {
        self.trend.window = samples;
        self
    }

    /// Relative growth over the window that, together with the absolute one, raises an alert:
    /// `0.3` is 30 %. Default: 0.3. Must be a finite number greater than zero.
    pub fn growth_ratio(mut self, ratio: f64) -> Self {
        self.trend.relative = ratio;
        self
    }

    /// Live-heap growth in bytes over the window above which (together with
    /// [`growth_ratio`](Self::growth_ratio)) a [`HeapGrowth`](crate::LeakKind::HeapGrowth) is
    /// raised. Default: 16 MiB. Must be greater than zero.
    pub fn heap_growth_bytes(mut self, bytes: u64) -> Self {
        self.trend.heap_absolute = bytes;
        self
    }

    /// Growth in alive tokio tasks over the window above which (together with
    /// [`growth_ratio`](Self::growth_ratio)) a [`TaskGrowth`](crate::LeakKind::TaskGrowth) is
    /// raised. Default: 1000. Must be greater than zero.
    pub fn task_growth(mut self, tasks: u64) -> Self {
        self.trend.task_absolute = tasks;
        self
    }

    /// Samples the call stacks of requests' allocations, so that
    /// [`RetainedMemory`](crate::LeakKind::RetainedMemory) reports list where the memory was
    /// allocated. Needs the [`TrackingAllocator`](crate::TrackingAllocator). The setting is
    /// process-wide (the allocator is one static): the last detector built with it wins.
    ///
    /// Default: [`AllocationSites::Off`]. A sampled mean must be greater than zero.
    pub fn allocation_sites(mut self, sites: AllocationSites) -> Self {
        self.sites = Some(sites);
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
        self.route_fn = Some(Arc::new(route_fn));
        self
    }

    /// Does not track requests to this route template (health checks, metrics scrapes, the
    /// snapshot endpoint). Such requests take a path that allocates nothing.
    pub fn ignore_route(mut self, route: impl Into<String>) -> Self {
        self.ignored_routes.push(route.into().into_boxed_str());
        self
    }

    /// Allows requests on this route template to stay open longer than
    /// [`max_request_age`](Self::max_request_age) (server-sent events, long polling, streaming
    /// downloads). Objects they leave behind are still judged once they end.
    pub fn streaming_route(mut self, route: impl Into<String>) -> Self {
        self.streaming_routes.push(route.into().into_boxed_str());
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

    /// Validates the settings and builds the detector.
    ///
    /// If called inside a tokio runtime, the background sweeper starts at once; otherwise it
    /// starts with the first request the layer sees inside a runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field.
    pub fn build(self) -> Result<LeakDetector, ConfigError> {
        self.validate()?;
        let sinks = self.sinks.unwrap_or_else(crate::sink::default_sinks);
        let config = Config {
            grace: self.grace,
            sweep_interval: self.sweep_interval,
            confirm_sweeps: self.confirm_sweeps,
            max_request_age: self.max_request_age,
            registry_capacity: self.registry_capacity,
            settle_timeout: self.settle_timeout,
            memory_threshold: self.memory_threshold,
            memory_window: self.memory_window,
            trend: self.trend,
            route_fn: self.route_fn,
            ignored_routes: self.ignored_routes,
            streaming_routes: self.streaming_routes,
        };
        if let Some(sites) = self.sites {
            crate::alloc::configure_sites(sites);
        }
        Ok(LeakDetector::from_parts(config, sinks))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::new(
                "sweep_interval",
                "must be greater than zero",
            ));
        }
        if self.registry_capacity == 0 {
            return Err(ConfigError::new(
                "registry_capacity",
                "must be greater than zero",
            ));
        }
        if self.max_request_age.is_zero() {
            return Err(ConfigError::new(
                "max_request_age",
                "must be greater than zero",
            ));
        }
        if self.grace > self.max_request_age {
            return Err(ConfigError::new(
                "grace",
                format!(
                    "must not exceed max_request_age ({:?} > {:?})",
                    self.grace, self.max_request_age
                ),
            ));
        }
        if self.confirm_sweeps > MAX_CONFIRM_SWEEPS {
            return Err(ConfigError::new(
                "confirm_sweeps",
                format!("must be at most {MAX_CONFIRM_SWEEPS}"),
            ));
        }
        if self.settle_timeout.is_zero() {
            return Err(ConfigError::new(
                "settle_timeout",
                "must be greater than zero",
            ));
        }
        if self.memory_threshold == 0 {
            return Err(ConfigError::new(
                "memory_threshold",
                "must be greater than zero",
            ));
        }
        if self.memory_window == 0 {
            return Err(ConfigError::new(
                "memory_window",
                "must be greater than zero",
            ));
        }
        if self.trend.interval.is_zero() {
            return Err(ConfigError::new(
                "trend_interval",
                "must be greater than zero",
            ));
        }
        if self.trend.window < 2 {
            return Err(ConfigError::new(
                "trend_window",
                "must be at least 2 samples",
            ));
        }
        if !(self.trend.relative.is_finite() && self.trend.relative > 0.0) {
            return Err(ConfigError::new(
                "growth_ratio",
                format!(
                    "must be a finite number greater than zero, not {}",
                    self.trend.relative
                ),
            ));
        }
        if self.trend.heap_absolute == 0 {
            return Err(ConfigError::new(
                "heap_growth_bytes",
                "must be greater than zero",
            ));
        }
        if let Some(AllocationSites::Sampled { mean_bytes: 0 }) = self.sites {
            return Err(ConfigError::new(
                "allocation_sites",
                "a sampled mean must be greater than zero bytes",
            ));
        }
        if self.trend.task_absolute == 0 {
            return Err(ConfigError::new("task_growth", "must be greater than zero"));
        }
        for (field, routes) in [
            ("ignore_route", &self.ignored_routes),
            ("streaming_route", &self.streaming_routes),
        ] {
            if let Some(bad) = routes.iter().find(|r| !is_route_template(r)) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{bad:?} is not a route template (it must start with '/' or be \"{}\")",
                        crate::route::UNMATCHED
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_route_template(route: &str) -> bool {
    route == crate::route::UNMATCHED || (route.starts_with('/') && !route.contains('?'))
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
        let b = LeakDetectorBuilder::default().confirm_sweeps(MAX_CONFIRM_SWEEPS + 1);
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
    fn zero_sampling_mean_is_rejected() {
        let b = LeakDetectorBuilder::default()
            .allocation_sites(AllocationSites::Sampled { mean_bytes: 0 });
        assert_eq!(field_of(b), "allocation_sites");
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
