//! A report is made once, by the sweep that saw its finding change state; reading the detector
//! later (`leaks`, the snapshot, `assert_no_leaks`' message) returns that report, with the
//! `detected_at` of the sweep — not one rebuilt at the time of the read.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::sink::CollectingSink;
use leakwatch::{server::RequestBody, LeakKind, LeakReport, LeakState};
use tower::{ServiceBuilder, ServiceExt};

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// The report of the orphan task of request `orphan-1` in `reports` (`orphan-2` leaves one from
/// the same line: the first orphan of a line alone stays suspected, as a worker started once).
fn orphan_of_the_first(reports: &[LeakReport]) -> LeakReport {
    let found: Vec<LeakReport> = support::of_kind(reports, LeakKind::OrphanTask)
        .into_iter()
        .filter(|r| r.request_id == "orphan-1")
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one orphan of orphan-1 expected in {reports:#?}"
    );
    found.into_iter().next().unwrap()
}

/// The one report of `kind` in `reports`.
fn one(reports: &[LeakReport], kind: LeakKind) -> LeakReport {
    let found = support::of_kind(reports, kind);
    assert_eq!(found.len(), 1, "one {kind} expected in {reports:#?}");
    found.into_iter().next().unwrap()
}

#[tokio::test]
async fn reading_reports_returns_them_as_the_sweep_made_them() {
    let sink = CollectingSink::new();
    let detector = support::builder(&sink)
        .confirm_sweeps(1)
        .max_request_age(Duration::from_millis(1))
        .route_fn(|_, uri| {
            Some(if uri.path() == "/stuck" {
                "/stuck"
            } else {
                "/orphan"
            })
        })
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        |req: Request<RequestBody<Full<Bytes>>>| async move {
            if req.uri().path() == "/stuck" {
                std::future::pending::<()>().await;
            }
            leakwatch::spawn(std::future::pending::<()>());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    let stuck = tokio::spawn(service.clone().oneshot(request("/stuck")));
    for id in ["orphan-1", "orphan-2"] {
        let mut request = request("/orphan");
        request
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static(id));
        let response = service.clone().oneshot(request).await.unwrap();
        support::read_body(response).await;
    }
    // Past `max_request_age`: the request to /stuck is stuck.
    tokio::time::sleep(Duration::from_millis(5)).await;

    let made = detector.sweep_now();
    let orphan = orphan_of_the_first(&made);
    let stuck_report = one(&made, LeakKind::StuckRequest);
    assert_eq!(orphan.state, LeakState::Suspected);
    assert_eq!(stuck_report.state, LeakState::Suspected);

    // Time passes between the sweep and the reads: what is read is still what was made.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = detector.leaks();
    assert_eq!(orphan_of_the_first(&read), orphan);
    assert_eq!(one(&read, LeakKind::StuckRequest), stuck_report);
    let snapshot = detector.snapshot();
    assert_eq!(orphan_of_the_first(&snapshot.reports), orphan);
    assert_eq!(one(&snapshot.reports, LeakKind::StuckRequest), stuck_report);
    assert_eq!(sink.reports(), made, "the sinks got the same reports");

    // The next sweep confirms both: new reports, made then, replace the suspected ones.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let confirmed = detector.sweep_now();
    let orphan_confirmed = orphan_of_the_first(&confirmed);
    assert_eq!(orphan_confirmed.state, LeakState::Confirmed);
    assert!(orphan_confirmed.detected_at > orphan.detected_at);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = detector.leaks();
    assert_eq!(orphan_of_the_first(&read), orphan_confirmed);
    assert_eq!(
        one(&read, LeakKind::StuckRequest),
        one(&confirmed, LeakKind::StuckRequest)
    );

    // A sweep that changes nothing makes no report, and the reads stay as they were.
    assert!(detector.sweep_now().is_empty());
    assert_eq!(orphan_of_the_first(&detector.leaks()), orphan_confirmed);

    // The stuck request ends: its report is released and no longer read.
    stuck.abort();
    let _ = stuck.await;
    let released = detector.sweep_now();
    assert_eq!(
        one(&released, LeakKind::StuckRequest).state,
        LeakState::Released
    );
    assert!(support::of_kind(&detector.leaks(), LeakKind::StuckRequest).is_empty());
}
