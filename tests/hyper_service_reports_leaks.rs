//! A plain hyper/tower service (no axum, routes named by `route_fn`) gets the same reports: an
//! orphan task through a real server and client, an unconsumed body and a retained body through
//! `oneshot`.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use leakwatch::{server::RequestBody, LeakKind, LeakState};
use tower::{ServiceBuilder, ServiceExt};

fn route(_: &http::Method, uri: &http::Uri) -> Option<&'static str> {
    uri.path().starts_with("/jobs/").then_some("/jobs/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_task_through_a_real_hyper_server() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink).route_fn(route).build().unwrap();
    let spawn_line = Arc::new(Mutex::new(0));
    let line = spawn_line.clone();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        move |_: Request<RequestBody<Incoming>>| {
            let line = line.clone();
            async move {
                *line.lock().unwrap() = line!() + 1;
                leakwatch::spawn(std::future::pending::<()>());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        },
    );
    let (addr, server) = support::serve(service).await;

    // Two requests: the first orphan from a spawn line stays suspected until a second request
    // leaves one too (it could be a worker started once).
    for id in ["job-req-1", "job-req-2"] {
        let request = Request::get(format!("http://{addr}/jobs/job-7f3c?token=hunter2"))
            .header("x-request-id", id)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = support::client().request(request).await.unwrap();
        assert_eq!(&support::read_body(response).await[..], b"ok");
    }

    support::wait_until("the scope closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let report = reports
        .iter()
        .find(|r| r.request_id == "job-req-1")
        .unwrap();
    assert_eq!(report.kind, LeakKind::OrphanTask);
    assert_eq!(report.state, LeakState::Confirmed);
    assert_eq!(report.route, "/jobs/{id}");
    assert_eq!(report.request_id, "job-req-1");
    let location = report.location.unwrap();
    assert_eq!(location.file, file!());
    assert_eq!(location.line, *spawn_line.lock().unwrap());
    // Neither the raw path nor its query (a number such as `1234` could turn up in a
    // timestamp).
    let rendered = format!("{report:?}");
    assert!(!rendered.contains("job-7f3c") && !rendered.contains("hunter2"));
    assert_eq!(sink.reports(), reports);
    server.abort();
}

#[tokio::test]
async fn unconsumed_and_retained_bodies_through_oneshot() {
    let (detector, sink) = support::detector();
    let kept: Arc<Mutex<Vec<RequestBody<Full<Bytes>>>>> = Arc::default();
    let service = {
        let kept = kept.clone();
        ServiceBuilder::new().layer(detector.layer()).service_fn(
            move |req: Request<RequestBody<Full<Bytes>>>| {
                let kept = kept.clone();
                async move {
                    if req.uri().path() == "/keep" {
                        kept.lock().unwrap().push(req.into_body());
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            },
        )
    };
    for path in ["/ignore", "/keep"] {
        let request = Request::post(path)
            .body(Full::new(Bytes::from(vec![0u8; 4096])))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        support::read_body(response).await;
    }
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    assert_eq!(
        support::of_kind(&reports, LeakKind::UnconsumedBody).len(),
        1
    );
    assert_eq!(support::of_kind(&reports, LeakKind::RetainedBody).len(), 1);
    assert!(reports
        .iter()
        .all(|r| r.route == leakwatch::route::UNMATCHED));
    assert_eq!(sink.reports().len(), 2);

    kept.lock().unwrap().clear(); // dropped unread, but it was already reported as retained
    let released = detector.sweep_now();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].kind, LeakKind::RetainedBody);
    assert_eq!(released[0].state, LeakState::Released);
}

#[tokio::test]
async fn reused_scopes_report_their_own_request() {
    // Scopes of finished requests are pooled by the sweeper and reused by later requests: a
    // leak must still carry the route and request id of the request that made it.
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink).route_fn(route).build().unwrap();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        |req: Request<RequestBody<Full<Bytes>>>| async move {
            if req.uri().path().starts_with("/jobs/") {
                leakwatch::spawn(std::future::pending::<()>());
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    );
    let send = |path: String, id: String| {
        let service = service.clone();
        async move {
            let request = Request::get(path)
                .header("x-request-id", id)
                .body(Full::new(Bytes::new()))
                .unwrap();
            support::read_body(service.oneshot(request).await.unwrap()).await;
        }
    };
    for round in 0..3 {
        for i in 0..100 {
            send(format!("/clean/{i}"), format!("clean-{round}-{i}")).await;
        }
        // Finished scopes go to the pool here; the next requests reuse them.
        assert!(detector.sweep_now().is_empty());
        for i in 0..20 {
            send(format!("/jobs/{i}"), format!("job-{round}-{i}")).await;
        }
        let mut ids: Vec<String> = support::of_kind(&detector.sweep_now(), LeakKind::OrphanTask)
            .into_iter()
            .map(|report| {
                assert_eq!(report.route, "/jobs/{id}");
                assert_eq!(report.state, LeakState::Confirmed);
                report.request_id
            })
            .collect();
        ids.sort();
        let mut expected: Vec<String> = (0..20).map(|i| format!("job-{round}-{i}")).collect();
        expected.sort();
        assert_eq!(ids, expected, "round {round}");
    }
}
