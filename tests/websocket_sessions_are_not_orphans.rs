//! A WebSocket session is its connection's, not the request's: the `101 Switching Protocols`
//! response ends the request, and the session task axum spawns lives as long as its client.
//! A real axum service with `ws` on 127.0.0.1, real `tokio-tungstenite` clients that keep a few
//! sessions open at a time (each new client closes the oldest), steady batches with a sweep
//! after each, the exact allocator (which sees plain spawns) and, built with
//! `--cfg tokio_unstable`, `instrument_runtime`, on a current-thread and a 4-worker runtime: no
//! report of any kind.
#![cfg(feature = "axum")]

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use leakwatch::{LeakDetector, TrackingAllocator};
use tokio_tungstenite::tungstenite;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

/// Sessions each client batch opens, sessions kept open at a time, and batches.
const BATCH: usize = 8;
const OPEN_AT_ONCE: usize = 4;
const BATCHES: usize = 12;

async fn chat(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

/// Echoes every message until the client closes.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) || socket.send(message).await.is_err() {
            return;
        }
    }
}

fn app(detector: &LeakDetector) -> Router {
    Router::new()
        .route("/chat", get(chat))
        .layer(detector.layer())
}

async fn drive() -> Vec<leakwatch::LeakReport> {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink).memory_window(8).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app(&detector);
    let server = tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    let mut open = VecDeque::new();
    for _ in 0..BATCHES {
        for i in 0..BATCH {
            let url = format!("ws://{addr}/chat");
            let (mut socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
            assert_eq!(response.status(), 101);
            let text = format!("hello {i}");
            socket
                .send(tungstenite::Message::text(text.clone()))
                .await
                .unwrap();
            let echoed = socket.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
            open.push_back(socket);
            if open.len() > OPEN_AT_ONCE {
                let mut oldest = open.pop_front().unwrap();
                oldest.close(None).await.unwrap();
                // Wait for the server's close, so the session has ended.
                while let Some(Ok(_)) = oldest.next().await {}
            }
        }
        support::wait_until("the upgrade requests closed", || {
            detector.stats().requests_in_flight == 0
        })
        .await;
        // Give the closed sessions' tasks a moment to end, as a timer-driven sweep would.
        tokio::time::sleep(Duration::from_millis(5)).await;
        detector.sweep_now();
    }
    // Sessions still open at the end are their clients', and still no leak.
    assert_eq!(open.len(), OPEN_AT_ONCE);
    detector.sweep_now();
    let alive = detector.stats().routes;
    let chat = alive.iter().find(|r| r.route == "/chat").unwrap();
    assert!(
        chat.tracked_tasks >= 1,
        "the open sessions are tracked: {chat:?}"
    );
    drop(open);
    server.abort();
    sink.reports()
}

fn run(flavor: &str) {
    #[cfg(tokio_unstable)]
    let runtime = support::hooked_runtime(flavor);
    #[cfg(not(tokio_unstable))]
    let runtime = support::runtime_builder(flavor).build().unwrap();
    let reports = runtime.block_on(drive());
    let text: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
    assert!(reports.is_empty(), "{flavor}:\n{}", text.join("\n"));
}

#[test]
fn websocket_sessions_are_not_blamed_on_their_upgrade_request() {
    run("current_thread");
}

#[test]
fn the_same_on_four_workers() {
    run("multi_thread");
}
