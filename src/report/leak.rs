//! [`LeakReport`], what it is about ([`LeakKind`]) and where it stands ([`LeakState`]).

use std::fmt;
use std::time::{Duration, SystemTime};

#[cfg(feature = "serde")]
use super::ser;
use super::{AllocationSite, SourceLocation, Upstream};

/// What kind of object outlived its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum LeakKind {
    /// A task spawned by the request (through [`crate::spawn`] or [`crate::scoped`]) is still
    /// running after the request finished: the tokio form of a goroutine leak.
    OrphanTask,
    /// The request body — or an upstream's response body, with
    /// [`client_layer`](crate::LeakDetector::client_layer) — was dropped before its end with
    /// data left unread. A hygiene finding: the connection has to be closed instead of reused.
    UnconsumedBody,
    /// A request body — or an upstream's response body, with
    /// [`client_layer`](crate::LeakDetector::client_layer) — is still alive after the request
    /// finished: it was moved into a task or a global.
    RetainedBody,
    /// An object passed to [`crate::watch`] is still alive after the request finished.
    WatchedObject,
    /// A request has been open for longer than the configured maximum request age.
    StuckRequest,
    /// A route's requests keep heap memory after they finished, and old requests still hold it
    /// after many newer ones came and went. Needs the [`TrackingAllocator`](crate::TrackingAllocator).
    RetainedMemory,
    /// The process's live heap grew by more than the configured relative and absolute
    /// thresholds over the trend window. Not tied to a request.
    HeapGrowth,
    /// The runtime's alive tasks grew by more than the configured thresholds over the trend
    /// window. Not tied to a request.
    TaskGrowth,
}

impl LeakKind {
    /// Every kind, in declaration order. A slice, so that a kind added later is not a breaking
    /// change.
    pub const ALL: &'static [LeakKind] = &[
        LeakKind::OrphanTask,
        LeakKind::UnconsumedBody,
        LeakKind::RetainedBody,
        LeakKind::WatchedObject,
        LeakKind::StuckRequest,
        LeakKind::RetainedMemory,
        LeakKind::HeapGrowth,
        LeakKind::TaskGrowth,
    ];

    /// The kind's name, as used in logs and metrics (`"OrphanTask"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            LeakKind::OrphanTask => "OrphanTask",
            LeakKind::UnconsumedBody => "UnconsumedBody",
            LeakKind::RetainedBody => "RetainedBody",
            LeakKind::WatchedObject => "WatchedObject",
            LeakKind::StuckRequest => "StuckRequest",
            LeakKind::RetainedMemory => "RetainedMemory",
            LeakKind::HeapGrowth => "HeapGrowth",
            LeakKind::TaskGrowth => "TaskGrowth",
        }
    }

    /// How many kinds there are.
    pub(crate) const COUNT: usize = Self::ALL.len();

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for LeakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a report stands in its life cycle.
///
/// `Suspected` → `Confirmed` while the object stays alive; `Released` once an object that was
/// reported is freed after all (so a false positive is visible rather than silently dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum LeakState {
    /// Alive after the request's scope closed and the grace period passed.
    Suspected,
    /// Still alive the configured number of sweeps after it was first suspected (or a one-shot
    /// finding such as [`LeakKind::UnconsumedBody`]). Reported once.
    ///
    /// An [`OrphanTask`](LeakKind::OrphanTask) whose spawn line has left orphans in no other
    /// request of its route stays `Suspected` however long it lives — it could be a worker
    /// started once, such as a refresher a `OnceCell` initialiser starts — until a second
    /// request leaves one from the same line ([`crate::detach`] marks a worker started on
    /// purpose).
    Confirmed,
    /// Freed after it had been reported.
    Released,
}

impl LeakState {
    /// The state's name (`"Suspected"`, `"Confirmed"`, `"Released"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LeakState::Suspected => "Suspected",
            LeakState::Confirmed => "Confirmed",
            LeakState::Released => "Released",
        }
    }

    /// `true` for `Suspected` and `Confirmed`: the object is still alive.
    pub const fn is_active(self) -> bool {
        !matches!(self, LeakState::Released)
    }
}

