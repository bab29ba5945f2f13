//! In sampled mode, how many requests it takes to find a steady leak depends on the leak's size
//! `L` and the sampling mean: a route gets a sampled witness about every `mean / L` requests,
//! three old ones after about `3 × mean / L + memory_window`, and is reported once its
//! estimated retained bytes have also grown by about `L` per request — usually within one more
//! window; unlucky samples can take up to twice the sampling part and two more windows.
//! Checked with a 16 KiB mean, a window of 32 and steady traffic (a sweep every 4 requests),
//! for 4 KiB and 1 000 bytes per request, on both runtime flavours; a route that keeps nothing
//! is not reported.
#![cfg(feature = "axum")]

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakState};
use tower::ServiceExt;

const MEAN: u64 = 16 * 1024;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(MEAN);

const WINDOW: u64 = 32;
const EVERY: u64 = 4;

async fn forget(Path(bytes): Path<usize>) -> &'static str {
    std::mem::forget(vec![7u8; bytes]);
    "forgotten"
}

async fn temporary(Path(bytes): Path<usize>) -> String {
    vec![7u8; bytes].len().to_string()
}

fn app(detector: &LeakDetector) -> Router {
    Router::new()
        .route("/forget/{bytes}", get(forget))
        .route("/temporary/{bytes}", get(temporary))
        .layer(detector.layer())
}

/// Requests sent to `path` until its route is reported, if it is within `limit`.
async fn requests_until_reported(path: &str, route: &str, limit: u64) -> Option<u64> {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .memory_window(WINDOW)
        .build()
        .unwrap();
    let app = app(&detector);
    for sent in 1..=limit {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        support::read_body(response).await;
        if sent % EVERY == 0 {
            let found = detector.sweep_now().into_iter().any(|r| {
                r.route == route
                    && r.kind == LeakKind::RetainedMemory
                    && r.state == LeakState::Confirmed
            });
            if found {
                return Some(sent);
            }
        }
    }
    None
}

async fn found_within_the_documented_requests() {
    for bytes in [4096u64, 1000] {
        let expected = 3 * MEAN / bytes + WINDOW;
        // Samples come at random: allow twice the sampling part and two more windows.
        let limit = 2 * (3 * MEAN / bytes) + 3 * WINDOW;
        let path = format!("/forget/{bytes}");
        let took = requests_until_reported(&path, "/forget/{bytes}", limit).await;
        assert!(
            took.is_some(),
            "{bytes} bytes per request at a {MEAN}-byte mean: not reported within {limit} \
             requests (about {expected} expected)"
        );
    }
    let took = requests_until_reported("/temporary/4096", "/temporary/{bytes}", 256).await;
    assert_eq!(took, None, "4 KiB freed by every request");
}

on_both_runtimes! {
    a_sampled_leak_is_found_within_the_documented_requests
        => super::found_within_the_documented_requests;
}
