//! A leaky axum service, driven by its own HTTP client, and the leaks leakwatch finds in it.
//!
//! ```text
//! cargo run --example demo                  # drive it, print the report table, exit
//! cargo run --example demo -- --requests 50 --clean-requests 500 --concurrency 32
//! cargo run --example demo -- --serve       # keep serving on 127.0.0.1:3000; leaks are logged
//! ```
//!
//! Each leaky route reproduces one pattern of `tests/scenarios/README.md` (L1–L10, L9 against
//! an in-process upstream); the clean routes (C1–C6, and L9's control) must never be reported.
//! The service is the one the tests drive (`examples/scenarios`). The demo installs the `TrackingAllocator`, so heap
//! memory kept by requests is attributed to their routes.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leakwatch::sink::{CollectingSink, TracingSink};
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use tokio::sync::Semaphore;

mod scenarios;

use scenarios::{start_upstream, Kept};

/// The demo counts heap memory per request and per route.
#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// How a route of the demo behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Leaks something per request: one report per request.
    Leaky,
    /// Leaks heap memory per request: one `RetainedMemory` report for the route.
    LeakyMemory,
    /// Never reported.
    Clean,
    /// Never reported, though it retains memory (a bounded cache, a one-time init).
    CleanMemory,
}

/// One route of the demo: how to call it and what it does.
struct Target {
    method: &'static str,
    path: &'static str,
    template: &'static str,
    body_len: usize,
    load: Load,
    scenario: &'static str,
}

const fn target(
    method: &'static str,
    path: &'static str,
    template: &'static str,
    body_len: usize,
    load: Load,
    scenario: &'static str,
) -> Target {
    Target {
        method,
        path,
        template,
        body_len,
        load,
        scenario,
    }
}

use Load::*;

#[rustfmt::skip]
const TARGETS: &[Target] = &[
    target("GET", "/leak/task/{n}", "/leak/task/{id}", 0, Leaky, "L1 task sleeping an hour"),
    target("GET", "/leak/channel/{n}", "/leak/channel/{id}", 0, Leaky, "L2 task blocked on a channel"),
    target("GET", "/leak/cache/{n}", "/leak/cache/{id}", 0, LeakyMemory, "L3 4 KiB kept in a global map"),
    target("POST", "/leak/upload", "/leak/upload", 64 * 1024, Leaky, "L4 body never read"),
    target("POST", "/leak/body", "/leak/body", 1024, Leaky, "L5 body kept after response"),
    target("GET", "/leak/callback/{n}", "/leak/callback/{id}", 0, LeakyMemory, "L6 closure capturing 16 KiB"),
    target("GET", "/leak/session/{n}", "/leak/session/{id}", 0, Leaky, "L7 watched object stored globally"),
    target("GET", "/leak/cycle/{n}", "/leak/cycle/{id}", 0, LeakyMemory, "L8 Arc cycle of 8 KiB"),
    target("GET", "/leak/upstream", "/leak/upstream", 0, Leaky, "L9 upstream body kept"),
    target("GET", "/leak/ticker", "/leak/ticker", 0, Leaky, "L10 ticker never stopped"),
    // A plain `tokio::spawn`: the `TrackingAllocator` sees the task's cell (no hooks needed).
    target("GET", "/leak/plain/{n}", "/leak/plain/{id}", 0, Leaky, "L1 plain tokio::spawn"),
    target("GET", "/ok/json", "/ok/json", 0, Clean, "C1 plain JSON"),
    target("GET", "/ok/task", "/ok/task", 0, Clean, "C2 task done inside grace"),
    target("GET", "/ok/lru/{n}", "/ok/lru/{id}", 0, CleanMemory, "C3 bounded cache of 32 entries"),
    target("GET", "/ok/stream", "/ok/stream", 0, Clean, "C4 streamed to the end"),
    target("GET", "/ok/config", "/ok/config", 0, CleanMemory, "C5 1 MiB OnceLock init"),
    target("POST", "/ok/upload", "/ok/upload", 16 * 1024, Clean, "C6 body read"),
    target("GET", "/ok/upstream", "/ok/upstream", 0, Clean, "L9's control: upstream body read"),
];

/// The scenario service, with the snapshot endpoint beside it (outside the detector's layer;
/// feature `serde`, which the repository's examples have on).
fn app(detector: &LeakDetector, kept: Kept) -> Router {
    let app = scenarios::app(detector, kept);
    #[cfg(feature = "serde")]
    let app = app.nest_service("/debug/leaks", detector.snapshot_service());
    app
}

