//! OpenTelemetry metrics: the leak counters by kind and route, the released counter, the
//! retained-bytes histogram and the detector's gauges arrive at an (in-memory) exporter with
//! their values.
#![cfg(feature = "otel")]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::server::RequestBody;
use leakwatch::sink::OtelSink;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

/// The `u64` points of metric `name` in the last export: (attributes, value).
fn points(exported: &[ResourceMetrics], name: &str) -> Vec<(Vec<KeyValue>, u64)> {
    let mut found = Vec::new();
    for resource in exported {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                found.clear(); // keep the last collection only
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            found.push((p.attributes().cloned().collect(), p.value()));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
                        for p in gauge.data_points() {
                            found.push((p.attributes().cloned().collect(), p.value()));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(histogram)) => {
                        for p in histogram.data_points() {
                            found.push((p.attributes().cloned().collect(), p.count()));
                        }
                    }
                    other => panic!("{name}: unexpected data {other:?}"),
                }
            }
        }
    }
    found
}

fn has(attributes: &[KeyValue], key: &str, value: &str) -> bool {
    attributes
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

#[tokio::test]
async fn leak_metrics_and_detector_gauges_are_exported() {
    let exporter = InMemoryMetricExporter::default();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let tracers = SdkTracerProvider::builder().build();
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .sink(OtelSink::with_tracer_provider(&tracers).with_meter_provider(&meters))
        .route_fn(|_, _| Some("/jobs/{id}"))
        .build()
        .unwrap();
    detector.register_metrics(&meters.meter("leakwatch"));

    // The handles are kept outside, to end the tasks later.
    let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let kept = tasks.clone();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        move |_: Request<RequestBody<Full<Bytes>>>| {
            let kept = kept.clone();
            async move {
                let task = leakwatch::spawn(std::future::pending::<()>());
                kept.lock().unwrap().push(task);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        },
    );
    for _ in 0..2 {
        let request = Request::get("/jobs/1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        support::read_body(service.clone().oneshot(request).await.unwrap()).await;
    }
    assert_eq!(detector.sweep_now().len(), 2);

    meters.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let leaks = points(&exported, "leakwatch.leaks");
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0].1, 2);
    assert!(has(&leaks[0].0, "leak.kind", "OrphanTask"));
    assert!(has(&leaks[0].0, "http.route", "/jobs/{id}"));
    let active = points(&exported, "leakwatch.leaks.active");
    let orphans = active
        .iter()
        .find(|(attributes, _)| has(attributes, "leak.kind", "OrphanTask"))
        .unwrap();
    assert_eq!(orphans.1, 2);
    assert_eq!(points(&exported, "leakwatch.registry.entries")[0].1, 2);
    assert_eq!(points(&exported, "leakwatch.registry.uncounted")[0].1, 0);
    assert_eq!(points(&exported, "leakwatch.requests.uncounted")[0].1, 0);
    assert_eq!(points(&exported, "leakwatch.requests.in_flight")[0].1, 0);

    // The tasks end: released, and no longer active.
    for task in tasks.lock().unwrap().drain(..) {
        task.abort();
    }
    support::wait_until("both tasks released", || {
        detector.sweep_now();
        detector.leaks().is_empty()
    })
    .await;
    meters.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let released = points(&exported, "leakwatch.leaks.released");
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].1, 2);
    let active = points(&exported, "leakwatch.leaks.active");
    assert!(active.iter().all(|(_, v)| *v == 0), "{active:?}");
}
