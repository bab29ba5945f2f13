//! Per-request leak detection for tower services: axum, hyper, and anything else built on
//! `tower::Service`.
//!
//! Wrap a service with one layer. leakwatch attributes the tasks a request spawns, the bodies it
//! receives and the objects it watches to that request, holds them in a weak-reference registry,
//! sweeps on a timer, and reports whatever outlives its request:
//!
//! | kind | what it means |
//! |---|---|
//! | [`OrphanTask`](LeakKind::OrphanTask) | a task spawned by the request is still running |
//! | [`UnconsumedBody`](LeakKind::UnconsumedBody) | the request body was dropped unread |
//! | [`RetainedBody`](LeakKind::RetainedBody) | the request body is alive after the response |
//! | [`WatchedObject`](LeakKind::WatchedObject) | a [`watch`]ed object outlived the request |
//! | [`StuckRequest`](LeakKind::StuckRequest) | a request is open past its maximum age |
//! | [`RetainedMemory`](LeakKind::RetainedMemory) | a route's requests keep heap memory ([`TrackingAllocator`]) |
//! | [`HeapGrowth`](LeakKind::HeapGrowth) / [`TaskGrowth`](LeakKind::TaskGrowth) | the process's heap or tasks keep growing |
//!
//! Reports go to sinks ([`TracingSink`](sink::TracingSink) by default), to
//! [`LeakDetector::leaks`], and — in tests — to the exact [`LeakDetector::assert_no_leaks`].
//!
//! # axum
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # async fn run() {
//! use axum::{routing::get, Router};
//!
//! async fn handler() -> &'static str {
//!     // Tracked: reported if still running after the response was sent.
//!     leakwatch::spawn(async { /* … */ });
//!     "ok"
//! }
//!
//! let detector = leakwatch::LeakDetector::builder().build().unwrap();
//! let app: Router = Router::new()
//!     .route("/jobs/{id}", get(handler))
//!     .layer(detector.layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! # hyper or plain tower
//!
//! ```
//! use std::convert::Infallible;
//! use tower::ServiceBuilder;
//!
//! let detector = leakwatch::LeakDetector::builder()
//!     .route_fn(|_method, uri| uri.path().starts_with("/jobs/").then_some("/jobs/{id}"))
//!     .build()
//!     .unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(detector.layer())
//!     .service_fn(|_req: http::Request<leakwatch::server::RequestBody<hyper::body::Incoming>>| async {
//!         Ok::<_, Infallible>(http::Response::new(String::from("ok")))
//!     });
//! // serve `service` with hyper-util's `TowerToHyperService` and `auto::Builder`.
//! # drop(service);
//! ```
//!
//! # Beyond HTTP: tests, consumers, jobs
//!
//! [`LeakDetector::scope`] runs any future as one unit of work, judged as a request is and
//! reported under its name ([`LeakReport::unit`]; see [`unit`](mod@unit)). A queue consumer,
//! one unit per message:
//!
//! ```
//! # async fn handle(_: Vec<u8>) {}
//! # async fn consume(detector: leakwatch::LeakDetector, mut queue: tokio::sync::mpsc::Receiver<Vec<u8>>) {
//! while let Some(message) = queue.recv().await {
//!     detector.scope("consumer/orders", handle(message)).await;
//! }
//! # }
//! ```
//!
//! A test, in one line: `#[leakwatch::test]` (feature `macros`) where `#[tokio::test]` would
//! be, or [`assert_no_leaks_in`] on a runtime of your own. Each test gets a detector of its
//! own, so tests running in parallel see only their own leftovers; the failure names them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! leakwatch::assert_no_leaks_in(async {
//!     // A task still running once the body has ended would fail the test, named by its
//!     // spawn line (seen with the `TrackingAllocator`, the hooks, or `leakwatch::spawn`).
//!     let worker = tokio::spawn(async { /* … */ });
//!     worker.await.unwrap();
//! })
//! .await;
//! # }
//! ```
//!
//! Memory needs repetition, to tell a leak from a cache or a lazy static:
//! [`unit::assert_no_leaks_repeated`] (or `#[leakwatch::test(repeat = 64)]`) runs the body as
//! many units and judges them by the window rule below.
//!
//! # Retained memory
//!
//! With the [`TrackingAllocator`] installed, every request knows the bytes it allocated and
//! freed, and every route the bytes its requests still hold. Retained memory is not a leak by
//! itself: a lazily initialised `OnceLock` retains once, a bounded cache retains its newest
//! entries. What marks a leak is memory that *old* requests still hold after many newer requests
//! of the same route have come and gone.
//!
//! So once a request has finished and its grace period passed, its retained bytes are read. A
//! request retaining at least [`memory_threshold`](LeakDetectorBuilder::memory_threshold) bytes
//! may become one of its route's *witnesses* (eight at most). Each sweep re-reads them: one that
//! has let go of its memory (an evicted cache entry) is dropped. A witness is *old* once
//! [`memory_window`](LeakDetectorBuilder::memory_window) newer requests of the route have been
//! judged after it. A route with three old witnesses still holding memory, whose retained bytes
//! grow with its requests by about what each witness holds, is reported as
//! [`RetainedMemory`](LeakKind::RetainedMemory), with the bytes they hold per request and the
//! route's total. Old requests holding memory alone are not enough: a bounded cache that keeps
//! old entries on purpose (TinyLFU, S3-FIFO) has them too, at a plateau. Once none of its old
//! witnesses holds memory, or its memory no longer grows, the report is released. The
//! criterion counts requests, not seconds: it holds whether a route's requests arrive in one
//! burst between two sweeps or spread over many.
//!
//! With the default `memory_threshold` of one byte, no size decides: a steady leak of 48 bytes
//! per request is found as fast as one of 4 KiB — within two `memory_window`s of requests under
//! steady traffic. Requests that each keep less than a raised threshold, and leaks that only
//! some requests make, are judged together: a route whose retained
//! bytes grow by at least a byte per request, window after window of `memory_window` requests
//! (or across doublings of its request count, for a list whose buffer doubles), is reported too.
//!
//! # Whose memory
//!
//! Not all memory a route's requests leave behind is theirs to free. A library keeps some on
//! its own schedule: a batch exporter's span buffer until its next flush, a metrics recorder's
//! buckets until its upkeep, an epoch's deferred garbage until the epoch moves on. Two rules
//! keep such memory from being taken for a leak:
//!
//! - **Falls count.** A route's retained bytes are read at every sweep, and growth must exceed
//!   twice the largest fall of the recent windows, from a peak to a trough, not only boundary
//!   to boundary: a buffer that fills and drains with a period near `memory_window` never
//!   grows past its own swings.
//! - **Whose bytes.** With allocation sites on
//!   ([`TrackingAllocator::set_allocation_sites`]), the first frame of each sampled call stack
//!   outside the standard library says who allocated: the user's code, or a dependency's
//!   (cargo's `registry/src/`, `git/checkouts/`, `vendor/`). A route whose live bytes sit
//!   mostly at dependencies' sites (read from 3 samples on, the evidence three old witnesses
//!   give in sampled mode; the share's standard error is at most `0.5/√n` for `n` samples, none
//!   in exact mode) is judged by growth alone: it must grow in
//!   8 windows in a row and for
//!   [`dependency_growth_span`](LeakDetectorBuilder::dependency_growth_span) (10 minutes by
//!   default), old witnesses or not. Memory at the user's sites keeps the two-window promise.
//!   While the owner is unknown (sites off, or too few samples), witnesses decide as above,
//!   but growth no request witnesses must also last `dependency_growth_span`.
//!
//! So a dependency's allocation the user keeps (a child `CancellationToken` pushed onto a global
//! list) is found too, later: after the span, and 9 windows of requests — 576 at a window of
//! 64 with every site recorded; in sampled mode a window must also grow past the swings of
//! samples coming and going (each stands for the mean), 4 608 requests at a 16 KiB mean and a
//! window of 512 for 150 bytes per request (`tests/whose_memory*.rs`). Make the span zero in
//! tests to judge by requests alone.
//!
//! One cause gives one report: a request whose task, body or watched object is reported holds
//! that leftover's memory (a task's cell and what it allocated, a kept body's buffers), so its
//! memory is set aside while the leftover lives — out of its route's retained bytes, never a
//! witness — and counted with the route's again once the leftover is gone. Memory a request
//! keeps beside its leftover is found on the route's requests that leave none, or once the
//! leftover is fixed.
//!
//! # Trend alerts
//!
//! Per-request attribution finds what a request leaves behind; a trend catches what it cannot
//! see (a leak outside any request, tasks spawned outside requests). Every
//! [`trend_interval`](LeakDetectorBuilder::trend_interval) the sweeper samples the live heap
//! (from the [`TrackingAllocator`] when installed, else the resident set size), the runtime's
//! alive tasks and the requests in flight. When the growth from the oldest to the newest sample
//! of the window exceeds *both* the relative and the absolute threshold, it raises
//! [`HeapGrowth`](LeakKind::HeapGrowth) or [`TaskGrowth`](LeakKind::TaskGrowth) on the route
//! [`route::PROCESS`]; once growth over the window falls back under them, the alert is released.
//!
//! # Feature flags
//!
//! - `tracing` (default): the [`TracingSink`](sink::TracingSink), used when no sink is set.
//! - `axum` (default): route templates from axum's `MatchedPath`.
//! - `serde`: `serde::Serialize` for [`LeakReport`], [`stats::Stats`] and [`snapshot::Snapshot`], and
//!   `LeakDetector::snapshot_service`, a `/debug/leaks` endpoint.
//! - `pprof`: the heap and task profiles of `snapshot_service` (`/debug/leaks/heap`,
//!   `/debug/leaks/tasks`) in pprof's `profile.proto`, for `go tool pprof`, speedscope,
//!   Pyroscope; implies `serde`.
//! - `otel`: `sink::OtelSink` (leak spans and metrics), `LeakDetector::register_metrics`, and
//!   trace ids in reports.
//! - `otlp`: `otlp::init`, OTLP exporters from the standard environment variables.
//! - `reqwest`: `client::ReqwestMiddleware` (`LeakDetector::reqwest_middleware`), upstream
//!   bodies of `reqwest` calls through `reqwest-middleware`.
//! - `full`: all of the above.
//! - `taskdump` (not in `full`): await traces of orphan tasks from tokio's task dumps
//!   ([`LeakReport::await_trace`]); takes effect only with `RUSTFLAGS="--cfg tokio_unstable"` on
//!   Linux, and tokio's dumps can stall a runtime: tests and staging only.
//!
//! Items that need a feature say so on docs.rs. On stable flags, the [`TrackingAllocator`] sees
//! the tasks a request spawns with plain `tokio::spawn` (see [its docs](TrackingAllocator#tasks-on-stable-rust)).
//! Built with `RUSTFLAGS="--cfg tokio_unstable"`, the crate also has `instrument_runtime` and
//! the `hooks` module, which add what only tokio's hooks can see: tasks spawned inside other
//! tasks, what a task allocates after its request, and await traces.
//!
//! # Architecture
//!
//! How the crate is built — the pipeline, its stages and the rule that keeps them layered — is
//! written once, in `ARCHITECTURE.md` at the root of the repository (and of the published
//! crate).

