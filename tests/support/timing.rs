//! How many requests it takes to find a steady leak: a route that forgets `{bytes}` per
//! request, its control that frees them, and a driver that sweeps every few requests.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakState};
use tower::ServiceExt;

/// A sweep after every this many requests: steady traffic.
pub const EVERY: u64 = 4;

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

/// Sends requests to `/forget/{bytes}` (or `/temporary/{bytes}` when `leak` is false), with a
/// `memory_window` of `window`, until the route is reported as `RetainedMemory`; returns how
/// many requests it took, or `None` when `limit` were sent without a report.
pub async fn requests_until_reported(
    window: u64,
    bytes: u64,
    leak: bool,
    limit: u64,
) -> Option<u64> {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = super::builder(&sink).memory_window(window).build().unwrap();
    let app = app(&detector);
    let (path, route) = if leak {
        (format!("/forget/{bytes}"), "/forget/{bytes}")
    } else {
        (format!("/temporary/{bytes}"), "/temporary/{bytes}")
    };
    for sent in 1..=limit {
        let request = Request::get(&path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        super::read_body(response).await;
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
