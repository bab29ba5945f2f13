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
//!     .service_fn(|_req: http::Request<leakwatch::RequestBody<hyper::body::Incoming>>| async {
//!         Ok::<_, Infallible>(http::Response::new(String::from("ok")))
//!     });
//! // serve `service` with hyper-util's `TowerToHyperService` and `auto::Builder`.
//! # drop(service);
//! ```
//!
//! # Feature flags
//!
//! - `tracing` (default): the [`TracingSink`](sink::TracingSink), used when no sink is set.
//! - `axum` (default): route templates from axum's `MatchedPath`.
//! - `serde`: `serde::Serialize` for [`LeakReport`] and its parts.
//! - `otel`: `sink::OtelSink` (leak spans and metrics) and trace ids in reports.
//! - `otlp`: `otlp::init`, OTLP exporters from the standard environment variables.
//! - `full`: all of the above.

#![warn(missing_docs, missing_debug_implementations)]
#![deny(unreachable_pub)]
#![deny(unsafe_code)]
// (`alloc` alone allows it: the global allocator cannot be written without it.)
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

mod alloc;
mod body;
mod config;
mod detector;
pub mod layer;
pub mod memory;
#[cfg(feature = "otel")]
mod metrics;
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
mod registry;
mod report;
mod request_id;
mod route;
mod scope;
pub mod sink;
mod sweep;
mod symbolize;
mod task;
#[cfg(test)]
mod test_helpers;
mod testing;
mod trace_context;
pub mod trend;

// The README's examples compile as doctests (they use axum, OpenTelemetry and OTLP).
#[cfg(all(doctest, feature = "axum", feature = "otlp"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::alloc::{AllocationSites, TrackingAllocator, HEADER_SIZE, ROUTE_SLOTS, SCOPE_SLOTS};
pub use crate::body::RequestBody;
pub use crate::config::{ConfigError, LeakDetectorBuilder, MAX_CONFIRM_SWEEPS};
pub use crate::detector::{KindCounts, LeakDetector, Stats, FINDINGS_CAPACITY};
pub use crate::layer::{LeakLayer, LeakService};
pub use crate::report::{AllocationSite, LeakKind, LeakReport, LeakState, SourceLocation};
pub use crate::route::UNMATCHED;
pub use crate::sink::ReportSink;
pub use crate::task::{scoped, spawn, watch, Scoped};