#![warn(missing_docs, missing_debug_implementations)]
#![deny(unreachable_pub)]
#![deny(unsafe_code)]
// (`alloc` alone allows it: the global allocator cannot be written without it.)
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

mod alloc;
pub mod client;
mod config;
mod detector;
mod engine;
pub mod guard;
mod judge;
mod registry;
pub mod report;
mod request;
pub mod server;
pub mod sink;
pub mod snapshot;
pub mod stats;
mod task;
#[cfg(test)]
mod test_helpers;
pub mod unit;
mod util;

cfg_feature! {
    "otlp",
    pub mod otlp;
}

cfg_tokio_unstable! {
    pub use crate::task::hooks;
    pub use crate::task::hooks::instrument_runtime;
}
// Documented in every `cargo doc` build, saying what they need.
#[cfg(all(doc, not(tokio_unstable)))]
pub use crate::task::hooks_doc::{hooks, instrument_runtime};

pub use crate::request::route;

// The README's examples compile as doctests (they use axum, OpenTelemetry and OTLP).
#[cfg(all(doctest, feature = "axum", feature = "otlp"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// The crate root holds what a user writes in the first hour; everything else has one path, in
// its module. `tests/public_api.rs` lists these names, so that adding one is a decision.
pub use crate::alloc::{AllocationSites, TrackingAllocator};
pub use crate::config::{ConfigError, LeakDetectorBuilder};
pub use crate::detector::LeakDetector;
pub use crate::report::leak::{LeakKind, LeakReport, LeakState};
pub use crate::task::{detach, outside, scoped, spawn, spawn_detached, watch, Detached, Scoped};
pub use crate::unit::assert_no_leaks_in;

cfg_feature! {
    "macros",
    /// Runs an `async fn` test as a unit of work, as `#[tokio::test]` runs it, and fails
    /// naming what it left behind: see [`unit`](mod@unit) and [`assert_no_leaks_in`].
    ///
    /// It builds a current-thread runtime (`#[leakwatch::test(flavor = "multi_thread")]`,
    /// with `worker_threads = n`, a multi-thread one), instrumented with the runtime's hooks
    /// when built with `--cfg tokio_unstable`; runs the body as one unit under a detector of
    /// its own; waits for what it started to end (up to two seconds); and panics listing every
    /// report, as [`LeakDetector::assert_no_leaks`] does. `#[leakwatch::test(repeat = 64)]`
    /// runs the body 64 times, one unit each, and judges memory by the window rule (see
    /// [`unit::assert_no_leaks_repeated`]).
    ///
    /// ```
    /// #[leakwatch::test]
    /// async fn the_client_stops_its_task() {
    ///     let task = tokio::spawn(async {});
    ///     task.await.unwrap();
    /// }
    /// # fn main() {}
    /// ```
    pub use leakwatch_macros::test;
}