struct Options {
    requests: usize,
    clean_requests: usize,
    memory_requests: usize,
    concurrency: usize,
    grace: Duration,
    serve: bool,
    addr: SocketAddr,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        requests: 20,
        clean_requests: 200,
        memory_requests: 150,
        concurrency: 16,
        grace: Duration::from_millis(300),
        serve: false,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--requests" => options.requests = parse(&value("--requests")?)?,
            "--clean-requests" => options.clean_requests = parse(&value("--clean-requests")?)?,
            "--memory-requests" => options.memory_requests = parse(&value("--memory-requests")?)?,
            "--concurrency" => {
                options.concurrency = parse::<usize>(&value("--concurrency")?)?.max(1)
            }
            "--grace-ms" => options.grace = Duration::from_millis(parse(&value("--grace-ms")?)?),
            "--addr" => options.addr = parse(&value("--addr")?)?,
            "--serve" => options.serve = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--requests N] [--clean-requests N] [--memory-requests N] \
                     [--concurrency N] [--grace-ms MS] [--serve] [--addr 127.0.0.1:3000]\n\
                     (memory leaks are judged once {MEMORY_WINDOW} newer requests of a route \
                     have finished: --memory-requests must exceed that)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if options.serve && options.addr.port() == 0 {
        options.addr.set_port(3000);
    }
    Ok(options)
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("invalid value {s:?}"))
}

fn main() {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    #[cfg(tokio_unstable)]
    leakwatch::instrument_runtime(&mut runtime);
    runtime.build().expect("a tokio runtime").block_on(run());
}

async fn run() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("demo: {message}");
            std::process::exit(2);
        }
    };
    // Sample the call stacks of about one allocation per 32 KiB allocated in requests.
    let mean_bytes = std::num::NonZeroU64::new(32 * 1024).expect("not zero");
    ALLOC.set_allocation_sites(leakwatch::AllocationSites::Sampled { mean_bytes });
    if options.serve {
        serve(options).await;
    } else {
        drive(options).await;
    }
}

/// Newer requests of a route after which an older one still holding memory counts against it.
const MEMORY_WINDOW: u64 = 64;

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, exports leak spans and metrics over OTLP — to
/// Jaeger, for example. (The repository's examples build leakwatch with its `otlp` feature; see
/// Cargo.toml. A build without it, such as the published crate's, does not export.)
#[cfg(feature = "otlp")]
fn otlp_export() -> Option<leakwatch::otlp::OtlpProviders> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    match leakwatch::otlp::init() {
        Ok(guard) => {
            println!("exporting leaks over OTLP");
            Some(guard)
        }
        Err(e) => {
            eprintln!("demo: not exporting: {e}");
            None
        }
    }
}

/// Without the `otlp` feature there is nothing to export (and nothing to flush at the end).
#[cfg(not(feature = "otlp"))]
struct NoExport;

#[cfg(not(feature = "otlp"))]
fn otlp_export() -> Option<NoExport> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        eprintln!("demo: not exporting: built without leakwatch's `otlp` feature");
    }
    None
}

/// The demo's detector: a short grace period, confirmed one sweep after it is suspected.
fn detector(options: &Options, sink: impl leakwatch::sink::ReportSink) -> LeakDetector {
    LeakDetector::builder()
        .grace(options.grace)
        .memory_window(MEMORY_WINDOW)
        .sweep_interval(Duration::from_millis(100))
        .confirm_sweeps(1)
        .sink(sink)
        .build()
        .expect("valid configuration")
}

/// `--serve`: keep the service up for manual use; leaks are logged as they are confirmed.
async fn serve(options: Options) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("leakwatch=info"))
        .init();
    let detector = detector(&options, TracingSink::new());
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    println!("leakwatch demo serving on http://{addr} (Ctrl-C to stop)");
    for t in TARGETS {
        let path = t.path.replace("{n}", "1");
        let data = if t.body_len > 0 {
            " --data-binary @/etc/hostname"
        } else {
            ""
        };
        println!(
            "  curl -X {} http://{addr}{path}{data}    # {}",
            t.method, t.scenario
        );
    }
    #[cfg(feature = "serde")]
    println!("  open http://{addr}/debug/leaks    # the detector's page, in a browser");
    #[cfg(feature = "serde")]
    println!("  curl http://{addr}/debug/leaks?format=text    # the snapshot as tables (JSON without ?format)");
    #[cfg(feature = "pprof")]
    println!("  go tool pprof -http=: http://{addr}/debug/leaks/heap    # the retained heap by route and line (pprof)");
    #[cfg(feature = "pprof")]
    println!("  curl http://{addr}/debug/leaks/tasks?debug=1    # the tracked tasks by route and spawn line (pprof without ?debug)");
    let kept = Kept::with_upstream(&detector, start_upstream().await);
    axum::serve(listener, app(&detector, kept))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}

