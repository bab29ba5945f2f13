//! Leak spans land inside the leaking request's trace: a child of the span named by an incoming
//! `traceparent` (through the global propagator) or of the current `tracing` span (through
//! tracing-opentelemetry), with the specified name, attributes and status; a root span with
//! the request id when no trace is known; and a `Released` span when the leak ends.
#![cfg(feature = "otel")]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::sink::OtelSink;
use leakwatch::{server::RequestBody, LeakDetector};
use opentelemetry::trace::{SpanId, Status, TraceContextExt, TraceId, TracerProvider};
use opentelemetry::Value;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

static SPAWN_LINE: AtomicU32 = AtomicU32::new(0);

fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

fn detector(provider: &SdkTracerProvider) -> LeakDetector {
    support::builder(&leakwatch::sink::CollectingSink::new())
        .sink(OtelSink::with_tracer_provider(provider))
        .route_fn(|_, _| Some("/jobs/{id}"))
        .build()
        .unwrap()
}

/// Sends the request `otel-req-1` to a handler that spawns a task that never ends, after a
/// first request (`otel-req-0`, no trace) that leaves one from the same line — the first orphan
/// of a spawn line stays suspected, with no span, until a second request leaves one too.
/// Returns the task of `otel-req-1`.
async fn leak_once(detector: &LeakDetector, traceparent: Option<&str>) -> JoinHandle<()> {
    let first = leak(detector, "otel-req-0", None).await;
    drop(first); // detached: it never ends
    leak(detector, "otel-req-1", traceparent).await
}

/// The report of `otel-req-1` among `reports`.
fn of_request(reports: &[leakwatch::LeakReport]) -> &leakwatch::LeakReport {
    reports
        .iter()
        .find(|r| r.request_id == "otel-req-1")
        .unwrap_or_else(|| panic!("no report of otel-req-1 in {reports:#?}"))
}

/// The spans of `otel-req-1`'s reports.
fn spans_of_request(spans: &[SpanData]) -> Vec<&SpanData> {
    spans
        .iter()
        .filter(|s| attribute(s, "leak.request_id") == Some(&Value::from("otel-req-1")))
        .collect()
}

/// Sends one request, with `id` as its request id, to a handler that spawns a task that never
/// ends; returns the task.
async fn leak(detector: &LeakDetector, id: &str, traceparent: Option<&str>) -> JoinHandle<()> {
    let task: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::default();
    let kept = task.clone();
    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        move |_: Request<RequestBody<Full<Bytes>>>| {
            let kept = kept.clone();
            async move {
                SPAWN_LINE.store(line!() + 1, Ordering::Relaxed);
                let task = leakwatch::spawn(std::future::pending::<()>());
                *kept.lock().unwrap() = Some(task);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        },
    );
    let mut request = Request::get("/jobs/7").header("x-request-id", id);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    support::read_body(service.oneshot(request).await.unwrap()).await;
    let task = task.lock().unwrap().take().expect("the handler spawned");
    task
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn finished(provider: &SdkTracerProvider, exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

#[tokio::test]
async fn leak_span_is_a_child_of_the_incoming_traceparent() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, exporter) = provider();
    let detector = detector(&provider);
    let task = leak_once(&detector, Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await;

    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let report = of_request(&reports);
    assert_eq!(report.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(report.span_id.as_deref(), Some(PARENT_ID));

    let all_spans = finished(&provider, &exporter);
    let spans = spans_of_request(&all_spans);
    assert_eq!(spans.len(), 1, "{all_spans:#?}");
    let span = spans[0];
    assert_eq!(span.name, "leak OrphanTask");
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap()
    );
    assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT_ID).unwrap());
    assert!(
        matches!(span.status, Status::Error { .. }),
        "{:?}",
        span.status
    );
    assert!(span.start_time <= span.end_time);
    assert_eq!(
        attribute(span, "http.route"),
        Some(&Value::from("/jobs/{id}"))
    );
    assert_eq!(
        attribute(span, "http.request.method"),
        Some(&Value::from("GET"))
    );
    assert_eq!(
        attribute(span, "leak.kind"),
        Some(&Value::from("OrphanTask"))
    );
    assert_eq!(
        attribute(span, "leak.state"),
        Some(&Value::from("Confirmed"))
    );
    assert_eq!(
        attribute(span, "leak.request_id"),
        Some(&Value::from("otel-req-1"))
    );
    assert_eq!(
        attribute(span, "leak.id"),
        Some(&Value::I64(report.id as i64))
    );
    assert_eq!(
        attribute(span, "code.filepath"),
        Some(&Value::from(file!()))
    );
    assert_eq!(
        attribute(span, "code.lineno"),
        Some(&Value::I64(i64::from(SPAWN_LINE.load(Ordering::Relaxed))))
    );
    assert!(attribute(span, "leak.age_ms").is_some());
    assert!(attribute(span, "leak.type").is_some());

    // The task ends: a released span follows, in the same trace.
    task.abort();
    support::wait_until("the task was aborted", || {
        detector
            .sweep_now()
            .iter()
            .any(|r| r.state == leakwatch::LeakState::Released)
    })
    .await;
    let all_spans = finished(&provider, &exporter);
    let spans = spans_of_request(&all_spans);
    assert_eq!(spans.len(), 2, "{all_spans:#?}");
    let released = spans[1];
    assert_eq!(
        attribute(released, "leak.state"),
        Some(&Value::from("Released"))
    );
    assert_eq!(
        released.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap()
    );
    assert!(matches!(released.status, Status::Unset));
}

#[tokio::test]
async fn leak_span_is_a_child_of_the_current_tracing_span() {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let (provider, exporter) = provider();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
    let _default = tracing::subscriber::set_default(subscriber);
    let detector = detector(&provider);

    // What tower-http's TraceLayer does: the request runs inside its own span.
    let request_span = tracing::info_span!("request");
    let (trace_id, span_id) = {
        let cx = request_span.context();
        let span = cx.span();
        (
            span.span_context().trace_id(),
            span.span_context().span_id(),
        )
    };
    let task = leak_once(&detector, None).instrument(request_span).await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 2, "{reports:#?}");

    let spans = finished(&provider, &exporter);
    let leak = spans_of_request(&spans)
        .into_iter()
        .find(|s| s.name == "leak OrphanTask")
        .unwrap_or_else(|| panic!("no leak span in {spans:#?}"));
    assert_eq!(leak.span_context.trace_id(), trace_id);
    assert_eq!(leak.parent_span_id, span_id);
    task.abort();
}

#[tokio::test]
async fn without_a_trace_the_leak_span_is_a_root_with_the_request_id() {
    let (provider, exporter) = provider();
    let detector = detector(&provider);
    let task = leak_once(&detector, None).await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    assert!(of_request(&reports).trace_id.is_none());

    let all_spans = finished(&provider, &exporter);
    let spans = spans_of_request(&all_spans);
    assert_eq!(spans.len(), 1, "{all_spans:#?}");
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_eq!(
        attribute(spans[0], "leak.request_id"),
        Some(&Value::from("otel-req-1"))
    );
    task.abort();
}
