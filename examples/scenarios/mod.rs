//! The scenario service: one route per leak pattern of `tests/scenarios/README.md` (L1–L10), and
//! the clean controls that must never be reported (C1–C6). The demo serves it, and the tests
//! drive it (`tests/scenarios`, `tests/alloc_scenarios.rs`), so that what the demo shows is what
//! the tests check.
//!
//! Everything a handler keeps past its request lives in a [`Kept`], one per service: tests
//! running side by side do not share them.

// The demo and each test use a part of it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leakwatch::client::{ClientLeakService, ResponseBody};
use leakwatch::LeakDetector;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// How many entries the bounded cache of C3 keeps.
pub const LRU_CAPACITY: usize = 32;

/// The lines of the `spawn` / `watch` calls below, recorded when they run (the reports name
/// them).
pub static L1_LINE: AtomicU32 = AtomicU32::new(0);
pub static L2_LINE: AtomicU32 = AtomicU32::new(0);
pub static L7_LINE: AtomicU32 = AtomicU32::new(0);
pub static L10_LINE: AtomicU32 = AtomicU32::new(0);

/// The file the recorded lines are in, as `Location` names it.
pub const FILE: &str = file!();

/// What the handlers keep past their requests: the "globals" of the scenarios.
#[derive(Clone, Default)]
pub struct Kept {
    pub senders: Arc<Mutex<Vec<mpsc::Sender<u64>>>>,
    pub bodies: Arc<Mutex<Vec<Body>>>,
    pub sessions: Arc<Mutex<Vec<Arc<Session>>>>,
    pub cache: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    pub callbacks: Arc<Mutex<Vec<Callback>>>,
    pub lru: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub config: Arc<OnceLock<Vec<u8>>>,
    /// What the tasks of `/leak/late` keep, once `go` is set; `done` counts them.
    pub late: Arc<Mutex<Vec<Vec<u8>>>>,
    pub go: Arc<tokio::sync::watch::Sender<bool>>,
    pub done: Arc<AtomicU64>,
    pub upstream: Option<Upstream>,
    pub upstream_bodies: Arc<Mutex<Vec<ResponseBody<Incoming>>>>,
}

/// The client for an upstream (L9), behind the detector's `client_layer()`.
#[derive(Clone)]
pub struct Upstream {
    client: ClientLeakService<Client<HttpConnector, Empty<Bytes>>>,
    addr: SocketAddr,
}

impl Kept {
    /// With a client for the upstream at `addr` (see [`start_upstream`]).
    pub fn with_upstream(detector: &LeakDetector, addr: SocketAddr) -> Self {
        let client = tower::ServiceBuilder::new()
            .layer(detector.client_layer())
            .service(Client::builder(TokioExecutor::new()).build_http());
        Kept {
            upstream: Some(Upstream { client, addr }),
            ..Kept::default()
        }
    }

    /// `GET /data` from the upstream, when there is one.
    async fn call_upstream(&self) -> Option<http::Response<ResponseBody<Incoming>>> {
        let upstream = self.upstream.as_ref()?;
        let uri = format!("http://{}/data", upstream.addr);
        let request = http::Request::get(uri).body(Empty::new()).ok()?;
        upstream.client.clone().oneshot(request).await.ok()
    }
}

/// An upstream for L9: an axum server on 127.0.0.1 answering 16 KiB, for as long as the
/// runtime runs.
pub async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("the upstream's address");
    let app = Router::new().route("/data", get(|| async { vec![7u8; 16 * 1024] }));
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}

/// A callback registered by a request (L6).
pub type Callback = Box<dyn Fn() -> usize + Send>;

/// A node of an `Arc` cycle (L8).
struct Node {
    _payload: Vec<u8>,
    next: Mutex<Option<Arc<Node>>>,
}

/// Per-request state that a handler wrongly stores globally (L7): the `context.WithValue` of
/// the Go original.
#[derive(Debug)]
pub struct Session {
    pub user: u64,
    token: [u8; 32],
}

