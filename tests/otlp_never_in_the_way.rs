//! Export never gets in the way of requests: with the collector refusing connections, or
//! accepting them and never answering, over gRPC and HTTP, every request through the layer
//! completes, the sweeper keeps reporting, and shutting the exporter down ends within its
//! timeout; leak spans that cannot wait for the collector are dropped and counted. (Latency
//! figures are measured separately, not asserted here.)
#![cfg(feature = "otlp")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use leakwatch::otlp::{OtlpBuilder, OtlpProtocol};
use leakwatch::server::RequestBody;
use tower::{ServiceBuilder, ServiceExt};

const REQUESTS: usize = 300;

/// An address where nothing listens.
fn refusing() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// A listener on 127.0.0.1 that accepts connections and never answers; it stops with the
/// test's runtime.
async fn silent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

/// Runs the requests and returns the leak spans the exporter counted as refused for a full
/// queue (of `queue` spans).
async fn requests_complete_while_export_fails(
    endpoint: String,
    protocol: OtlpProtocol,
    queue: usize,
) -> u64 {
    let otlp = OtlpBuilder::new()
        .protocol(protocol)
        .endpoint(endpoint)
        .timeout(Duration::from_millis(500))
        .max_queue_size(queue)
        .install()
        .unwrap();
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .sink(otlp.sink())
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        |req: Request<RequestBody<Full<Bytes>>>| async move {
            if req.uri().path() == "/leak" {
                leakwatch::spawn(std::future::pending::<()>());
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    for round in 0..3 {
        for i in 0..REQUESTS {
            let path = if i % 2 == 0 { "/leak" } else { "/ok" };
            let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(&support::read_body(response).await[..], b"ok");
        }
        // Every report goes to the failing exporter's queue; sweeping does not wait on it.
        let reports = detector.sweep_now();
        assert_eq!(reports.len(), REQUESTS / 2, "round {round}");
    }
    assert_eq!(detector.stats().sink_panics, 0);
    let queue_full = otlp.queue_full_spans();
    assert!(otlp.dropped_spans() >= queue_full);
    tokio::task::spawn_blocking(move || drop(otlp))
        .await
        .unwrap();
    queue_full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_refusing_connections() {
    requests_complete_while_export_fails(refusing(), OtlpProtocol::Grpc, 2048).await;
    requests_complete_while_export_fails(refusing(), OtlpProtocol::HttpProtobuf, 2048).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_accepting_and_never_answering() {
    requests_complete_while_export_fails(silent().await, OtlpProtocol::Grpc, 2048).await;
    requests_complete_while_export_fails(silent().await, OtlpProtocol::HttpProtobuf, 2048).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_beyond_the_queue_are_dropped_and_counted() {
    // 450 leak spans against a collector that holds every export for 500 ms and a queue of 8:
    // most cannot wait, and each of those is counted rather than lost unseen.
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let refused = requests_complete_while_export_fails(silent().await, protocol, 8).await;
        assert!(refused > 0, "{protocol:?}: no span counted as refused");
    }
}
