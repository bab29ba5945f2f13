//! With the runtime hooks and the `TrackingAllocator` both on, a task is tracked once: the hooks
//! track a plain `tokio::spawn` and the allocator lets go of its cell; a `leakwatch::spawn` or
//! `leakwatch::scoped` task is its wrapper's alone. A task spawned inside another plain task is
//! seen by the hooks only (the allocator alone cannot see it), once. Both runtime flavours.
//! Needs `RUSTFLAGS="--cfg tokio_unstable"`.
#![cfg(all(tokio_unstable, feature = "axum"))]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::LeakKind;
use tokio::sync::oneshot;
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

type Wakers = Arc<Mutex<Vec<oneshot::Sender<()>>>>;

fn parked(wakers: &Wakers) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    wakers.lock().unwrap().push(tx);
    rx
}

async fn plain(State(w): State<Wakers>, Path(_id): Path<u64>) -> &'static str {
    let rx = parked(&w);
    tokio::spawn(async move { rx.await.ok() });
    "plain"
}

async fn wrapped(State(w): State<Wakers>, Path(_id): Path<u64>) -> &'static str {
    let rx = parked(&w);
    leakwatch::spawn(async move { rx.await.ok() });
    "wrapped"
}

async fn scoped(State(w): State<Wakers>, Path(_id): Path<u64>) -> &'static str {
    let rx = parked(&w);
    tokio::spawn(leakwatch::scoped(async move { rx.await.ok() }));
    "scoped"
}

/// A plain task that spawns a parked one and ends.
async fn nested(State(w): State<Wakers>, Path(_id): Path<u64>) -> &'static str {
    let rx = parked(&w);
    let _ = tokio::spawn(async move {
        tokio::spawn(async move { rx.await.ok() });
    })
    .await;
    "nested"
}

#[test]
fn a_task_seen_by_both_is_reported_once() {
    support::on_both_hooked_runtimes(check);
}

async fn check() {
    const REQUESTS: u64 = 3;
    let (detector, _) = support::detector();
    let wakers = Wakers::default();
    let app = Router::new()
        .route("/plain/{id}", get(plain))
        .route("/wrapped/{id}", get(wrapped))
        .route("/scoped/{id}", get(scoped))
        .route("/nested/{id}", get(nested))
        .with_state(wakers.clone())
        .layer(detector.layer());
    for route in ["plain", "wrapped", "scoped", "nested"] {
        for i in 0..REQUESTS {
            let request = Request::get(format!("/{route}/{i}"))
                .body(Body::empty())
                .unwrap();
            support::read_body(app.clone().oneshot(request).await.unwrap()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    detector.sweep_now();
    let leaks = detector.leaks();
    for route in [
        "/plain/{id}",
        "/wrapped/{id}",
        "/scoped/{id}",
        "/nested/{id}",
    ] {
        let orphans: Vec<_> = leaks
            .iter()
            .filter(|r| r.route == route && r.kind == LeakKind::OrphanTask)
            .collect();
        assert_eq!(orphans.len(), REQUESTS as usize, "{route}: {leaks:#?}");
        assert!(
            orphans.iter().all(|o| !o.detail.contains("JoinHandle")),
            "{route}: tracked by the hooks or a wrapper, not by the cell: {orphans:#?}"
        );
    }
    assert_eq!(leaks.len(), 4 * REQUESTS as usize, "{leaks:#?}");
    wakers.lock().unwrap().clear();
    support::wait_until("the tasks end", || {
        detector.sweep_now();
        detector.leaks().is_empty()
    })
    .await;
}
