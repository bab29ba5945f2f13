//! The snapshot, its page, its text and its JSON count every active report — more than any of
//! their caps — per route and per (route, kind, place), and `?route=` / `?kind=` narrow them.
#![cfg(feature = "axum")]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{header, Request, StatusCode};
use leakwatch::snapshot::Snapshot;
use leakwatch::LeakKind;
use serde_json::Value;
use tower::ServiceExt;

/// More orphans on one route than a snapshot lists, then a few on another: the latter's reports
/// come after the cap.
const MANY: usize = Snapshot::MAX_REPORTS + 44;
const FEW: usize = 5;

static SPAWN_LINE: AtomicU32 = AtomicU32::new(0);

async fn orphan() -> &'static str {
    SPAWN_LINE.store(line!() + 1, Ordering::Relaxed);
    leakwatch::spawn(std::future::pending::<()>());
    "left a task"
}

async fn get_snapshot(
    detector: &leakwatch::LeakDetector,
    query: &str,
    html: bool,
) -> (StatusCode, String) {
    let mut request = Request::get(format!("/debug/leaks{query}"));
    if html {
        request = request.header(header::ACCEPT, "text/html");
    }
    let response = detector
        .snapshot_service()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = support::read_body(response).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn every_report_is_counted_whatever_the_caps() {
    let (detector, _sink) = support::detector();
    let app = Router::new()
        .route("/many/{id}", get(orphan))
        .route("/few/{id}", get(orphan))
        .layer(detector.layer());
    for (route, n) in [("many", MANY), ("few", FEW)] {
        for i in 0..n {
            let request = Request::get(format!("/{route}/{i}"))
                .body(Body::empty())
                .unwrap();
            support::read_body(app.clone().oneshot(request).await.unwrap()).await;
        }
    }
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), MANY + FEW);
    let place = format!("{}:{}", file!(), SPAWN_LINE.load(Ordering::Relaxed));

    // The snapshot itself: a capped list of examples, uncapped counts.
    let snapshot = detector.snapshot();
    assert_eq!(snapshot.reports.len(), Snapshot::MAX_REPORTS);
    assert_eq!(snapshot.reports_omitted, MANY + FEW - Snapshot::MAX_REPORTS);
    assert!(
        snapshot.reports.iter().all(|r| r.route == "/many/{id}"),
        "the few are past the cap"
    );
    let groups: Vec<(&str, LeakKind, Option<&str>, u64)> = snapshot
        .report_groups
        .iter()
        .map(|g| (g.route.as_str(), g.kind, g.place.as_deref(), g.count))
        .collect();
    assert_eq!(
        groups,
        [
            (
                "/many/{id}",
                LeakKind::OrphanTask,
                Some(place.as_str()),
                MANY as u64
            ),
            (
                "/few/{id}",
                LeakKind::OrphanTask,
                Some(place.as_str()),
                FEW as u64
            ),
        ]
    );
    assert!(snapshot
        .report_groups
        .iter()
        .all(|g| g.confirmed == g.count));
    let few = &snapshot.report_groups[1];
    assert!(few.first_detected <= few.last_detected);
    assert_eq!(few.example.route, "/few/{id}");
    let active = |route: &str| {
        snapshot
            .stats
            .routes
            .iter()
            .find(|r| r.route == route)
            .unwrap()
            .active_reports
    };
    assert_eq!(
        (active("/many/{id}"), active("/few/{id}")),
        (MANY as u64, FEW as u64)
    );

    // JSON: the same counts.
    let (status, json) = get_snapshot(&detector, "", false).await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["report_groups"][1]["route"], "/few/{id}");
    assert_eq!(json["report_groups"][1]["count"], FEW);
    assert_eq!(json["report_groups"][1]["kind"], "OrphanTask");
    let routes = json["stats"]["routes"].as_array().unwrap();
    let few_route = routes.iter().find(|r| r["route"] == "/few/{id}").unwrap();
    assert_eq!(few_route["active_reports"], FEW);

    // Narrowed to one route: its reports, groups, routes and tasks only.
    let (_, json) = get_snapshot(&detector, "?route=%2Ffew%2F%7Bid%7D", false).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["report_groups"].as_array().unwrap().len(), 1);
    assert_eq!(json["reports"].as_array().unwrap().len(), FEW);
    assert_eq!(json["stats"]["routes"].as_array().unwrap().len(), 1);
    assert!(json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["route"] == "/few/{id}"));
    // By kind: none of another kind; a kind that does not exist is refused without echoing it.
    let (_, json) = get_snapshot(&detector, "?kind=RetainedBody", false).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert!(json["report_groups"].as_array().unwrap().is_empty());
    let (_, json) = get_snapshot(&detector, "?kind=OrphanTask", false).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["report_groups"].as_array().unwrap().len(), 2);
    let (status, text) = get_snapshot(&detector, "?kind=Secret123", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("unknown kind") && !text.contains("Secret123"),
        "{text}"
    );

    // The page: every route counted, the groups table.
    let (_, page) = get_snapshot(&detector, "", true).await;
    let total = MANY + FEW;
    assert!(
        page.contains(&format!("Active reports ({total}, in 2 groups)")),
        "{page}"
    );
    let row = page
        .split("<tr")
        .find(|row| row.contains("<td>/few/{id}</td>"))
        .unwrap();
    assert!(
        row.contains(&format!("<td class=\"bad\">{FEW}</td>")),
        "{row}"
    );
    assert!(page.contains("<table id=\"groups\">"));

    // The text form: the counts too.
    let (_, text) = get_snapshot(&detector, "?format=text", false).await;
    assert!(
        text.contains(&format!("reports by route, kind and place ({total})")),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("OrphanTask") && l.contains("/few/{id}"))
        .unwrap();
    assert!(line.trim_start().starts_with(&FEW.to_string()), "{line}");
}
