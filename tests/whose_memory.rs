//! Whose memory a route holds decides how it is judged. With allocation sites recorded
//! (`AllocationSites::Exact` here), memory the user's code allocated keeps the two-window
//! promise, while memory a dependency's code allocated must grow window after window for
//! `dependency_growth_span` too — a Prometheus recorder's histogram buckets, freed at its
//! upkeep, are never reported; child `CancellationToken`s the user keeps in a global list
//! (allocated by tokio-util, kept by the user) are found, later. On both runtime flavours,
//! steady traffic (a sweep after every 4 requests), through `tower::ServiceExt::oneshot`.
#![cfg(feature = "axum")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{AllocationSites, LeakDetector, LeakKind, LeakReport, LeakState};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const WINDOW: u64 = 64;
const EVERY: u64 = 4;

#[derive(Clone, Default)]
struct Kept {
    parent: CancellationToken,
    children: Arc<Mutex<Vec<CancellationToken>>>,
    forgotten: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A child token per request, kept for good: tokio-util allocates it, the user keeps it.
async fn child_token(State(kept): State<Kept>) -> &'static str {
    let child = kept.parent.child_token();
    kept.children.lock().unwrap().push(child);
    "kept a child token"
}

/// 2 KiB per request, allocated and kept by the user's code.
async fn user_bytes(State(kept): State<Kept>, Path(id): Path<u64>) -> &'static str {
    kept.forgotten.lock().unwrap().push(vec![id as u8; 2048]);
    "kept 2 KiB"
}

/// A counter and a histogram per request, recorded through `metrics`' global recorder.
async fn metered(Path(id): Path<u64>) -> &'static str {
    metrics::counter!("requests_total").increment(1);
    metrics::histogram!("request_seconds").record(id as f64 * 1e-4);
    "metered"
}

fn app(detector: &LeakDetector, kept: Kept) -> Router {
    Router::new()
        .route("/tokens/{id}", get(child_token))
        .route("/bytes/{id}", get(user_bytes))
        .route("/metered/{id}", get(metered))
        .with_state(kept)
        .layer(detector.layer())
}

/// A Prometheus recorder for the process, its upkeep every 5 s (the exporter's default).
fn prometheus() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("one global recorder");
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            handle.run_upkeep();
        });
    });
}

/// Sends up to `limit` requests to `path` (`{i}` replaced), sweeping every `EVERY`; returns
/// how many it took until `path`'s route was confirmed as `RetainedMemory` (`None`: never),
/// and every report made.
async fn until_reported(span: Duration, path: &str, limit: u64) -> (Option<u64>, Vec<LeakReport>) {
    ALLOC.set_allocation_sites(AllocationSites::Exact);
    prometheus();
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .memory_window(WINDOW)
        .dependency_growth_span(span)
        .build()
        .unwrap();
    let app = app(&detector, Kept::default());
    let mut reports = Vec::new();
    for sent in 1..=limit {
        let uri = path.replace("{i}", &sent.to_string());
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(response.status().is_success());
        support::read_body(response).await;
        if sent % EVERY == 0 {
            let swept = detector.sweep_now();
            let found = swept
                .iter()
                .any(|r| r.kind == LeakKind::RetainedMemory && r.state == LeakState::Confirmed);
            reports.extend(swept);
            if found {
                return (Some(sent), reports);
            }
        }
    }
    (None, reports)
}

/// The user's own bytes: within two windows, whatever the span.
async fn user_memory_keeps_the_two_window_promise() {
    let (took, reports) = until_reported(Duration::from_secs(3600), "/bytes/{i}", 8 * WINDOW).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!("2 KiB per request, the user's: confirmed after {took} requests (window {WINDOW})");
    assert!(took <= 2 * WINDOW, "reported after {took} requests");
}

/// A dependency's bytes the user keeps: not before they grew for the span — found once it
/// passed (zero here: judged by requests alone), after `DEPENDENCY_WINDOWS` (8) windows of
/// growth past the warm-up.
async fn dependency_memory_the_user_keeps_is_found_later() {
    let (took, reports) =
        until_reported(Duration::from_secs(3600), "/tokens/{i}", 16 * WINDOW).await;
    assert_eq!(took, None, "{reports:#?}");
    assert!(reports.is_empty(), "not even suspected: {reports:#?}");
    let (took, reports) = until_reported(Duration::ZERO, "/tokens/{i}", 16 * WINDOW).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!("a child token per request, tokio-util's: confirmed after {took} requests (window {WINDOW}, span 0)");
    assert!(took <= 10 * WINDOW, "reported after {took} requests");
    let report = reports
        .iter()
        .find(|r| r.kind == LeakKind::RetainedMemory)
        .unwrap();
    let site = report.sites.first().expect("the sites that hold it");
    let file = site.file.as_deref().unwrap_or_default();
    assert!(file.contains("tokio-util-"), "{report}");
}

/// A Prometheus recorder's buckets: never reported at the default span.
async fn a_metrics_recorders_buckets_are_not_reported() {
    let limit = 3000;
    let (took, reports) = until_reported(
        leakwatch::LeakDetectorBuilder::DEFAULT_DEPENDENCY_GROWTH_SPAN,
        "/metered/{i}",
        limit,
    )
    .await;
    assert_eq!(took, None, "{reports:#?}");
    assert!(reports.is_empty(), "not even suspected: {reports:#?}");
    // What it would be taken for, judged by requests alone: growth, window after window.
    let (took, _) = until_reported(Duration::ZERO, "/metered/{i}", limit).await;
    println!(
        "a metrics recorder's buckets, judged by requests alone: confirmed after {took:?} requests"
    );
}

on_both_runtimes! {
    user_memory_keeps_the_two_window_promise => super::user_memory_keeps_the_two_window_promise;
    dependency_memory_the_user_keeps_is_found_later => super::dependency_memory_the_user_keeps_is_found_later;
    a_metrics_recorders_buckets_are_not_reported => super::a_metrics_recorders_buckets_are_not_reported;
}
