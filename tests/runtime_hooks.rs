//! With `leakwatch::instrument_runtime`, a task spawned by plain `tokio::spawn` (or `JoinSet`,
//! or a library) inside a request is tracked like `leakwatch::spawn`: an orphan is reported
//! with the request's route and the spawn's `file:line`, and tasks that end, blocking tasks and
//! tasks spawned outside requests are never reported — on a current-thread and on a
//! multi-thread runtime built with the hooks. Needs `RUSTFLAGS="--cfg tokio_unstable"`.
#![cfg(all(tokio_unstable, feature = "axum"))]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakReport};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// A library that starts a background worker on every call and never stops it.
mod library {
    /// The line of the spawn in `start_worker`.
    pub const SPAWN_LINE: u32 = line!() + 3;

    pub fn start_worker() {
        tokio::spawn(std::future::pending::<()>());
    }
}

/// What the handlers keep past their requests.
#[derive(Clone, Default)]
struct Kept {
    senders: Arc<Mutex<Vec<mpsc::Sender<u64>>>>,
    notify: Arc<Notify>,
    sets: Arc<Mutex<Vec<JoinSet<()>>>>,
}

const PENDING_LINE: u32 = line!() + 2;
async fn plain_pending() -> &'static str {
    tokio::spawn(std::future::pending::<()>());
    "spawned"
}

const CHANNEL_LINE: u32 = line!() + 4;
async fn plain_channel(State(kept): State<Kept>) -> &'static str {
    let (sender, mut receiver) = mpsc::channel::<u64>(1);
    kept.senders.lock().unwrap().push(sender);
    tokio::spawn(async move { while receiver.recv().await.is_some() {} });
    "spawned"
}

const NOTIFY_LINE: u32 = line!() + 3;
async fn plain_notify(State(kept): State<Kept>) -> &'static str {
    let notify = kept.notify.clone();
    tokio::spawn(async move { notify.notified().await });
    "spawned"
}

async fn from_library() -> &'static str {
    library::start_worker();
    "spawned"
}

const OUTER_LINE: u32 = line!() + 3;
const INNER_LINE: u32 = line!() + 3;
async fn nested() -> &'static str {
    tokio::spawn(async {
        tokio::spawn(std::future::pending::<()>());
        std::future::pending::<()>().await
    });
    "spawned"
}

const WRAPPED_LINE: u32 = line!() + 2;
async fn wrapped() -> &'static str {
    leakwatch::spawn(std::future::pending::<()>());
    "spawned"
}

const SCOPED_LINE: u32 = line!() + 6;
async fn scoped_in_join_set(State(kept): State<Kept>) -> &'static str {
    let mut set = JoinSet::new();
    let (started, running) = tokio::sync::oneshot::channel();
    // `scoped` tracks the task itself from its first poll on: the hooks must not report it a
    // second time.
    set.spawn(leakwatch::scoped(async move {
        let _ = started.send(());
        std::future::pending::<()>().await
    }));
    running.await.unwrap();
    kept.sets.lock().unwrap().push(set);
    "spawned"
}

async fn join_set_drained() -> &'static str {
    let mut set = JoinSet::new();
    for i in 0..3u64 {
        set.spawn(async move { tokio::time::sleep(Duration::from_millis(i)).await });
    }
    while set.join_next().await.is_some() {}
    "joined"
}

async fn ends_soon() -> &'static str {
    tokio::spawn(tokio::time::sleep(Duration::from_millis(30)));
    "spawned"
}

async fn blocking() -> String {
    let answer = tokio::task::spawn_blocking(|| 6 * 7).await.unwrap();
    tokio::spawn(async { tokio::task::spawn_blocking(|| ()).await.unwrap() });
    answer.to_string()
}