impl fmt::Display for LeakState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: an object that outlived its request, or a request that never ended.
///
/// Reports are plain data: cloning one is cheap enough for sinks and tests, and its
/// [`Display`](fmt::Display) form is one readable line.
///
/// ```
/// use leakwatch::{LeakKind, LeakState};
/// # fn show(report: &leakwatch::LeakReport) {
/// if report.kind == LeakKind::OrphanTask && report.state == LeakState::Confirmed {
///     println!("{report}"); // OrphanTask [Confirmed] GET /jobs/{id} request_id=… spawned at src/jobs.rs:42 …
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LeakReport {
    /// Identifier of the tracked object, unique within one detector. The `Suspected`,
    /// `Confirmed` and `Released` reports of one object share it.
    pub id: u64,
    /// What leaked.
    pub kind: LeakKind,
    /// The state this report announces.
    pub state: LeakState,
    /// The route template of the request (`/users/{id}`), or one of the names in
    /// [`crate::route`] (`"<unmatched>"` when none is known). Never the raw path. For a unit
    /// of work ([`unit`](Self::unit)), the unit's name.
    pub route: String,
    /// The request's HTTP method; empty for a unit of work and a report about the process.
    pub method: String,
    /// Whether the report is about a unit of work opened with
    /// [`LeakDetector::scope`](crate::LeakDetector::scope) (a test, a queue message, a job)
    /// rather than an HTTP request: [`route`](Self::route) is then the unit's name, labelled
    /// `leakwatch.unit` instead of `http.route` in `tracing` events and OpenTelemetry, and
    /// [`request_id`](Self::request_id) and [`request_number`](Self::request_number) are the
    /// unit's.
    pub unit: bool,
    /// The request id: the incoming `x-request-id` when it was well formed, else a generated one.
    pub request_id: String,
    /// The request's trace id (32 hex digits), from its `tracing` span or its `traceparent`
    /// header (feature `otel`).
    pub trace_id: Option<String>,
    /// The id of the request's span (16 hex digits): the parent of its leak spans.
    pub span_id: Option<String>,
    /// The request's number: unique within its detector and increasing in the order requests
    /// arrive (0 for reports about the whole process).
    pub request_number: u64,
    /// When the request started (wall clock).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::unix_millis"))]
    pub opened_at: SystemTime,
    /// When the request's scope closed (its response finished or was dropped); `None` for a
    /// request that is still open ([`LeakKind::StuckRequest`]).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::opt_unix_millis"))]
    pub closed_at: Option<SystemTime>,
    /// When the sweeper made this report (wall clock).
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::unix_millis"))]
    pub detected_at: SystemTime,
    /// How long the object has outlived its request (detection − scope close); for a stuck
    /// request, how long it has been open.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::millis"))]
    pub age: Duration,
    /// Where the task was spawned or the object watched.
    pub location: Option<SourceLocation>,
    /// The Rust type of the watched object or spawned future, when known.
    pub type_name: Option<&'static str>,
    /// Heap bytes still held: for [`RetainedMemory`](LeakKind::RetainedMemory), by all of the
    /// route's requests; for other kinds, by this report's request while its memory is still
    /// counted. `None` when memory is not tracked (the allocator is not installed) — which is
    /// not the same as zero.
    pub bytes: Option<u64>,
    /// Heap blocks still held, counted like [`bytes`](Self::bytes).
    pub allocations: Option<u64>,
    /// Whether [`bytes`](Self::bytes), [`allocations`](Self::allocations) and
    /// [`bytes_per_request`](Self::bytes_per_request) are estimates from sampled blocks (the
    /// allocator is in [sampled mode](crate::TrackingAllocator::sampled)) rather than exact.
    pub bytes_estimated: bool,
    /// For [`RetainedMemory`](LeakKind::RetainedMemory): the bytes each old request still holds,
    /// on average.
    pub bytes_per_request: Option<u64>,
    /// For [`RetainedMemory`](LeakKind::RetainedMemory) with allocation sites on: where the
    /// route's retained memory was allocated, most bytes first; at most
    /// [`MAX_SITES`](Self::MAX_SITES).
    pub sites: Vec<AllocationSite>,
    /// For an [`OrphanTask`](LeakKind::OrphanTask): where the task is stuck — the await points
    /// of its future, outermost first, one per line, as a tokio task dump traces them (the
    /// handler's `async fn`, then the call it awaits, such as `Receiver::recv` or `sleep`).
    /// At most [`MAX_AWAIT_TRACE`](Self::MAX_AWAIT_TRACE) bytes.
    ///
    /// Only with `--cfg tokio_unstable` and the feature `taskdump`, on Linux (`aarch64`, `x86`,
    /// `x86_64`, `s390x`), and once the dump taken after the task was first reported has
    /// arrived; `None` otherwise.
    pub await_trace: Option<String>,
    /// For a report about an outgoing call (made through
    /// [`LeakDetector::client_layer`](crate::LeakDetector::client_layer)): the upstream it went
    /// to. The report's route, method and request id are then those of the server request that
    /// made the call, when there is one.
    pub upstream: Option<Upstream>,
    /// A human-readable explanation (bytes read from a body, how long a task ran, …).
    pub detail: String,
}

impl LeakReport {
    /// The most allocation [`sites`](Self::sites) a report lists.
    pub const MAX_SITES: usize = 5;

    /// The attribute [`route`](Self::route) is recorded under: `leakwatch.unit` for a unit of
    /// work, `http.route` otherwise.
    #[cfg(feature = "otel")]
    pub(crate) fn route_label(&self) -> &'static str {
        match self.unit {
            true => "leakwatch.unit",
            false => "http.route",
        }
    }

    /// The longest [`await_trace`](Self::await_trace), in bytes; a longer one is cut at a line
    /// end and marked `…`.
    pub const MAX_AWAIT_TRACE: usize = 4096;
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A unit of work has no method: the word `unit` stands where it would be.
        let method = if self.unit { "unit" } else { &self.method };
        write!(
            f,
            "{} [{}] {} {} request_id={} age={}ms",
            self.kind,
            self.state,
            method,
            self.route,
            self.request_id,
            self.age.as_millis()
        )?;
        if let Some(location) = &self.location {
            let verb = match self.kind {
                LeakKind::WatchedObject => "watched at",
                _ => "spawned at",
            };
            write!(f, " {verb} {location}")?;
        }
        if let Some(type_name) = self.type_name {
            write!(f, " type={type_name}")?;
        }
        if let Some(upstream) = &self.upstream {
            write!(f, " upstream={upstream}")?;
        }
        let about = if self.bytes_estimated { "~" } else { "" };
        if let Some(bytes) = self.bytes {
            write!(f, " retained={about}{bytes}B")?;
        }
        if let Some(per_request) = self.bytes_per_request {
            write!(f, " per_request={about}{per_request}B")?;
        }
        if let Some(site) = self.sites.first() {
            write!(f, " allocated at {site}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(trace) = &self.await_trace {
            // The only part on lines of its own: a tree reads badly folded into one line.
            f.write_str("\n    waiting at:")?;
            for line in trace.lines() {
                write!(f, "\n      {line}")?;
            }
        }
        Ok(())
    }
}
