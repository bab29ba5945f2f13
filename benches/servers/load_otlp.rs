//! Load-benchmark server for export that never gets in the way: leakwatch's layer with an
//! `OtelSink` exporting over OTLP, while one request in 50 on `/leaky` leaks a task for two
//! seconds (so leak spans, confirmed then released, flow all the time). See
//! `benches/otlp_dead_collector.sh`.
//!
//! `LEAKWATCH_OTLP` picks the collector: `off` (no export; the default tracing sink with no
//! subscriber), `refusing` (nothing listens at the endpoint), `silent` (a listener that accepts
//! connections and never answers). `OTEL_EXPORTER_OTLP_PROTOCOL` picks gRPC or HTTP.

#[path = "load/common.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::routing::get;
use leakwatch::otlp::OtlpBuilder;
use leakwatch::LeakDetector;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// `GET /leaky`: every 50th request leaves a task running for two seconds.
async fn leaky() -> &'static str {
    if REQUESTS.fetch_add(1, Ordering::Relaxed).is_multiple_of(50) {
        leakwatch::spawn(tokio::time::sleep(Duration::from_secs(2)));
    }
    "hello, world"
}

/// An endpoint on 127.0.0.1 where nothing listens.
fn refusing() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1")
        .port();
    format!("http://127.0.0.1:{port}")
}

/// An endpoint on 127.0.0.1 that accepts connections and never answers (on its own thread).
fn silent() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    format!("http://{addr}")
}

fn main() {
    let mode = std::env::var("LEAKWATCH_OTLP").unwrap_or_else(|_| "off".to_owned());
    common::serve_with(move || {
        let mut builder = LeakDetector::builder()
            .grace(Duration::from_millis(100))
            .sweep_interval(Duration::from_millis(100))
            .registry_capacity(1 << 20);
        let endpoint = match mode.as_str() {
            "off" => None,
            "refusing" => Some(refusing()),
            "silent" => Some(silent()),
            other => panic!("LEAKWATCH_OTLP={other:?}: use off, refusing or silent"),
        };
        if let Some(endpoint) = endpoint {
            let otlp = OtlpBuilder::from_env(|name| std::env::var(name).ok())
                .expect("OTLP settings")
                .endpoint(endpoint)
                .install()
                .expect("OTLP export");
            builder = builder.sink(otlp.sink());
            // Kept for the life of the process (the script kills it).
            std::mem::forget(otlp);
        }
        let detector = builder.build().expect("valid configuration");
        let app = common::routes()
            .route("/leaky", get(leaky))
            .layer(detector.layer());
        std::mem::forget(detector);
        app
    });
}