fn app(detector: &LeakDetector, kept: Kept) -> Router {
    Router::new()
        .route("/plain/pending/{id}", get(plain_pending))
        .route("/plain/channel/{id}", get(plain_channel))
        .route("/plain/notify", get(plain_notify))
        .route("/library", get(from_library))
        .route("/nested", get(nested))
        .route("/wrapped", get(wrapped))
        .route("/scoped", get(scoped_in_join_set))
        .route("/ok/join-set", get(join_set_drained))
        .route("/ok/ends-soon", get(ends_soon))
        .route("/ok/blocking", get(blocking))
        .with_state(kept)
        .layer(detector.layer())
}

/// Sends one GET through the app and reads the response to its end.
async fn get_path(app: &Router, path: &str) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    support::read_body(response).await;
}

/// The orphan-task reports of one route, after a sweep.
fn orphans(detector: &LeakDetector, route: &str) -> Vec<LeakReport> {
    detector.sweep_now();
    let leaks = support::of_kind(&detector.leaks(), LeakKind::OrphanTask);
    leaks.into_iter().filter(|r| r.route == route).collect()
}

/// Exactly `count` orphans on `route`, each spawned at `line` of this file.
fn assert_orphans_at(detector: &LeakDetector, route: &str, line: u32, count: usize) {
    let reports = orphans(detector, route);
    assert_eq!(reports.len(), count, "{route}: {reports:#?}");
    for report in &reports {
        let location = report.location.expect("a spawn location");
        assert!(location.file.ends_with("runtime_hooks.rs"), "{report}");
        assert_eq!(location.line, line, "{report}");
    }
}

#[test]
fn plain_spawns_of_a_request_are_reported_with_the_spawn_line() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector, Kept::default());
        for i in 0..3 {
            get_path(&app, &format!("/plain/pending/{i}")).await;
            get_path(&app, &format!("/plain/channel/{i}")).await;
        }
        get_path(&app, "/plain/notify").await;
        assert_orphans_at(&detector, "/plain/pending/{id}", PENDING_LINE, 3);
        assert_orphans_at(&detector, "/plain/channel/{id}", CHANNEL_LINE, 3);
        assert_orphans_at(&detector, "/plain/notify", NOTIFY_LINE, 1);
        let report = &orphans(&detector, "/plain/notify")[0];
        assert_eq!(report.method, "GET");
        assert!(report.detail.contains("task still running"), "{report}");
    });
}

#[test]
fn a_task_a_library_spawns_is_reported_at_the_librarys_line() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector, Kept::default());
        get_path(&app, "/library").await;
        assert_orphans_at(&detector, "/library", library::SPAWN_LINE, 1);
    });
}

#[test]
fn a_task_spawned_by_a_spawned_task_belongs_to_the_same_request() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector, Kept::default());
        get_path(&app, "/nested").await;
        // The inner spawn happens on the outer task's first poll: wait until it ran.
        support::wait_until("the nested spawn ran", || {
            orphans(&detector, "/nested").len() == 2
        })
        .await;
        let mut lines: Vec<u32> = orphans(&detector, "/nested")
            .iter()
            .map(|r| r.location.unwrap().line)
            .collect();
        lines.sort_unstable();
        assert_eq!(lines, [OUTER_LINE, INNER_LINE]);
    });
}

#[test]
fn tasks_tracked_by_leakwatch_itself_are_reported_once() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector, Kept::default());
        get_path(&app, "/wrapped").await;
        get_path(&app, "/scoped").await;
        let wrapped = orphans(&detector, "/wrapped");
        assert_eq!(wrapped.len(), 1, "{wrapped:#?}");
        assert_eq!(wrapped[0].location.unwrap().line, WRAPPED_LINE);
        assert!(
            wrapped[0].type_name.is_some(),
            "leakwatch::spawn knows the type"
        );
        let scoped = orphans(&detector, "/scoped");
        assert_eq!(scoped.len(), 1, "{scoped:#?}");
        assert_eq!(scoped[0].location.unwrap().line, SCOPED_LINE);
    });
}

