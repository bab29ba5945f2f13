//! Memory a library keeps on purpose is not a leak, however old the requests that made it: a
//! bounded `moka` cache (TinyLFU: it keeps old entries and turns new ones away) and a bounded
//! `quick_cache` (S3-FIFO), each of capacity 100 filled by 1 000 distinct keys, and the
//! per-thread state `tracing-subscriber` grows lazily on each worker under tower-http's
//! `TraceLayer`. A real axum service on 127.0.0.1 with the exact allocator (and, built with
//! `--cfg tokio_unstable`, `instrument_runtime`), steady traffic
//! (batches, a sweep after each), on a current-thread and a 4-worker runtime: no report of any
//! kind. A route that keeps 2 KiB per request in a plain global map, driven the same way, is
//! reported — the control that shows the detector is looking.
#![cfg(feature = "axum")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::Full;
use leakwatch::{LeakDetector, LeakKind, LeakReport, TrackingAllocator};
use tracing_subscriber::layer::SubscriberExt;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

const CAPACITY: u64 = 100;
const KEYS: u64 = 1000;
const BATCH: u64 = 20;
/// The default `memory_window`: above the caches' capacity, as the builder's docs ask.
const WINDOW: u64 = leakwatch::LeakDetectorBuilder::DEFAULT_MEMORY_WINDOW;
const VALUE: usize = 2048;

#[derive(Clone)]
struct Caches {
    moka: moka::sync::Cache<u64, Arc<Vec<u8>>>,
    quick: Arc<quick_cache::sync::Cache<u64, Arc<Vec<u8>>>>,
    map: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
}

async fn moka_route(State(caches): State<Caches>, Path(key): Path<u64>) -> String {
    let value = caches
        .moka
        .get_with(key, || Arc::new(vec![key as u8; VALUE]));
    value.len().to_string()
}

async fn quick_route(State(caches): State<Caches>, Path(key): Path<u64>) -> String {
    let value = caches
        .quick
        .get_or_insert_with(&key, || Ok::<_, ()>(Arc::new(vec![key as u8; VALUE])))
        .unwrap();
    value.len().to_string()
}

async fn traced(Path(key): Path<u64>) -> String {
    tracing::info!(key, "handled");
    key.to_string()
}

async fn leak(State(caches): State<Caches>, Path(key): Path<u64>) -> &'static str {
    caches.map.lock().unwrap().insert(key, vec![1; VALUE]);
    "kept"
}

fn app(detector: &LeakDetector) -> Router {
    let caches = Caches {
        moka: moka::sync::Cache::new(CAPACITY),
        quick: Arc::new(quick_cache::sync::Cache::new(CAPACITY as usize)),
        map: Arc::default(),
    };
    Router::new()
        .route("/moka/{key}", get(moka_route))
        .route("/quick/{key}", get(quick_route))
        .route("/traced/{key}", get(traced))
        .route("/leak/{key}", get(leak))
        .with_state(caches)
        .layer(detector.layer())
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn drive() -> Vec<LeakReport> {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .memory_window(WINDOW)
        .build()
        .unwrap();
    let (addr, server) = support::serve(app(&detector)).await;
    let client = support::client();
    for batch in 0..KEYS / BATCH {
        for i in 0..BATCH {
            let key = batch * BATCH + i;
            for route in ["moka", "quick", "traced", "leak"] {
                let uri = format!("http://{addr}/{route}/{key}");
                let request = Request::get(uri).body(Full::default()).unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                support::read_body(response).await;
            }
        }
        support::wait_until("the batch's requests closed", || {
            detector.stats().requests_in_flight == 0
        })
        .await;
        detector.sweep_now();
    }
    server.abort();
    sink.reports()
}

fn run(flavor: &str) {
    // With `--cfg tokio_unstable`, every `tokio::spawn` is tracked too (the unstable CI pass).
    #[cfg(tokio_unstable)]
    let runtime = support::hooked_runtime(flavor);
    #[cfg(not(tokio_unstable))]
    let runtime = support::runtime_builder(flavor).build().unwrap();
    // A real subscriber for every thread: spans and events formatted into a sink.
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .with(tracing_subscriber::filter::LevelFilter::INFO);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let reports = runtime.block_on(drive());
    let list = |reports: &[&LeakReport]| {
        let lines: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
        lines.join("\n")
    };
    let clean: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| !r.route.starts_with("/leak/"))
        .collect();
    assert!(clean.is_empty(), "{flavor}:\n{}", list(&clean));
    let leak: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| r.route == "/leak/{key}")
        .collect();
    assert!(
        leak.iter().any(|r| r.kind == LeakKind::RetainedMemory),
        "{flavor}: the control is found:\n{}",
        list(&leak)
    );
}

#[test]
fn bounded_caches_and_per_thread_state_are_not_leaks() {
    run("current_thread");
}

#[test]
fn the_same_on_four_workers() {
    run("multi_thread");
}
