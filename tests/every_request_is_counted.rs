//! Exact mode counts every request's memory at any throughput: a request that frees all it
//! allocated gives its allocator slot back as it ends, without waiting for the sweeper. With a
//! grace period of an hour (so that the sweeper gives nothing back during the test), more
//! requests than the allocator has slots (65 536) go through an axum service — through
//! `oneshot`, and through a real hyper server on 127.0.0.1 with many connections at once — and
//! none goes untracked; only the requests that ended holding memory still hold a slot.
//!
//! One test in this binary: the allocator's slots are process-wide.
#![cfg(feature = "axum")]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use leakwatch::{stats::MemoryAccounting, LeakDetector};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// More requests than the allocator has slots.
const ONESHOT_REQUESTS: u64 = 70_000;
/// One request in this many leaks (and so keeps its slot until judged).
const LEAK_EVERY: u64 = 1_000;
const CONNECTIONS: u64 = 32;
const REQUESTS_PER_CONNECTION: u64 = 250;

async fn json() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "items": (0..32).collect::<Vec<u32>>(), "name": "leakwatch" }))
}

async fn leak() -> &'static str {
    std::mem::forget(vec![7u8; 64]);
    "kept"
}

fn app(detector: &LeakDetector) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/json", get(json))
        .route("/leak", get(leak))
        .layer(detector.layer())
}

fn path(n: u64) -> &'static str {
    match n {
        n if n % LEAK_EVERY == 0 => "/leak",
        n if n % 2 == 0 => "/json",
        _ => "/hello",
    }
}

/// Only the requests that kept memory hold a slot, and the last few of each thread, whose
/// memory is settled when more requests of their thread have ended (or by the sweeper); once
/// swept, exactly the requests that kept memory.
async fn assert_slots_held(detector: &LeakDetector, leaked: u64) {
    const SETTLING: u64 = 128 * 4;
    let in_use = detector.stats().memory_slots_in_use;
    assert!(
        (leaked..=leaked + SETTLING).contains(&in_use),
        "{in_use} slots held, {leaked} requests leaked"
    );
    support::wait_until("only the leaking requests hold a slot", || {
        detector.sweep_now();
        detector.stats().memory_slots_in_use == leaked
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_goes_untracked_when_requests_free_what_they_allocate() {
    let detector = LeakDetector::builder()
        .grace(Duration::from_secs(3600))
        .max_request_age(Duration::from_secs(7200))
        .sweep_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(detector.stats().memory, MemoryAccounting::Exact);
    let app = app(&detector);

    for n in 1..=ONESHOT_REQUESTS {
        let request = Request::get(path(n)).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        support::read_body(response).await;
    }
    let stats = detector.stats();
    let leaked = ONESHOT_REQUESTS / LEAK_EVERY;
    assert_eq!(stats.uncounted.requests, 0);
    assert_eq!(stats.requests_in_flight, 0);
    assert_slots_held(&detector, leaked).await;

    // A real server, many connections at once.
    let (addr, server) = support::serve(app).await;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            tokio::spawn(async move {
                let client = support::client();
                for i in 0..REQUESTS_PER_CONNECTION {
                    // Numbered so that no request of this phase leaks.
                    let n = 2 * (c * REQUESTS_PER_CONNECTION + i) + 1 + (i % 2);
                    let n = if n.is_multiple_of(LEAK_EVERY) {
                        n + 1
                    } else {
                        n
                    };
                    let uri = format!("http://{addr}{}", path(n));
                    let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    let response = client.request(request).await.unwrap();
                    assert!(response.status().is_success());
                    response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    support::wait_until("every request ended", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    let stats = detector.stats();
    assert_eq!(stats.uncounted.requests, 0);
    assert_slots_held(&detector, leaked).await;
    let stats = detector.stats();
    let finished: u64 = stats.routes.iter().map(|r| r.finished_requests).sum();
    assert_eq!(
        finished + leaked,
        ONESHOT_REQUESTS + CONNECTIONS * REQUESTS_PER_CONNECTION
    );
    server.abort();
}