#[test]
fn tasks_that_end_blocking_tasks_and_joined_sets_are_not_reported() {
    support::on_both_hooked_runtimes(|| async {
        // C2: a task that ends 30 ms after its response, inside a grace period of 500 ms.
        let reports = leakwatch::sink::CollectingSink::new();
        let detector = support::builder(&reports)
            .grace(Duration::from_millis(500))
            .build()
            .unwrap();
        let app = app(&detector, Kept::default());
        for _ in 0..5 {
            get_path(&app, "/ok/join-set").await;
            get_path(&app, "/ok/ends-soon").await;
            get_path(&app, "/ok/blocking").await;
        }
        detector.assert_no_leaks().await;
        assert!(reports.reports().is_empty(), "{:#?}", reports.reports());
    });
}

#[test]
fn tasks_spawned_outside_requests_are_not_tracked() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, reports) = support::detector();
        let app = app(&detector, Kept::default());
        get_path(&app, "/ok/join-set").await;
        let background = tokio::spawn(std::future::pending::<()>());
        tokio::spawn(async {
            tokio::spawn(std::future::pending::<()>());
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        detector.assert_no_leaks().await;
        assert_eq!(detector.stats().tracked_tasks, 0);
        assert!(reports.reports().is_empty(), "{:#?}", reports.reports());
        background.abort();
    });
}

#[test]
fn an_orphan_of_a_real_server_is_reported() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let (addr, server) = support::serve(app(&detector, Kept::default())).await;
        let uri: http::Uri = format!("http://{addr}/plain/pending/7").parse().unwrap();
        let response = support::client().get(uri).await.unwrap();
        assert!(response.status().is_success());
        support::read_body(response).await;
        support::wait_until("the request's scope closed", || {
            !orphans(&detector, "/plain/pending/{id}").is_empty()
        })
        .await;
        assert_orphans_at(&detector, "/plain/pending/{id}", PENDING_LINE, 1);
        server.abort();
    });
}

/// A client's connection task, spawned during a call made through `client_layer()`, belongs to
/// the client's pool, not to the request; the same call without the layer leaves the task on
/// the request (which is why the layer exists).
#[test]
fn a_clients_connection_tasks_are_not_the_requests() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    type Plain = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

    async fn call<S, B>(client: S, upstream: std::net::SocketAddr) -> usize
    where
        S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>>,
        S::Error: std::fmt::Debug,
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let request = Request::get(format!("http://{upstream}/data"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    }

    support::on_both_hooked_runtimes(|| async {
        let upstream = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(vec![
                1u8;
                1024
            ]))))
        });
        let (upstream, upstream_server) = support::serve(upstream).await;
        let (detector, reports) = support::detector();
        // Two clients, two pools: each call opens a connection of its own.
        let plain: Plain = Client::builder(TokioExecutor::new()).build_http();
        let layered = tower::ServiceBuilder::new()
            .layer(detector.client_layer())
            .service(Client::builder(TokioExecutor::new()).build_http());
        let app = Router::new()
            .route(
                "/through-layer",
                get(move || {
                    let client = layered.clone();
                    async move { format!("{}", call(client, upstream).await) }
                }),
            )
            .route(
                "/plain-client",
                get(move || {
                    let client = plain.clone();
                    async move { format!("{}", call(client, upstream).await) }
                }),
            )
            .layer(detector.layer());

        get_path(&app, "/through-layer").await;
        detector.assert_no_leaks().await;
        assert_eq!(detector.stats().tracked_tasks, 0);
        assert!(reports.reports().is_empty(), "{:#?}", reports.reports());

        get_path(&app, "/plain-client").await;
        // The connection's task, and — when the response arrived before its body ended — the
        // task that returns the connection to the pool.
        let tracked = detector.stats().tracked_tasks;
        assert!(
            (1..=2).contains(&tracked),
            "without the layer, the client's tasks are the request's: {tracked} tracked"
        );
        upstream_server.abort();
    });
}
