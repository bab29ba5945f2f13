//! The scenario service: one route per leak pattern of `shared/scenarios.md`, plus clean routes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use leakwatch::LeakDetector;
use tokio::sync::mpsc;

/// Things kept past their request — the "globals" of the scenarios, one set per test so that
/// tests running side by side do not share them.
#[derive(Clone, Default)]
pub struct Kept {
    pub bodies: Arc<Mutex<Vec<Body>>>,
    pub contexts: Arc<Mutex<Vec<Arc<RequestContext>>>>,
    pub senders: Arc<Mutex<Vec<mpsc::Sender<u64>>>>,
}

/// Per-request state a handler (wrongly) keeps: the `context.WithValue` of the Go original.
#[derive(Debug)]
pub struct RequestContext {
    pub user: u64,
}

impl RequestContext {
    /// The user the request was made for.
    pub fn user(&self) -> u64 {
        self.user
    }
}

/// The lines of the `spawn` / `watch` calls below, recorded when they run.
pub static L1_LINE: AtomicU32 = AtomicU32::new(0);
pub static L2_LINE: AtomicU32 = AtomicU32::new(0);
pub static L7_LINE: AtomicU32 = AtomicU32::new(0);
pub static L10_LINE: AtomicU32 = AtomicU32::new(0);

/// The file the recorded lines are in, as `Location` names it.
pub const FILE: &str = file!();

pub fn app(detector: &LeakDetector, kept: Kept) -> Router {
    Router::new()
        .route("/leak/task/{id}", get(leak_task))
        .route("/leak/channel/{id}", get(leak_channel))
        .route("/leak/upload", post(leak_upload))
        .route("/leak/body", post(leak_body))
        .route("/leak/watch/{id}", get(leak_watch))
        .route("/leak/ticker", get(leak_ticker))
        .route("/ok/json", get(ok_json))
        .route("/ok/task", get(ok_task))
        .route("/ok/upload", post(ok_upload))
        .with_state(kept)
        .layer(detector.layer())
}

/// L1: a task that sleeps for an hour, ignoring that its request is over.
async fn leak_task() -> &'static str {
    L1_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
    "spawned"
}

/// L2: a task blocked on a channel whose sender is kept forever.
async fn leak_channel(State(kept): State<Kept>) -> &'static str {
    let (tx, mut rx) = mpsc::channel::<u64>(1);
    kept.senders.lock().unwrap().push(tx);
    L2_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async move { while rx.recv().await.is_some() {} });
    "waiting"
}

/// L4: the body of a POST is never read.
async fn leak_upload() -> &'static str {
    "ignored"
}

/// L5: the request body is moved into a global.
async fn leak_body(State(kept): State<Kept>, body: Body) -> &'static str {
    kept.bodies.lock().unwrap().push(body);
    "kept"
}

/// L7: a watched request object is stored globally.
async fn leak_watch(
    State(kept): State<Kept>,
    axum::extract::Path(user): axum::extract::Path<u64>,
) -> &'static str {
    let context = Arc::new(RequestContext { user });
    assert_eq!(context.user(), user);
    L7_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::watch(&context);
    kept.contexts.lock().unwrap().push(context);
    "stored"
}

/// L10: a ticker that is never stopped.
async fn leak_ticker() -> &'static str {
    L10_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticker.tick().await;
        }
    });
    "ticking"
}

/// C1: a plain JSON handler.
async fn ok_json() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "items": [1, 2, 3] }))
}

/// C2: a task that finishes 50 ms after the response.
async fn ok_task() -> &'static str {
    leakwatch::spawn(async { tokio::time::sleep(Duration::from_millis(50)).await });
    "soon done"
}

/// C6: the whole body is read before replying.
async fn ok_upload(body: Bytes) -> Result<String, Infallible> {
    Ok(format!("read {} bytes", body.len()))
}
