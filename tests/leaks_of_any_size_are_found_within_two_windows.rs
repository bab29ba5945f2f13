//! No byte floor decides whether a leak is found or how fast: with the exact allocator, a
//! steady `mem::forget` leak of 48 bytes, 1 000 bytes or 4 KiB per request is reported as
//! `RetainedMemory` of its route within two `memory_window`s of requests (64 at a window of
//! 32), under steady traffic (a sweep every few requests), on both runtime flavours; a route
//! that keeps nothing, driven the same way, is not.
#![cfg(feature = "axum")]

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakState};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const WINDOW: u64 = 32;
/// A sweep after every this many requests.
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

/// Sends requests to `path` until its route is reported (or `limit` requests were sent);
/// returns how many it took.
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

async fn each_size_within_two_windows() {
    for bytes in [48, 1000, 4096] {
        let path = format!("/forget/{bytes}");
        let took = requests_until_reported(&path, "/forget/{bytes}", 4 * WINDOW).await;
        let took = took.unwrap_or_else(|| panic!("{bytes} bytes per request: not reported"));
        assert!(
            took <= 2 * WINDOW,
            "{bytes} bytes per request: reported after {took} requests"
        );
    }
    for bytes in [48, 1000, 4096] {
        let path = format!("/temporary/{bytes}");
        let took = requests_until_reported(&path, "/temporary/{bytes}", 4 * WINDOW).await;
        assert_eq!(took, None, "{bytes} bytes freed by every request");
    }
}

on_both_runtimes! {
    a_leak_of_any_size_is_found_within_two_windows => super::each_size_within_two_windows;
}
