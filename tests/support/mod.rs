//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use leakwatch::sink::CollectingSink;
use leakwatch::{LeakDetector, LeakDetectorBuilder, LeakKind, LeakReport};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[cfg(all(feature = "axum", not(tokio_unstable)))]
pub mod orphans;
#[cfg(feature = "axum")]
pub mod timing;
#[cfg(feature = "axum")]
pub mod whose;

/// A builder for test detectors: no grace, confirmed at the first sweep, no background sweeps
/// (tests sweep with `sweep_now`), reports collected.
pub fn builder(sink: &CollectingSink) -> LeakDetectorBuilder {
    LeakDetector::builder()
        .grace(Duration::ZERO)
        .confirm_sweeps(0)
        .sweep_interval(Duration::from_secs(3600))
        .sink(sink.clone())
}

/// A test detector and the sink it reports to.
pub fn detector() -> (LeakDetector, CollectingSink) {
    let sink = CollectingSink::new();
    (builder(&sink).build().unwrap(), sink)
}

/// The message of the panic `f` ends in, or `None` when it returns.
pub fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
    let payload = std::panic::catch_unwind(f).err()?;
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
    Some(message.unwrap_or_default())
}

/// The reports of one kind.
pub fn of_kind(reports: &[LeakReport], kind: LeakKind) -> Vec<LeakReport> {
    reports.iter().filter(|r| r.kind == kind).cloned().collect()
}

/// Reads a response body to its end.
pub async fn read_body<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Serves `service` with hyper on 127.0.0.1 (an ephemeral port); the server stops when the
/// returned task is aborted or the runtime ends.
pub async fn serve<S, B>(service: S) -> (SocketAddr, JoinHandle<()>)
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, server)
}

/// A real HTTP/1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Runs an async test body on a current-thread and on a multi-thread runtime.
#[macro_export]
macro_rules! on_both_runtimes {
    ($($name:ident => $body:path;)*) => {
        mod current_thread {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    $body().await
                }
            )*
        }
        mod multi_thread {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body().await
                }
            )*
        }
    };
}

/// Runs `test` on a current-thread and on a multi-thread runtime (2 workers), each built with
/// leakwatch's task hooks.
#[cfg(tokio_unstable)]
pub fn on_both_hooked_runtimes<F: std::future::Future<Output = ()>>(test: impl Fn() -> F) {
    let mut current = tokio::runtime::Builder::new_current_thread();
    let mut multi = tokio::runtime::Builder::new_multi_thread();
    multi.worker_threads(2);
    for builder in [&mut current, &mut multi] {
        let runtime = leakwatch::instrument_runtime(builder.enable_all())
            .build()
            .unwrap();
        runtime.block_on(test());
    }
}

/// Runs `test` on a current-thread and on a multi-thread runtime (2 workers): built with
/// `--cfg tokio_unstable`, with leakwatch's task hooks; otherwise as `#[tokio::main]` builds
/// them (the `TrackingAllocator` sees plain spawns).
pub fn on_both_runtimes_as_built<F: std::future::Future<Output = ()>>(test: impl Fn() -> F) {
    #[cfg(tokio_unstable)]
    on_both_hooked_runtimes(test);
    #[cfg(not(tokio_unstable))]
    for flavor in ["current_thread", "multi_thread"] {
        let mut builder = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => {
                let mut multi = tokio::runtime::Builder::new_multi_thread();
                multi.worker_threads(2);
                multi
            }
        };
        builder.enable_all().build().unwrap().block_on(test());
    }
}

/// A response body fed through a channel: a frame per message, the end when every sender is
/// gone. Not buffered.
pub struct ChannelBody {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender feeding it.
    pub fn new() -> (tokio::sync::mpsc::Sender<Bytes>, Self) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        (sender, ChannelBody { receiver })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Waits (polling, up to 10 s) until `condition` holds; panics with `what` otherwise.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A runtime builder of one flavour: `"current_thread"`, or a multi-thread runtime with four
/// workers, as production services run. Timers and IO enabled.
pub fn runtime_builder(flavor: &str) -> tokio::runtime::Builder {
    let mut builder = match flavor {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut multi = tokio::runtime::Builder::new_multi_thread();
            multi.worker_threads(4);
            multi
        }
    };
    builder.enable_all();
    builder
}

/// [`runtime_builder`] with leakwatch's task hooks installed.
#[cfg(tokio_unstable)]
pub fn hooked_runtime(flavor: &str) -> tokio::runtime::Runtime {
    let mut builder = runtime_builder(flavor);
    leakwatch::instrument_runtime(&mut builder).build().unwrap()
}
