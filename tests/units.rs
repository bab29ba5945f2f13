//! `LeakDetector::scope`: any future as a unit of work, judged as a request is, reported under
//! its name.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leakwatch::{LeakKind, LeakReport, TrackingAllocator};
use support::{detector, of_kind};

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator::system();

fn at_line(report: &LeakReport) -> (String, &str, u32) {
    let location = report.location.expect("a spawn or watch line");
    (report.route.clone(), location.file, location.line)
}

#[tokio::test]
async fn what_a_unit_leaves_is_reported_under_its_name() {
    let (detector, _) = detector();
    let kept: Arc<Mutex<Vec<Arc<String>>>> = Arc::default();
    let (tracked, plain, watched) = (line!() + 4, line!() + 5, line!() + 7);
    let keep = kept.clone();
    detector
        .scope("consumer/orders", async move {
            leakwatch::spawn(std::future::pending::<()>());
            tokio::spawn(std::future::pending::<()>());
            let payload = Arc::new(String::from("order"));
            leakwatch::watch(&payload);
            keep.lock().unwrap().push(payload);
        })
        .await;
    let reports = detector.sweep_now();
    let orphans = of_kind(&reports, LeakKind::OrphanTask);
    let mut lines: Vec<_> = orphans.iter().map(at_line).collect();
    lines.sort();
    let unit = String::from("consumer/orders");
    assert_eq!(
        lines,
        vec![
            (unit.clone(), file!(), tracked),
            (unit.clone(), file!(), plain)
        ],
        "{reports:#?}"
    );
    let objects = of_kind(&reports, LeakKind::WatchedObject);
    assert_eq!(
        objects.iter().map(at_line).collect::<Vec<_>>(),
        vec![(unit, file!(), watched)]
    );
    for report in &reports {
        assert!(report.unit, "{report}");
        assert_eq!(report.method, "");
        assert!(
            report.to_string().contains(" unit consumer/orders "),
            "the unit stands where a method would: {report}"
        );
    }
    let stats = detector.stats();
    let route = stats
        .routes
        .iter()
        .find(|r| r.route == "consumer/orders")
        .unwrap();
    assert!(route.unit);
    assert_eq!(route.finished_requests, 1);
    assert!(detector
        .snapshot()
        .to_string()
        .contains("unit consumer/orders"));
}

#[tokio::test]
async fn a_clean_unit_leaves_nothing_and_returns_its_output() {
    let (detector, sink) = detector();
    for n in 0..50u64 {
        let doubled = detector
            .scope("job/double", async move {
                let task = tokio::spawn(async move { n * 2 });
                let (sender, receiver) = tokio::sync::oneshot::channel();
                leakwatch::spawn(async move { sender.send(()).unwrap() });
                receiver.await.unwrap();
                task.await.unwrap()
            })
            .await;
        assert_eq!(doubled, n * 2);
    }
    tokio::task::yield_now().await;
    detector.assert_no_leaks().await;
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
}

#[tokio::test]
async fn memory_each_unit_keeps_is_found_by_the_window_rule() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .memory_window(16)
        .dependency_growth_span(Duration::ZERO)
        .build()
        .unwrap();
    static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        detector
            .scope("consumer/payloads", async {
                let payload = vec![7u8; 2048];
                KEPT.lock().unwrap().push(payload);
            })
            .await;
        detector.sweep_now();
    }
    let leaks = detector.leaks();
    let memory = of_kind(&leaks, LeakKind::RetainedMemory);
    assert_eq!(memory.len(), 1, "{leaks:#?}");
    assert_eq!(memory[0].route, "consumer/payloads");
    assert!(memory[0].unit);
    let detail = &memory[0].detail;
    assert!(
        detail.contains("runs judged more than 16 runs ago") && detail.contains("the unit's runs"),
        "a unit's runs, not a route's requests: {detail}"
    );
    let per_unit = memory[0].bytes_per_request.unwrap();
    assert!(
        (1843..=2253).contains(&per_unit),
        "2 KiB within 10 %: {per_unit}"
    );
    KEPT.lock().unwrap().clear();
}

#[tokio::test]
async fn a_unit_inside_a_request_is_the_innermost_scope() {
    use tower::ServiceExt;
    // The request's trace comes from its `traceparent`, through the global propagator.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (detector, _) = detector();
    let inner = detector.clone();
    let line = line!() + 9;
    let service = tower::ServiceBuilder::new()
        .layer(detector.layer())
        .service_fn(
            move |_: http::Request<leakwatch::server::RequestBody<String>>| {
                let detector = inner.clone();
                async move {
                    detector
                        .scope("batch/item", async {
                            drop(tokio::spawn(std::future::pending::<()>()));
                        })
                        .await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                }
            },
        );
    let request = http::Request::builder()
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(String::new())
        .unwrap();
    drop(service.oneshot(request).await.unwrap());
    let reports = detector.sweep_now();
    assert_eq!(
        reports.len(),
        1,
        "the request itself leaves nothing: {reports:#?}"
    );
    assert_eq!(at_line(&reports[0]), ("batch/item".into(), file!(), line));
    assert!(reports[0].unit);
    assert_eq!(
        reports[0].trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c"),
        "in the request's trace"
    );
}

/// A consumer as services write them: a shared pooled HTTP client (its connection tasks are
/// the pool's) and a bounded `moka` cache, over 1 000 units with a sweep every 10. Nothing is
/// reported. (The window is the default 256: moka applies its writes 64 at a time, so it holds
/// up to its capacity plus 64 entries, and a window must be above that — with a window of 64,
/// a burst of 90 units is taken for a leak until moka's eviction catches up.)
async fn a_consumer_with_a_pooled_client_and_a_bounded_cache_is_clean() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .memory_window(256)
        .dependency_growth_span(Duration::ZERO)
        .build()
        .unwrap();
    let upstream = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 2048]));
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    let (addr, server) = support::serve(upstream).await;
    let client = reqwest::Client::new();
    let cache: moka::sync::Cache<u64, Arc<Vec<u8>>> = moka::sync::Cache::new(16);
    for id in 0..1000u64 {
        let (client, cache) = (client.clone(), cache.clone());
        detector
            .scope("consumer/enrich", async move {
                let url = format!("http://{addr}/items/{id}");
                let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
                cache.insert(id, Arc::new(body.to_vec()));
            })
            .await;
        if id % 10 == 9 {
            detector.sweep_now();
        }
    }
    detector.assert_no_leaks().await;
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    let stats = detector.stats();
    let unit = stats
        .routes
        .iter()
        .find(|r| r.route == "consumer/enrich")
        .unwrap();
    assert_eq!((unit.unit, unit.finished_requests), (true, 1000));
    server.abort();
}

#[tokio::test]
async fn a_consumer_with_a_pooled_client_and_a_bounded_cache_is_clean_current_thread() {
    a_consumer_with_a_pooled_client_and_a_bounded_cache_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_a_pooled_client_and_a_bounded_cache_is_clean_multi_thread() {
    a_consumer_with_a_pooled_client_and_a_bounded_cache_is_clean().await;
}
