//! Units of work beyond HTTP: a test, a queue message, a job, a stream item.
//!
//! [`LeakDetector::scope`](crate::LeakDetector::scope) runs any future as one *unit of work*,
//! in a scope of its own, exactly as the layer runs a request: what it spawns (through
//! [`crate::spawn`], the runtime's hooks, or — with the
//! [`TrackingAllocator`](crate::TrackingAllocator) — plain `tokio::spawn`), what it allocates
//! and the objects it [`watch`](crate::watch)es are charged to it, and judged by the rules of
//! requests: a grace period for tasks, windows of units for memory, growth for what a
//! dependency starts.
//!
//! A unit has a name where a request has a route template — a fixed set of names, such as
//! `"consumer/orders"` or `"job/reindex"`, never an id: it labels metrics. Units and routes
//! share the detector's table of [`MAX_ROUTES`](crate::route::MAX_ROUTES) names (past it, a new
//! name is counted as [`OVERFLOW`](crate::route::OVERFLOW)); a unit named like one of the
//! service's routes is counted with it, so name units without a leading `/`. The settings
//! that take route templates take unit names too: [`ignore_route`] (not tracked at all),
//! [`streaming_route`] (may run past `max_request_age`, as a consumer's whole loop would).
//! Reports about a
//! unit have [`LeakReport::unit`](crate::LeakReport::unit) set, its name in
//! [`route`](crate::LeakReport::route) and no method; `tracing` events and OpenTelemetry
//! spans and metrics label the name `leakwatch.unit` where a request's is `http.route`;
//! [`RouteStats::unit`](crate::stats::RouteStats::unit) marks units in the stats, the snapshot
//! and its page, and the profiles label them `unit` where a request's samples say `route`.
//!
//! [`ignore_route`]: crate::LeakDetectorBuilder::ignore_route
//! [`streaming_route`]: crate::LeakDetectorBuilder::streaming_route
//!
//! **Nesting.** A unit run inside a request (a request that processes a batch, one unit per
//! item) or inside another unit is the innermost scope while it runs: what it spawns and
//! allocates is its own, and the enclosing request sees none of it (neither its leftovers nor
//! its memory). Its reports are in the request's trace: an OpenTelemetry leak span of the unit
//! is a child of the request's span. An outgoing call made in a unit (through
//! [`client_layer`](crate::LeakDetector::client_layer)) is the unit's, as a request's is the
//! request's.
//!
//! **Tests.** [`assert_no_leaks_in`] runs a test's body as a unit
//! under a detector of its own and fails naming what it left;
//! [`assert_no_leaks_repeated`] runs it many times to judge
//! memory; `#[leakwatch::test]` (feature `macros`) does either on a runtime it builds.
//! Tests running in parallel each see only their own leftovers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let detector = leakwatch::LeakDetector::builder().build().unwrap();
//! let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
//! # drop(sender);
//! while let Some(message) = receiver.recv().await {
//!     // One unit per message: what handling it leaves behind is reported under its name.
//!     detector
//!         .scope("consumer/orders", async move {
//!             let _ = message; // handle the message
//!         })
//!         .await;
//! }
//! # }
//! ```

mod check;
mod future;

pub use self::check::{assert_no_leaks_in, assert_no_leaks_repeated, MIN_REPEAT};
#[cfg(feature = "macros")]
#[doc(hidden)]
pub use self::check::{run_test, run_test_repeated, TestRun};
pub use self::future::Unit;