/// The default: serve on an ephemeral loopback port, drive every route, print what leaked.
async fn drive(options: Options) {
    let collected = CollectingSink::new();
    let otlp = otlp_export();
    #[cfg(feature = "otlp")]
    let detector = match &otlp {
        Some(_) => {
            let sinks = leakwatch::sink::ReportSinkExt::chain(
                collected.clone(),
                leakwatch::sink::OtelSink::new(),
            );
            let detector = detector(&options, sinks);
            detector.register_metrics(&opentelemetry::global::meter("leakwatch"));
            detector
        }
        None => detector(&options, collected.clone()),
    };
    #[cfg(not(feature = "otlp"))]
    let detector = detector(&options, collected.clone());
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let kept = Kept::with_upstream(&detector, start_upstream().await);
    let server = tokio::spawn(axum::serve(listener, app(&detector, kept)).into_future());

    println!(
        "leakwatch demo: axum on http://{addr}, {} requests per leaky route, {} per clean route, \
         {} per memory route, concurrency {}, grace {} ms\n",
        options.requests,
        options.clean_requests,
        options.memory_requests,
        options.concurrency,
        options.grace.as_millis()
    );
    let started = Instant::now();
    let sent = load(addr, &options).await;
    println!(
        "sent {sent} requests in {} ms",
        started.elapsed().as_millis()
    );

    // Wait out the grace period and the confirming sweep of the background sweeper.
    let deadline = Instant::now() + options.grace + Duration::from_secs(10);
    let expected = expected_leaks(&options);
    loop {
        let confirmed = detector
            .leaks()
            .iter()
            .filter(|r| r.state == LeakState::Confirmed)
            .count();
        if confirmed >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    print_table(&detector.leaks(), &options);
    // Let the last requests' grace period pass, so that the statistics cover every request.
    tokio::time::sleep(options.grace).await;
    detector.sweep_now();
    print_snapshot(addr, &detector).await;
    let stats = detector.stats();
    if let Some(otlp) = otlp {
        // Export what is buffered before the process ends.
        tokio::task::spawn_blocking(move || drop(otlp)).await.ok();
        println!("\nleak spans and metrics exported over OTLP");
    }
    println!(
        "\ndetector: {} sweeps, {} requests in flight, {} registry entries (capacity {}), {} uncounted, \
         {} sink reports ({} released)",
        stats.sweeps,
        stats.requests_in_flight,
        stats.registry_entries,
        stats.registry_capacity,
        stats.uncounted.registry_entries,
        collected.reports().len(),
        stats.released_total,
    );
    server.abort();
}

/// Prints the routes and tasks of the detector's snapshot, as `GET /debug/leaks?format=text`
/// returns it (the reports it also lists are printed above); read directly without `serde`.
#[cfg(not(feature = "serde"))]
async fn print_snapshot(_addr: SocketAddr, detector: &LeakDetector) {
    let text = detector.snapshot().to_string();
    let summary = text.split("\nreports (").next().unwrap_or_default();
    println!("\nthe detector's snapshot (its reports section left out):\n{summary}");
}

/// The snapshot as the service answers it, fetched over HTTP.
#[cfg(feature = "serde")]
async fn print_snapshot(addr: SocketAddr, _detector: &LeakDetector) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}/debug/leaks?format=text");
    let text = match client.get(uri.parse().expect("valid URI")).await {
        Ok(response) => match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(error) => format!("reading the snapshot failed: {error}"),
        },
        Err(error) => format!("GET /debug/leaks failed: {error}"),
    };
    let summary = text.split("\nreports (").next().unwrap_or_default();
    println!("\nGET /debug/leaks?format=text (its reports section left out):\n{summary}");
}

/// The reports expected: one per request of a leaky route, one per memory-leaking route (once
/// enough of its requests were judged).
fn expected_reports(target: &Target, options: &Options) -> usize {
    match target.load {
        Leaky => options.requests,
        LeakyMemory => usize::from(options.memory_requests as u64 > MEMORY_WINDOW + 3),
        Clean | CleanMemory => 0,
    }
}

