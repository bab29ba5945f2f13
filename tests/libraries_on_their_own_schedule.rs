//! Memory a library keeps on its own schedule is not the request's leak: OpenTelemetry's batch
//! span processor behind `tracing-opentelemetry` (its defaults: a batch every 512 spans or
//! 5 s), a Prometheus recorder from `metrics-exporter-prometheus` (histogram samples wait for
//! the recorder's upkeep), and tower-http's `ServeDir` (64 KiB read buffers). A real axum
//! service on 127.0.0.1 with the exact allocator, the detector at its defaults but for the
//! grace period, steady traffic (a sweep after every 20 requests), 3 000 requests, on a
//! current-thread and a 4-worker runtime: no report in any state.
//!
//! Each run prints what it saw (`--nocapture`): reports by state, and the flicker rate — active
//! reports later released, per 1 000 requests.
#![cfg(feature = "axum")]

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use leakwatch::sink::CollectingSink;
use leakwatch::{LeakDetector, LeakReport, LeakState, TrackingAllocator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchSpanProcessor, InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

const REQUESTS: u64 = 3000;
const BATCH: u64 = 20;

/// The process-wide telemetry every test of this binary shares, as a service has it: a
/// `tracing` subscriber exporting spans through OpenTelemetry's batch processor (to an
/// in-memory exporter a thread drains, standing for the network), and a Prometheus recorder
/// whose upkeep runs every 5 s (the exporter's default).
fn telemetry() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter.clone()).build())
            .build();
        let tracer = provider.tracer("libraries_on_their_own_schedule");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            exporter.reset();
        });
        support::whose::prometheus();
        // The provider lives as long as the process.
        std::mem::forget(provider);
    });
}

/// Two spans per request (tower-http's and the handler's), as a traced service has.
async fn traced(Path(id): Path<u64>) -> String {
    let span = tracing::info_span!("handler", id);
    span.in_scope(|| tracing::info!("handled"));
    id.to_string()
}

/// A counter and a histogram per request.
async fn metered(Path(id): Path<u64>) -> String {
    metrics::counter!("requests_total", "route" => "metered").increment(1);
    metrics::histogram!("request_seconds").record(id as f64 * 1e-4);
    id.to_string()
}

/// The service: one route per library, behind the detector's layer.
fn app(detector: &LeakDetector, files: &std::path::Path) -> Router {
    let traced = Router::new()
        .route("/traced/{id}", get(traced))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    Router::new()
        .merge(traced)
        .route("/metered/{id}", get(metered))
        .nest_service("/files", tower_http::services::ServeDir::new(files))
        .layer(detector.layer())
}

/// A directory under `target/` with one 200 KB file.
fn files() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("served-files");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("page.bin");
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(200_000) {
        std::fs::write(&file, vec![b'x'; 200_000]).unwrap();
    }
    dir
}

/// What a run saw.
struct Seen {
    reports: Vec<LeakReport>,
}

impl Seen {
    /// Active reports later released, per 1 000 requests.
    fn flicker_per_1000(&self) -> f64 {
        let released = self
            .reports
            .iter()
            .filter(|r| r.state == LeakState::Released)
            .count();
        released as f64 * 1000.0 / REQUESTS as f64
    }
}

/// Sends `REQUESTS` requests to `path` (`{i}` replaced) through a real server and client,
/// sweeping after every `BATCH`.
async fn drive(path: &str) -> Seen {
    telemetry();
    let detector = LeakDetector::builder()
        .grace(Duration::ZERO)
        .sweep_interval(Duration::from_secs(3600))
        .sink(CollectingSink::new())
        .build()
        .unwrap();
    let (addr, server) = support::serve(app(&detector, &files())).await;
    let client = support::client();
    let mut reports = Vec::new();
    for i in 0..REQUESTS {
        let uri = format!("http://{addr}{}", path.replace("{i}", &i.to_string()));
        let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await.unwrap();
        assert!(response.status().is_success(), "{path}: {response:?}");
        support::read_body(response).await;
        if (i + 1) % BATCH == 0 {
            reports.extend(detector.sweep_now());
        }
    }
    server.abort();
    assert!(detector.stats().memory.is_tracked());
    let seen = Seen { reports };
    let state = |s: LeakState| seen.reports.iter().filter(|r| r.state == s).count();
    println!(
        "{path}: {} suspected, {} confirmed, {} released; flicker {:.2} per 1 000 requests",
        state(LeakState::Suspected),
        state(LeakState::Confirmed),
        state(LeakState::Released),
        seen.flicker_per_1000()
    );
    seen
}

async fn clean(path: &str) {
    let seen = drive(path).await;
    assert!(seen.reports.is_empty(), "{path}: {:#?}", seen.reports);
    assert_eq!(seen.flicker_per_1000(), 0.0);
}

async fn otel_batch_span_processor() {
    clean("/traced/{i}").await;
}

async fn prometheus_recorder() {
    clean("/metered/{i}").await;
}

async fn serve_dir() {
    clean("/files/page.bin").await;
}

mod current_thread {
    #[tokio::test(flavor = "current_thread")]
    async fn otel_batch_span_processor() {
        super::otel_batch_span_processor().await;
    }
    #[tokio::test(flavor = "current_thread")]
    async fn prometheus_recorder() {
        super::prometheus_recorder().await;
    }
    #[tokio::test(flavor = "current_thread")]
    async fn serve_dir() {
        super::serve_dir().await;
    }
}

mod multi_thread {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn otel_batch_span_processor() {
        super::otel_batch_span_processor().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn prometheus_recorder() {
        super::prometheus_recorder().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn serve_dir() {
        super::serve_dir().await;
    }
}
