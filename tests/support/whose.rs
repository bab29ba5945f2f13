//! Routes whose memory is the user's code's or a dependency's, and a driver that finds how
//! many requests it takes to report them (`tests/whose_memory*.rs`).

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

/// A sweep after every this many requests: steady traffic.
pub const EVERY: u64 = 4;

#[derive(Clone, Default)]
pub struct Kept {
    parent: CancellationToken,
    children: Arc<Mutex<Vec<CancellationToken>>>,
    forgotten: Arc<Mutex<Vec<Vec<u8>>>>,
    responses: Arc<Mutex<Vec<reqwest::Response>>>,
    /// A shared reqwest client and an upstream on 127.0.0.1.
    upstream: Option<(reqwest::Client, std::net::SocketAddr)>,
}

/// An upstream's response per request, kept unread: reqwest and hyper allocate its buffers,
/// the user keeps it (and with it its connection).
async fn kept_response(State(kept): State<Kept>) -> &'static str {
    let (client, addr) = kept.upstream.as_ref().expect("an upstream");
    let response = client
        .get(format!("http://{addr}/data"))
        .send()
        .await
        .unwrap();
    kept.responses.lock().unwrap().push(response);
    "kept an upstream's response"
}

/// An upstream answering 16 KiB, for as long as the test runs.
async fn upstream() -> std::net::SocketAddr {
    let data = Router::new().route("/data", get(|| async { vec![7u8; 16 * 1024] }));
    super::serve(data).await.0
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
        .route("/responses/{id}", get(kept_response))
        .with_state(kept)
        .layer(detector.layer())
}

/// A Prometheus recorder for the process, its upkeep every 5 s (the exporter's default);
/// installed once.
pub fn prometheus() {
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

/// With allocation sites recorded as `sites` (process-wide), sends up to `limit` requests to
/// `path` (`{i}` replaced), sweeping every `EVERY`; returns how many it took until `path`'s
/// route was confirmed as `RetainedMemory` (`None`: never), and every report made.
pub async fn until_reported(
    sites: AllocationSites,
    window: u64,
    span: Duration,
    path: &str,
    limit: u64,
) -> (Option<u64>, Vec<LeakReport>) {
    leakwatch::TrackingAllocator::system().set_allocation_sites(sites);
    prometheus();
    let detector = super::builder(&leakwatch::sink::CollectingSink::new())
        .memory_window(window)
        .dependency_growth_span(span)
        .build()
        .unwrap();
    let mut kept = Kept::default();
    if path.starts_with("/responses/") {
        kept.upstream = Some((reqwest::Client::new(), upstream().await));
    }
    let app = app(&detector, kept);
    let mut reports = Vec::new();
    for sent in 1..=limit {
        let uri = path.replace("{i}", &sent.to_string());
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(response.status().is_success());
        super::read_body(response).await;
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