fn expected_leaks(options: &Options) -> usize {
    TARGETS.iter().map(|t| expected_reports(t, options)).sum()
}

/// How many requests the demo sends to a route.
fn requests_for(target: &Target, options: &Options) -> usize {
    match target.load {
        Leaky => options.requests,
        Clean => options.clean_requests,
        LeakyMemory | CleanMemory => options.memory_requests,
    }
}

/// Sends every request through a real HTTP client, `concurrency` at a time.
async fn load(addr: SocketAddr, options: &Options) -> usize {
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for target in TARGETS {
        // A client per route; uploads get a fresh connection each, because a server that does
        // not read a body (L4) closes the connection, and a pooled request sent on it would be
        // lost before reaching the handler.
        let mut builder = Client::builder(TokioExecutor::new());
        if target.body_len > 0 {
            builder.pool_max_idle_per_host(0);
        }
        let client: Client<_, Full<Bytes>> = builder.build_http();
        let count = requests_for(target, options);
        for n in 0..count {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let client = client.clone();
            let uri = format!(
                "http://{addr}{}",
                target.path.replace("{n}", &n.to_string())
            );
            let request = http::Request::builder()
                .method(target.method)
                .uri(uri)
                .header(
                    "x-request-id",
                    format!(
                        "demo-{}-{n}",
                        target.scenario.split(' ').next().unwrap_or("x")
                    ),
                )
                .body(Full::new(Bytes::from(vec![b'x'; target.body_len])))
                .unwrap();
            set.spawn(async move {
                let outcome = match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    // L4's unread upload: hyper answers, then closes the connection instead of
                    // reading the rest — the client may see its write cut off. That is the
                    // cost of an unconsumed body, and the handler did run.
                    Err(_) => false,
                };
                drop(permit);
                (target.template, outcome)
            });
        }
    }
    let mut sent = 0;
    let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
    while let Some(result) = set.join_next().await {
        let (template, ok) = result.expect("request task");
        sent += 1;
        if !ok {
            *failed.entry(template).or_default() += 1;
        }
    }
    for (template, n) in failed {
        println!("  {n} request(s) to {template} were cut off by the server");
    }
    sent
}

/// Prints the leaks grouped by route and kind, then the clean routes.
fn print_table(leaks: &[LeakReport], options: &Options) {
    let mut groups: BTreeMap<(String, String, LeakKind), Vec<&LeakReport>> = BTreeMap::new();
    for report in leaks {
        groups
            .entry((report.route.clone(), report.method.clone(), report.kind))
            .or_default()
            .push(report);
    }
    println!(
        "\n{:<26} {:<15} {:>5} {:>9}  {:<29} EXAMPLE",
        "ROUTE", "KIND", "COUNT", "CONFIRMED", "LOCATION"
    );
    for ((route, method, kind), reports) in &groups {
        let confirmed = reports
            .iter()
            .filter(|r| r.state == LeakState::Confirmed)
            .count();
        let example = reports[0];
        let location = match (example.location, example.sites.first()) {
            (Some(location), _) => location.to_string(),
            (None, Some(site)) => match (&site.file, site.line) {
                (Some(file), Some(line)) => format!("{file}:{line}"),
                _ => site.function.clone(),
            },
            (None, None) => "-".to_owned(),
        };
        let what = example.type_name.map(short_type).unwrap_or("");
        println!(
            "{:<26} {:<15} {:>5} {:>9}  {:<29} {} {}{}",
            format!("{method} {route}"),
            kind.as_str(),
            reports.len(),
            confirmed,
            location,
            example.request_id,
            example.detail,
            if what.is_empty() {
                String::new()
            } else {
                format!(" ({what})")
            },
        );
    }
    println!("\nscenario check:");
    let mut all_ok = true;
    for target in TARGETS {
        let found = leaks.iter().filter(|r| r.route == target.template).count();
        let expected = expected_reports(target, options);
        let ok = found == expected;
        all_ok &= ok;
        println!(
            "  {} {:<5} {:<20} {:<34} {found} report(s), expected {expected}",
            if ok { "ok  " } else { "MISS" },
            target.method,
            target.template,
            target.scenario,
        );
    }
    println!(
        "\n{}",
        if all_ok {
            "every leaky route was reported; no clean route was"
        } else {
            "some routes were not reported as expected (see above)"
        }
    );
}

/// The last path segment of a type name, for the table.
fn short_type(name: &'static str) -> &'static str {
    name.rsplit("::")
        .find(|s| !s.starts_with('{'))
        .unwrap_or(name)
}