/// The scenario service behind `detector`'s layer.
pub fn app(detector: &LeakDetector, kept: Kept) -> Router {
    Router::new()
        .route("/leak/task/{id}", get(leak_task))
        .route("/leak/channel/{id}", get(leak_channel))
        .route("/leak/cache/{id}", get(leak_cache))
        .route("/leak/upload", post(leak_upload))
        .route("/leak/body", post(leak_body))
        .route("/leak/callback/{id}", get(leak_callback))
        .route("/leak/session/{id}", get(leak_session))
        .route("/leak/cycle/{id}", get(leak_cycle))
        .route("/leak/upstream", get(leak_upstream))
        .route("/leak/ticker", get(leak_ticker))
        .route("/leak/plain/{id}", get(leak_plain))
        .route("/leak/forget/{id}", get(leak_forget))
        .route("/leak/late/{id}", get(leak_late))
        .route("/ok/json", get(ok_json))
        .route("/ok/task", get(ok_task))
        .route("/ok/lru/{id}", get(ok_lru))
        .route("/ok/stream", get(ok_stream))
        .route("/ok/config", get(ok_config))
        .route("/ok/upload", post(ok_upload))
        .route("/ok/upstream", get(ok_upstream))
        .route("/ok/temporary/{id}", get(ok_temporary))
        .with_state(kept)
        .layer(detector.layer())
}

/// L1: a task that sleeps for an hour, ignoring that its request is over.
async fn leak_task() -> &'static str {
    L1_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
    "spawned a task that sleeps for an hour\n"
}

/// L1 through plain `tokio::spawn`: the `TrackingAllocator` sees the task's cell on stable
/// flags; the runtime's hooks (`--cfg tokio_unstable`) track it too, once.
async fn leak_plain() -> &'static str {
    tokio::spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
    "spawned a task (plain tokio::spawn) that sleeps for an hour\n"
}

/// L2: a task blocked on a channel whose sender is kept forever.
async fn leak_channel(State(kept): State<Kept>) -> &'static str {
    let (tx, mut rx) = mpsc::channel::<u64>(1);
    kept.senders.lock().unwrap().push(tx);
    L2_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async move { while rx.recv().await.is_some() {} });
    "spawned a task waiting on a channel nobody closes\n"
}

/// L3: 4 KiB of request data kept in a global map.
async fn leak_cache(State(kept): State<Kept>, Path(id): Path<u64>) -> &'static str {
    kept.cache.lock().unwrap().insert(id, vec![7; 4096]);
    "cached 4 KiB of your request, forever\n"
}

/// L4: the body of a POST is never read.
async fn leak_upload() -> &'static str {
    "ignored your upload\n"
}

/// L5: the request body is moved into a global.
async fn leak_body(State(kept): State<Kept>, body: Body) -> &'static str {
    kept.bodies.lock().unwrap().push(body);
    "kept your body\n"
}

/// L6: a closure capturing 16 KiB, pushed to a global list of callbacks.
async fn leak_callback(State(kept): State<Kept>, Path(id): Path<u64>) -> &'static str {
    let data = Arc::new(vec![id as u8; 16 * 1024]);
    kept.callbacks
        .lock()
        .unwrap()
        .push(Box::new(move || data.len()));
    "registered a callback capturing 16 KiB\n"
}

/// L7: a watched per-request object is stored globally.
async fn leak_session(State(kept): State<Kept>, Path(user): Path<u64>) -> &'static str {
    let session = Arc::new(Session {
        user,
        token: [7; 32],
    });
    L7_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::watch(&session);
    kept.sessions.lock().unwrap().push(session);
    "stored your session globally\n"
}

/// L8: two nodes of 4 KiB each pointing at each other.
async fn leak_cycle(Path(id): Path<u64>) -> &'static str {
    let a = Arc::new(Node {
        _payload: vec![id as u8; 4096],
        next: Mutex::new(None),
    });
    let b = Arc::new(Node {
        _payload: vec![id as u8; 4096],
        next: Mutex::new(Some(a.clone())),
    });
    *a.next.lock().unwrap() = Some(b);
    "built an Arc cycle\n"
}

