//! The soak run of `benches/soak.sh`, shared by its three servers (which differ only in their
//! global allocator): a million clean requests through a real axum server on 127.0.0.1 with the
//! leak layer, then 10 000 requests held in flight at once.
//!
//! It prints, and checks: the registry back to 0 entries once the requests have finished, no
//! leak report, the resident set's growth after the warm-up (each read after `malloc_trim`),
//! and the detector's own heap bytes
//! per request in flight (with a tracking allocator: the process's live heap with 10 000
//! requests in flight through the layer, less the same without it).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leakwatch::LeakDetector;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Requests after the warm-up, in all.
const REQUESTS: usize = 1_000_000;
const WARMUP: usize = 200_000;
const CONNECTIONS: usize = 32;
const IN_FLIGHT: usize = 10_000;

/// The server's routes: nothing kept by any of them.
fn routes(gate: Arc<Notify>) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello, world" }))
        .route(
            "/alloc",
            get(|| async {
                let items: Vec<String> = (0..100).map(|i| format!("item-{i}")).collect();
                items.join(",").len().to_string()
            }),
        )
        .route(
            "/wait",
            get(move || {
                let gate = gate.clone();
                async move { gate.notified().await }
            }),
        )
}

/// The resident set size, from `/proc/self/status` (Linux), after asking glibc's `malloc` to
/// give its free memory back (`malloc_trim`): what is left is what the process holds, not what
/// the allocator kept cached for it.
fn rss_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sends `n` requests over `CONNECTIONS` keep-alive connections, alternating `/hello` and
/// `/alloc`.
async fn drive(addr: std::net::SocketAddr, n: usize) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let path = if i % 2 == 0 { "/hello" } else { "/alloc" };
                    let uri = format!("http://{addr}{path}").parse().expect("a valid URI");
                    let response = client.get(uri).await.expect("the server answers");
                    assert!(response.status().is_success());
                    response.into_body().collect().await.expect("a body");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a client worker");
    }
}

/// Sweeps until no request is open any more and the registry is empty, or 10 s have passed;
/// returns the registry's entries then.
async fn settle(detector: &LeakDetector) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        detector.sweep_now();
        let stats = detector.stats();
        if stats.registry_entries == 0 || Instant::now() > deadline {
            return stats.registry_entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process's live heap with `IN_FLIGHT` requests held open at once through `app`, less
/// before them; `None` without a tracking allocator.
async fn in_flight_heap(detector: &LeakDetector, app: Router, gate: &Notify) -> Option<i64> {
    let before = detector.stats().live_heap_bytes? as i64;
    let started = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (app, started) = (app.clone(), started.clone());
            tokio::spawn(async move {
                let request = http::Request::get("/wait")
                    .body(axum::body::Body::empty())
                    .expect("a request");
                started.fetch_add(1, Ordering::Relaxed);
                app.oneshot(request).await
            })
        })
        .collect();
    while started.load(Ordering::Relaxed) < IN_FLIGHT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = detector.stats().live_heap_bytes? as i64;
    gate.notify_waiters();
    for task in tasks {
        task.await.expect("a waiting request").expect("an answer");
    }
    Some(during - before)
}

/// Runs the soak in a multi-threaded runtime and prints its figures, labelled `mode`; exits
/// with status 1 when a check fails.
pub fn run(mode: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let passed = runtime.block_on(soak(mode));
    if !passed {
        std::process::exit(1);
    }
}

async fn soak(mode: &str) -> bool {
    let detector = LeakDetector::builder()
        .grace(Duration::from_millis(100))
        .registry_capacity(1 << 20)
        .build()
        .expect("a valid configuration");
    let gate = Arc::new(Notify::new());
    let app = routes(gate.clone()).layer(detector.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(axum::serve(listener, app.clone()).into_future());

    drive(addr, WARMUP).await;
    settle(&detector).await;
    let rss_before = rss_bytes();
    let heap_before = detector.stats().live_heap_bytes;
    let region_before = detector.stats().sampled_region_bytes;
    let started = Instant::now();
    drive(addr, REQUESTS).await;
    let elapsed = started.elapsed();
    let entries = settle(&detector).await;
    let rss_after = rss_bytes();
    let heap_after = detector.stats().live_heap_bytes;
    let leaks = detector.leaks();
    let stats = detector.stats();
    server.abort();

    let with_layer = in_flight_heap(&detector, app, &gate).await;
    let without = in_flight_heap(&detector, routes(gate.clone()), &gate).await;
    // Any middleware under `Router::layer` costs something per request (axum boxes the layered
    // service's future): measured with a layer that does nothing.
    let identity = routes(gate.clone()).layer(tower::layer::util::Identity::new());
    let with_identity = in_flight_heap(&detector, identity, &gate).await;
    let per_request = with_layer
        .zip(without)
        .map(|(with, without)| (with - without) / IN_FLIGHT as i64);
    let any_layer = with_identity
        .zip(without)
        .map(|(with, without)| (with - without) / IN_FLIGHT as i64);

    let growth = rss_before
        .zip(rss_after)
        .map(|(before, after)| after as i64 - before as i64);
    println!(
        "{mode}: {REQUESTS} requests in {:.1} s ({:.0} req/s); registry entries after: {entries}; \
         leak reports: {}; RSS {} MB -> {} MB (growth {} KB); uncounted entries: {}; uncounted requests: {}",
        elapsed.as_secs_f64(),
        REQUESTS as f64 / elapsed.as_secs_f64(),
        leaks.len(),
        rss_before.map_or(0, |b| b >> 20),
        rss_after.map_or(0, |b| b >> 20),
        growth.map_or(0, |g| g / 1024),
        stats.uncounted.registry_entries,
        stats.uncounted.requests,
    );
    if let Some((before, after)) = heap_before.zip(heap_after) {
        println!(
            "{mode}: live heap (allocator's count) {} KB -> {} KB; sampled blocks' range used: \
             {} KB -> {} KB",
            before / 1024,
            after / 1024,
            region_before / 1024,
            stats.sampled_region_bytes / 1024
        );
    }
    match per_request.zip(any_layer) {
        Some((bytes, any_layer)) => println!(
            "{mode}: detector's own heap per request in flight, at {IN_FLIGHT} at once: {bytes} bytes{} \
             (of which {any_layer} bytes any layer under Router::layer costs, an identity layer measured the same way)",
            if stats.memory == leakwatch::stats::MemoryAccounting::Estimated { " (estimated)" } else { "" }
        ),
        None => println!("{mode}: no tracking allocator: in-flight footprint not measured"),
    }
    for leak in &leaks {
        println!("  {leak}");
    }
    let mut passed = true;
    let mut check = |ok: bool, what: &str| {
        if !ok {
            println!("{mode}: FAILED: {what}");
            passed = false;
        }
    };
    check(entries == 0, "the registry is back to 0 entries");
    check(leaks.is_empty(), "no leak report");
    check(growth.is_none_or(|g| g < 5 << 20), "RSS growth under 5 MB");
    // Estimates from sampling are too coarse for a per-request figure: exact mode checks it.
    let exact = per_request.filter(|_| stats.memory == leakwatch::stats::MemoryAccounting::Exact);
    check(
        exact.is_none_or(|b| b <= 1024),
        "at most 1 KiB per request in flight",
    );
    passed
}
