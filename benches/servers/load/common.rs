//! The service measured by `benches/load.sh`, `benches/instructions.sh` and
//! `benches/production.sh`: a hello-world route, a JSON one, an allocation-heavy one and one
//! that calls an upstream service, served on 127.0.0.1.
//!
//! By default one current-thread runtime serves (the scripts pin it to one core); with
//! `LOAD_WORKERS=<n>`, a multi-thread runtime of `n` workers, as in production. With
//! `LOAD_TRACE=default`, tower-http's `TraceLayer::new_for_http()` wraps the whole service
//! under a `tracing-subscriber` `fmt` subscriber at `INFO` (writing to stderr): the middleware
//! most services already run, its spans below `INFO` and so never recorded; with
//! `LOAD_TRACE=logged`, its spans and one event per response at `INFO`, all written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// `GET /hello`: nothing to allocate but the response.
async fn hello() -> &'static str {
    "hello, world"
}

/// `GET /spawn`: one short task, spawned with plain `tokio::spawn` and awaited (the allocator
/// sees its cell).
async fn spawn_one() -> String {
    let task = tokio::spawn(async { 6 * 7 });
    task.await.unwrap_or_default().to_string()
}

/// `GET /channel`: a tokio channel made and dropped (a block of the task cell's alignment that
/// is no task).
async fn channel() -> String {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
    let _ = tx.send(42).await;
    rx.recv().await.unwrap_or_default().to_string()
}

/// `GET /json`: a small JSON document, as an API answers.
async fn json_doc() -> Json<Value> {
    Json(json!({
        "id": 1234,
        "name": "leakwatch",
        "tags": ["http", "leaks", "tokio"],
        "owner": { "login": "ops", "active": true },
    }))
}

/// `GET /alloc`: a few hundred allocations per request, all freed by the end.
async fn alloc_heavy() -> Json<HashMap<String, Vec<String>>> {
    let mut map = HashMap::new();
    for group in 0..20 {
        let items: Vec<String> = (0..10).map(|i| format!("item-{group}-{i}")).collect();
        map.insert(format!("group-{group}"), items);
    }
    Json(map)
}

/// The upstream service's address and the pooled client that calls it.
static UPSTREAM: OnceLock<(SocketAddr, Client<HttpConnector, Empty<Bytes>>)> = OnceLock::new();

/// `GET /upstream`: calls the local upstream service through a shared, pooled client and
/// returns the length of its answer.
async fn upstream() -> Result<String, StatusCode> {
    let (addr, client) = UPSTREAM.get().ok_or(StatusCode::SERVICE_UNAVAILABLE)?;
    let uri = format!("http://{addr}/item");
    let request = http::Request::get(uri)
        .body(Empty::new())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = client
        .request(request)
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(format!("upstream answered {} bytes", body.to_bytes().len()))
}

/// Starts the upstream service (plain hyper, no middleware) on an ephemeral port of 127.0.0.1.
async fn start_upstream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_| async {
                let body = Full::new(Bytes::from_static(b"{\"item\":42,\"stock\":7}"));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let _ = UPSTREAM.set((addr, client));
}

/// The routes, before any middleware.
pub fn routes() -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/spawn", get(spawn_one))
        .route("/channel", get(channel))
        .route("/json", get(json_doc))
        .route("/alloc", get(alloc_heavy))
        .route("/upstream", get(upstream))
}

/// `GET /_stats` (outside any middleware the caller adds after): what the detector did not
/// count, for the load scripts to check.
#[allow(dead_code)] // not every load server has a detector
pub fn with_stats(app: Router, detector: leakwatch::LeakDetector) -> Router {
    let stats = Router::new().route(
        "/_stats",
        get(move || {
            let stats = detector.stats();
            async move {
                format!(
                    "untracked_requests={} skipped={} memory_slots_in_use={} registry_entries={}\n",
                    stats.uncounted.requests,
                    stats.uncounted.registry_entries,
                    stats.memory_slots_in_use,
                    stats.registry_entries
                )
            }
        }),
    );
    app.merge(stats)
}

/// Serves `app` on `127.0.0.1:<first argument>` (default 8099) until killed.
#[allow(dead_code)] // not every load server uses both
pub fn serve(app: Router) {
    serve_with(move || app);
}

/// Serves the router `make_app` returns, calling it inside the server's runtime.
///
/// With `LOAD_IDLE_THREAD=1` the process first starts a thread that only sleeps. A process that
/// never started a thread lets glibc's `malloc` skip its arena locks; any other thread ends
/// that for good (leakwatch's sweeper, a multi-threaded runtime, a blocking pool). This tells
/// that cost apart from leakwatch's own.
pub fn serve_with(make_app: impl FnOnce() -> Router) {
    if std::env::var("LOAD_IDLE_THREAD").as_deref() == Ok("1") {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8099);
    let workers: usize = std::env::var("LOAD_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let runtime = match workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    }
    .enable_all()
    .build()
    .expect("runtime");
    let trace = std::env::var("LOAD_TRACE").ok();
    runtime.block_on(async move {
        start_upstream().await;
        let app = match trace.as_deref() {
            Some(kind) => traced(make_app(), kind == "logged"),
            None => make_app(),
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind 127.0.0.1");
        axum::serve(listener, app).await.expect("serve");
    });
}

/// `app` under tower-http's `TraceLayer`, with a `fmt` subscriber at `INFO` on stderr; with
/// `logged`, spans and one event per response at `INFO`.
fn traced(app: Router, logged: bool) -> Router {
    use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
    use tracing::Level;
    tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    if logged {
        app.layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
    } else {
        app.layer(TraceLayer::new_for_http())
    }
}
