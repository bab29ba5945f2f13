//! `/debug/leaks` as a page: a real axum server on 127.0.0.1, opened in a real headless browser
//! (Debian's Chromium driven by npm's `playwright-core`, both installed the first time). The
//! page renders from the service alone (no request leaves for anywhere else), shows the leaky
//! route first, draws the trend, links the profiles, and a hostile route name shows as text,
//! never as markup. Its screenshot is left at `target/snapshot-page.png`.
#![cfg(all(feature = "axum", feature = "serde"))]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/npm.rs"]
mod npm;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use leakwatch::LeakDetector;
use serde_json::Value;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// A route template made of markup, as a `route_fn` may name a route.
const HOSTILE: &str = "/evil/<img src=x onerror=alert(1)><script>alert(2)</script>";

type Map = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// 4 KiB of request data kept in a global map.
async fn leak_map(State(map): State<Map>, UrlPath(id): UrlPath<u64>) -> &'static str {
    map.lock().unwrap().insert(id, vec![1; 4096]);
    "kept"
}

/// Spawns a task that never ends.
async fn orphan() -> &'static str {
    leakwatch::spawn(std::future::pending::<()>());
    "spawned"
}

async fn start(detector: &LeakDetector) -> SocketAddr {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/leak/map/{id}", get(leak_map))
        .with_state(Map::default())
        .nest_service("/debug/leaks", detector.snapshot_service())
        // No `MatchedPath` here: the detector's `route_fn` names the route.
        .fallback(orphan)
        .layer(detector.layer());
    support::serve(app).await.0
}

async fn get_path(addr: SocketAddr, path: &str, accept: &str) -> (StatusCode, String) {
    let request = Request::get(format!("http://{addr}{path}"))
        .header(header::ACCEPT, accept)
        .header("x-api-key", "hunter2-header")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = support::client().request(request).await.unwrap();
    let status = response.status();
    let body = support::read_body(response).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_leaky_route_first_and_hostile_names_as_text() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .route_fn(|_, uri| uri.path().starts_with("/evil").then_some(HOSTILE))
        .sweep_interval(Duration::from_secs(3600))
        .trend_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    let addr = start(&detector).await;
    for round in 0..3u64 {
        for _ in 0..10 {
            assert_eq!(get_path(addr, "/hello", "*/*").await.0, StatusCode::OK);
        }
        for id in 0..40 {
            let path = format!("/leak/map/{}?token=hunter2-query", round * 40 + id);
            assert_eq!(get_path(addr, &path, "*/*").await.0, StatusCode::OK);
        }
        let with_body = Request::post(format!("http://{addr}/evil/x"))
            .body(Full::new(Bytes::from_static(b"hunter2-body")))
            .unwrap();
        let response = support::client().request(with_body).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        support::read_body(response).await;
        // One trend sample per round.
        tokio::time::sleep(Duration::from_millis(2)).await;
        detector.sweep_now();
    }

    // Content negotiation: a browser gets the page, curl the JSON.
    let (status, html) = get_path(addr, "/debug/leaks", "text/html,*/*;q=0.8").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        !html.contains("<img") && !html.contains("<script"),
        "{html}"
    );
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(
        !html.contains("hunter2"),
        "nothing of a query, header or body"
    );
    let (_, json) = get_path(addr, "/debug/leaks", "*/*").await;
    assert!(serde_json::from_str::<Value>(&json).is_ok());
    let (_, forced) = get_path(addr, "/debug/leaks?format=html", "*/*").await;
    assert!(forced.starts_with("<!DOCTYPE html>"));

    let chromium = tokio::task::spawn_blocking(browser::chromium)
        .await
        .unwrap();
    let packages = tokio::task::spawn_blocking(|| npm::package("playwright-core", "1.65.2"))
        .await
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/support/page_check.js");
    let screenshot = root.join("target/snapshot-page.png");
    let url = format!("http://127.0.0.1:{}/debug/leaks", addr.port());
    let page = tokio::task::spawn_blocking(move || {
        npm::node(
            &packages,
            &script,
            &[&chromium, Path::new(&url), &screenshot],
        )
    })
    .await
    .unwrap();
    let page: Value = serde_json::from_str(&page).unwrap();

    assert_eq!(page["status"], 200);
    assert_eq!(page["title"], "leakwatch");
    assert_eq!(
        (page["scripts"].as_u64(), page["images"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(page["dialogs"], serde_json::json!([]), "no markup ran");
    let requests = page["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "self-contained: {requests:?}");
    let routes = page["routes"].as_array().unwrap();
    assert_eq!(
        routes[0][0], "/leak/map/{id}",
        "the leaky route first: {routes:#?}"
    );
    let hostile = routes.iter().find(|r| r[0] == HOSTILE);
    assert!(hostile.is_some(), "the hostile name, as text: {routes:#?}");
    assert!(page["trend"].as_bool().unwrap(), "the trend chart");
    let links: Vec<&str> = page["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let base = format!("http://127.0.0.1:{}/debug/leaks", addr.port());
    assert!(
        links.contains(&format!("{base}/heap").as_str()),
        "{links:?}"
    );
    assert!(
        links.contains(&format!("{base}/tasks?debug=1").as_str()),
        "{links:?}"
    );
    let reports = page["reports"].as_array().unwrap();
    assert!(
        reports
            .iter()
            .any(|r| r.as_str().unwrap().contains(HOSTILE)),
        "the hostile route's reports show its name as text: {reports:#?}"
    );
    assert!(!page["text"].as_str().unwrap().contains("hunter2"));
}
