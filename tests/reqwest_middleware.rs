//! reqwest, the client most services use: with `detector.reqwest_middleware()` in a
//! `reqwest-middleware` client, a `reqwest::Response` a handler keeps unread is a `RetainedBody`
//! and one dropped unread an `UnconsumedBody`, with the upstream's method and host (never its
//! path or query) and the route of the request that made the call; one read to its end is
//! nothing, and the response keeps its status, headers and URL. A real axum service and a real
//! upstream on 127.0.0.1, on both runtime flavours.
#![cfg(all(feature = "axum", feature = "reqwest"))]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

#[derive(Clone)]
struct App {
    client: ClientWithMiddleware,
    upstream: SocketAddr,
    kept: Arc<Mutex<Vec<reqwest::Response>>>,
}

impl App {
    /// Calls the upstream, with a secret in the path and the query that must never be reported.
    async fn call(&self) -> reqwest::Response {
        let url = format!(
            "http://{}/private/SECRETPATH?token=SECRETQUERY",
            self.upstream
        );
        let response = self.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.url().as_str(), url, "the response keeps its URL");
        assert_eq!(response.headers()["x-upstream"], "yes");
        response
    }
}

/// The upstream: 64 KiB for every request.
async fn start_upstream() -> SocketAddr {
    let service = tower::service_fn(|_req: Request<Incoming>| async {
        let body = Full::new(Bytes::from(vec![7u8; 64 * 1024]));
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("yes"));
        Ok::<_, Infallible>(response)
    });
    support::serve(service).await.0
}

async fn keep(State(app): State<App>) -> &'static str {
    let response = app.call().await;
    app.kept.lock().unwrap().push(response);
    "kept the upstream's response"
}

async fn drop_unread(State(app): State<App>) -> &'static str {
    drop(app.call().await);
    "dropped the upstream's response unread"
}

async fn read(State(app): State<App>) -> String {
    let body = app.call().await.bytes().await.unwrap();
    format!("read {} bytes", body.len())
}

async fn get_path(addr: SocketAddr, path: &str) {
    let uri = format!("http://{addr}{path}");
    let request = Request::get(uri).body(Full::default()).unwrap();
    let response = support::client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    support::read_body(response).await;
}

async fn start(detector: &LeakDetector) -> (SocketAddr, App) {
    let app = App {
        client: ClientBuilder::new(reqwest::Client::new())
            .with(detector.reqwest_middleware())
            .build(),
        upstream: start_upstream().await,
        kept: Arc::default(),
    };
    let router = Router::new()
        .route("/proxy/keep", get(keep))
        .route("/proxy/drop", get(drop_unread))
        .route("/proxy/read", get(read))
        .with_state(app.clone())
        .layer(detector.layer());
    (support::serve(router).await.0, app)
}

fn of_route(reports: &[LeakReport], route: &str) -> Vec<LeakReport> {
    reports
        .iter()
        .filter(|r| r.route == route)
        .cloned()
        .collect()
}

async fn kept_and_dropped_responses_are_reported() {
    let (detector, sink) = support::detector();
    let (addr, app) = start(&detector).await;
    for _ in 0..3 {
        get_path(addr, "/proxy/keep").await;
        get_path(addr, "/proxy/drop").await;
        get_path(addr, "/proxy/read").await;
    }
    support::wait_until("the requests closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    detector.sweep_now();
    let reports = sink.reports();
    let upstream_host = app.upstream.to_string();

    let kept = of_route(&reports, "/proxy/keep");
    assert_eq!(kept.len(), 3, "{kept:#?}");
    for report in &kept {
        assert_eq!(
            (report.kind, report.state),
            (LeakKind::RetainedBody, LeakState::Confirmed)
        );
        let upstream = report.upstream.as_ref().expect("the upstream");
        assert_eq!(
            (upstream.method.as_str(), upstream.host.as_str()),
            ("GET", upstream_host.as_str())
        );
    }

    let dropped = of_route(&reports, "/proxy/drop");
    assert_eq!(dropped.len(), 3, "{dropped:#?}");
    assert!(
        dropped.iter().all(|r| r.kind == LeakKind::UnconsumedBody),
        "{dropped:#?}"
    );

    assert!(of_route(&reports, "/proxy/read").is_empty());
    for report in &reports {
        let text = format!("{report} {report:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    // Reading the kept responses now releases their reports.
    let kept_responses: Vec<reqwest::Response> = app.kept.lock().unwrap().drain(..).collect();
    for response in kept_responses {
        assert_eq!(response.bytes().await.unwrap().len(), 64 * 1024);
    }
    let released = detector.sweep_now();
    assert_eq!(released.len(), 3, "{released:#?}");
    assert!(released.iter().all(|r| r.state == LeakState::Released));
}

on_both_runtimes! {
    reqwest_responses_kept_or_dropped_unread_are_reported => super::kept_and_dropped_responses_are_reported;
}
