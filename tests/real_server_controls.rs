//! C4 and C7 against a real hyper server on 127.0.0.1 with a real HTTP client: a streaming
//! response, a client that disconnects mid-response and a panicking handler leave nothing behind.
//! Plain tower services named by `route_fn`, so this runs without the `axum` feature too.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use leakwatch::{server::RequestBody, LeakKind, LeakState};
use support::ChannelBody;
use tower::ServiceBuilder;

fn route(_: &http::Method, uri: &http::Uri) -> Option<&'static str> {
    match uri.path() {
        "/events" => Some("/events"),
        "/panic" => Some("/panic"),
        _ => None,
    }
}

/// A server-sent-events-like stream: a task spawned for the request feeds `chunks` chunks,
/// `every` apart, and ends when they are sent or the client is gone.
async fn events(chunks: usize, every: Duration) -> Result<Response<ChannelBody>, Infallible> {
    let (sender, body) = ChannelBody::new();
    leakwatch::spawn(async move {
        for i in 0..chunks {
            tokio::time::sleep(every).await;
            if sender
                .send(Bytes::from(format!("data: {i}\n\n")))
                .await
                .is_err()
            {
                return; // the client went away
            }
        }
    });
    Ok(Response::new(body))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Response<Incoming> {
    let uri = format!("http://{addr}{path}");
    support::client()
        .request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

/// C4: a 2-second streaming response, polled to its end, keeps its request open until the end,
/// and its feeding task is never an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_streaming_response_polled_to_the_end() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .route_fn(route)
        .max_request_age(Duration::from_secs(1))
        .streaming_route("/events")
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(detector.layer())
        .service_fn(|_: Request<RequestBody<Incoming>>| events(10, Duration::from_millis(200)));
    let (addr, server) = support::serve(service).await;

    let mut body = get(addr, "/events").await.into_body();
    let mut chunks = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        chunks += 1;
        if chunks < 10 {
            // Mid-stream (later chunks are past max_request_age): the request is open and
            // nothing is judged.
            assert!(detector.sweep_now().is_empty());
            assert_eq!(detector.stats().requests_in_flight, 1);
        }
    }
    assert_eq!(chunks, 10);

    support::wait_until("the stream's scope closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    detector.assert_no_leaks().await;
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    server.abort();
}

/// A request open past `max_request_age` on a route not allowed to stream is a stuck request,
/// released once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_open_too_long_are_reported_stuck_then_released() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .route_fn(route)
        .max_request_age(Duration::from_millis(100))
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(detector.layer())
        .service_fn(|_: Request<RequestBody<Incoming>>| events(2, Duration::from_millis(300)));
    let (addr, server) = support::serve(service).await;

    let mut body = get(addr, "/events").await.into_body();
    body.frame().await.unwrap().unwrap(); // 300 ms after the request opened
    let stuck = detector.sweep_now();
    assert_eq!(stuck.len(), 1, "{stuck:#?}");
    assert_eq!(stuck[0].kind, LeakKind::StuckRequest);
    assert_eq!(stuck[0].route, "/events");
    assert_eq!(stuck[0].state, LeakState::Confirmed);
    assert!(stuck[0].closed_at.is_none());
    assert!(stuck[0].age >= Duration::from_millis(100));

    while body.frame().await.is_some() {}
    support::wait_until("the scope closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    let released = detector.sweep_now();
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_eq!(released[0].kind, LeakKind::StuckRequest);
    assert_eq!(released[0].state, LeakState::Released);
    detector.assert_no_leaks().await;
    server.abort();
}

/// C7: the client disconnects mid-response; the scope closes and the feeding task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_client_disconnecting_mid_response() {
    let sink = leakwatch::sink::CollectingSink::new();
    // The feeding task notices the disconnect at its next send, well inside the grace period.
    let detector = support::builder(&sink)
        .route_fn(route)
        .grace(Duration::from_millis(500))
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        |_: Request<RequestBody<Incoming>>| events(usize::MAX, Duration::from_millis(10)),
    );
    let (addr, server) = support::serve(service).await;

    let mut body = get(addr, "/events").await.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(detector.stats().requests_in_flight, 1);
    drop(body); // the client goes away mid-stream

    support::wait_until("the scope closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    detector.assert_no_leaks().await;
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    server.abort();
}

/// C7: a handler panics under tower-http's `CatchPanicLayer`; the client gets a 500 and the
/// scope closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_handler_panicking_under_catch_panic() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink).route_fn(route).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(detector.layer())
        .service_fn(|_: Request<RequestBody<Incoming>>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
    let (addr, server) = support::serve(service).await;

    for _ in 0..3 {
        let response = get(addr, "/panic").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        support::read_body(response).await;
    }
    support::wait_until("the scopes closed", || {
        detector.stats().requests_in_flight == 0
    })
    .await;
    detector.assert_no_leaks().await;
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    server.abort();
}
