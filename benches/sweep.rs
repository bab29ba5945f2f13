//! One sweep at scale: 100 000 requests in flight through the layer, each with a task it
//! spawned (100 000 tracked objects), swept with `sweep_now` — what the sweeper thread spends
//! once per `sweep_interval` on a service holding that much. Goal: under 10 ms.
//!
//! Two figures: the sweeps as they come (each reads every request's scope, and checks one in
//! eight of the objects of requests in flight, to forget those that are gone), and full sweeps
//! that check every object (as when the registry is more than half full).
//!
//! ```text
//! cargo bench --bench sweep
//! ```
//!
//! Memory is not tracked here (no `TrackingAllocator`: 100 000 requests in flight are more than
//! its 65 536 request slots); the memory judge's share is measured by `benches/soak.sh`.

use std::convert::Infallible;
use std::future::{pending, Future};
use std::pin::Pin;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Empty;
use leakwatch::LeakDetector;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const IN_FLIGHT: usize = 100_000;

type Pending = Pin<Box<dyn Future<Output = Result<Response<Empty<bytes::Bytes>>, Infallible>>>>;

/// Builds a detector with `IN_FLIGHT` requests in flight, each with a task, and benchmarks one
/// sweep of it as `name`.
fn sweep_of(c: &mut Criterion, runtime: &tokio::runtime::Runtime, name: &str, capacity: usize) {
    let detector = LeakDetector::builder()
        .sweep_interval(Duration::from_secs(3600))
        .max_request_age(Duration::from_secs(3600))
        .registry_capacity(capacity)
        .build()
        .unwrap();
    // Each request spawns a task that never ends, and never answers: it stays in flight.
    let mut service = ServiceBuilder::new()
        .layer(detector.layer())
        .service(service_fn(|_: Request<_>| {
            leakwatch::spawn(pending::<()>());
            let answer: Pending = Box::pin(pending());
            answer
        }));
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let request = Request::get("/jobs")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            runtime.block_on(service.ready()).unwrap();
            service.call(request)
        })
        .collect();
    let stats = detector.stats();
    assert_eq!(stats.requests_in_flight, IN_FLIGHT as u64);
    assert_eq!(stats.tracked_tasks, IN_FLIGHT as u64);
    c.bench_function(name, |b| b.iter(|| detector.sweep_now()));
    assert!(
        detector.leaks().is_empty(),
        "nothing has ended: nothing to report"
    );
    drop(in_flight);
}

fn sweep(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    sweep_of(
        c,
        &runtime,
        "sweep_100k_requests_in_flight_100k_tasks",
        1 << 20,
    );
    // 200 000 entries in a registry of 300 000: more than half full, every sweep is a full one.
    sweep_of(
        c,
        &runtime,
        "full_sweep_100k_requests_in_flight_100k_tasks",
        300_000,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = sweep
}
criterion_main!(benches);