/// L9: the upstream's response is kept and its body never read.
async fn leak_upstream(State(kept): State<Kept>) -> &'static str {
    let Some(response) = kept.call_upstream().await else {
        return "the upstream did not answer\n";
    };
    kept.upstream_bodies
        .lock()
        .unwrap()
        .push(response.into_body());
    "kept the upstream's response without reading it\n"
}

/// L10: a ticker that is never stopped.
async fn leak_ticker() -> &'static str {
    L10_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticker.tick().await;
        }
    });
    "started a ticker nobody stops\n"
}

/// 4 KiB leaked with `mem::forget`.
async fn leak_forget(Path(id): Path<u64>) -> &'static str {
    std::mem::forget(vec![id as u8; 4096]);
    "forgot 4 KiB\n"
}

/// A task the request spawned keeps 4 KiB, allocated after the response was sent (once
/// `Kept::go` is set).
async fn leak_late(State(kept): State<Kept>, Path(id): Path<u64>) -> &'static str {
    leakwatch::spawn(async move {
        let _ = kept.go.subscribe().wait_for(|&go| go).await;
        kept.late.lock().unwrap().push(vec![id as u8; 4096]);
        kept.done.fetch_add(1, Ordering::SeqCst);
    });
    "spawned a task that keeps 4 KiB later\n"
}

/// C1: a plain JSON handler.
async fn ok_json() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "items": [1, 2, 3] }))
}

/// C2: a task that finishes 50 ms after the response.
async fn ok_task() -> &'static str {
    leakwatch::spawn(async { tokio::time::sleep(Duration::from_millis(50)).await });
    "spawned a task that ends in 50 ms\n"
}

/// C3: a bounded cache, evicting its oldest entry.
async fn ok_lru(State(kept): State<Kept>, Path(id): Path<u64>) -> &'static str {
    let mut lru = kept.lru.lock().unwrap();
    if lru.len() == LRU_CAPACITY {
        lru.pop_front();
    }
    lru.push_back(vec![id as u8; 4096]);
    "cached in a bounded cache\n"
}

/// C4: a response streamed for 100 ms by a task, polled to its end.
async fn ok_stream() -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    leakwatch::spawn(async move {
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let event = Bytes::from(format!("data: {i}\n\n"));
            if tx.send(event).await.is_err() {
                return; // the client went away
            }
        }
    });
    Body::new(ChannelBody(rx))
}

/// C5: the first request initialises 1 MiB of configuration, later ones reuse it.
async fn ok_config(State(kept): State<Kept>) -> String {
    let config = kept.config.get_or_init(|| vec![1; 1 << 20]);
    format!("{} bytes of config\n", config.len())
}

/// C6: the whole body is read before replying.
async fn ok_upload(body: Bytes) -> Result<String, Infallible> {
    Ok(format!("read {} bytes\n", body.len()))
}

/// L9's control: the upstream's body is read to its end.
async fn ok_upstream(State(kept): State<Kept>) -> String {
    let Some(response) = kept.call_upstream().await else {
        return "the upstream did not answer\n".to_owned();
    };
    match response.into_body().collect().await {
        Ok(body) => format!("read {} bytes from the upstream\n", body.to_bytes().len()),
        Err(error) => format!("reading the upstream failed: {error}\n"),
    }
}

/// A 1 MiB temporary buffer, freed before the response.
async fn ok_temporary(Path(id): Path<u64>) -> String {
    let buffer = std::hint::black_box(vec![id as u8; 1 << 20]);
    format!("used {} bytes for a moment\n", buffer.len())
}

/// A streamed response body fed by a channel: one frame per message, unbuffered.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|c| Ok(http_body::Frame::data(c))))
    }
}
