use std::borrow::Cow;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};

use super::ReportSink;
use crate::report::{LeakReport, LeakState};

/// The instrumentation scope name of leakwatch's spans.
pub const INSTRUMENTATION_NAME: &str = "leakwatch";

/// Reports leaks as OpenTelemetry spans inside the trace of the request that leaked.
///
/// One span per state change that matters: `Confirmed` (status error) and `Released` (status
/// unset). A span is a child of the request's span when the request's trace is known (from its
/// `tracing` span through tracing-opentelemetry, or its `traceparent` header through the global
/// propagator), so it shows inside that request's trace in Jaeger, Tempo or any APM; otherwise
/// it is a root span carrying `leak.request_id`. It starts when the request's scope closed and
/// ends when the leak was detected.
///
/// Span name: `leak <kind>` (`leak OrphanTask`). Attributes use semantic-convention names where
/// they exist — `http.route`, `http.request.method`, `code.filepath`, `code.lineno`,
/// `code.function` — and `leak.*` for the rest: `leak.kind`, `leak.state`, `leak.id`,
/// `leak.request_id`, `leak.age_ms`, `leak.retained_bytes`, `leak.retained_blocks`,
/// `leak.bytes_estimated` (`true` when the byte figures are estimates from sampling),
/// `leak.type`, `leak.await_trace` (where an orphan task is stuck, when known), and for an
/// outgoing call's report `leak.upstream.method` and `leak.upstream.host`. A unit of work's
/// report ([`LeakReport::unit`]) carries `leakwatch.unit` (its name) instead of `http.route`,
/// and no method; a unit run inside a request is in that request's trace.
///
/// ```
/// let detector = leakwatch::LeakDetector::builder()
///     // Uses the global tracer provider; `with_tracer_provider` takes an explicit one.
///     .sink(leakwatch::sink::OtelSink::new())
///     .build()
///     .unwrap();
/// # drop(detector);
/// ```
///
/// Metrics, from the same sink: `leakwatch.leaks` (counter of confirmed leaks, by `leak.kind`
/// and `http.route` or `leakwatch.unit`), `leakwatch.leaks.released` (counter), and
/// `leakwatch.retained_bytes_per_request` (histogram, bytes, of confirmed `RetainedMemory`
/// reports). Gauges of the detector's state come from
/// [`LeakDetector::register_metrics`](crate::LeakDetector::register_metrics).
#[derive(Debug)]
pub struct OtelSink {
    tracer: BoxedTracer,
    instruments: Instruments,
}

#[derive(Debug)]
struct Instruments {
    leaks: Counter<u64>,
    released: Counter<u64>,
    retained: Histogram<u64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Instruments {
            leaks: meter
                .u64_counter("leakwatch.leaks")
                .with_unit("{leak}")
                .with_description("Leaks confirmed: objects or memory that outlived their request")
                .build(),
            released: meter
                .u64_counter("leakwatch.leaks.released")
                .with_unit("{leak}")
                .with_description("Reported leaks that were freed after all")
                .build(),
            retained: meter
                .u64_histogram("leakwatch.retained_bytes_per_request")
                .with_unit("By")
                .with_description("Heap bytes each old request of a leaking route still holds")
                .build(),
        }
    }

    fn record(&self, report: &LeakReport) {
        let labels = [
            KeyValue::new("leak.kind", report.kind.as_str()),
            KeyValue::new(report.route_label(), report.route.clone()),
        ];
        match report.state {
            LeakState::Confirmed => {
                self.leaks.add(1, &labels);
                if let Some(per_request) = report.bytes_per_request {
                    self.retained.record(per_request, &labels);
                }
            }
            LeakState::Released => self.released.add(1, &labels),
            LeakState::Suspected => {}
        }
    }
}

impl Default for OtelSink {
    fn default() -> Self {
        Self::new()
    }
}

impl OtelSink {
    /// A sink using the global tracer and meter providers.
    pub fn new() -> Self {
        OtelSink {
            tracer: opentelemetry::global::tracer(INSTRUMENTATION_NAME),
            instruments: Instruments::new(&opentelemetry::global::meter(INSTRUMENTATION_NAME)),
        }
    }

    /// A sink using `provider` for spans (an application's own pipeline, or a test's in-memory
    /// one) and the global meter provider for metrics.
    pub fn with_tracer_provider<P>(provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        OtelSink {
            tracer: BoxedTracer::new(Box::new(provider.tracer(INSTRUMENTATION_NAME))),
            instruments: Instruments::new(&opentelemetry::global::meter(INSTRUMENTATION_NAME)),
        }
    }

    /// Uses `provider` for metrics instead of the global meter provider.
    pub fn with_meter_provider(mut self, provider: &impl MeterProvider) -> Self {
        self.instruments = Instruments::new(&provider.meter(INSTRUMENTATION_NAME));
        self
    }
}

/// The request's span as a remote parent, when its trace is known.
fn parent(report: &LeakReport) -> Context {
    let ids = report
        .trace_id
        .as_deref()
        .zip(report.span_id.as_deref())
        .and_then(|(t, s)| Some((TraceId::from_hex(t).ok()?, SpanId::from_hex(s).ok()?)));
    match ids {
        Some((trace_id, span_id)) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    }
}

/// The span attributes of a report.
pub(crate) fn attributes(report: &LeakReport) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("leak.kind", report.kind.as_str()),
        KeyValue::new("leak.state", report.state.as_str()),
        KeyValue::new("leak.id", report.id as i64),
        KeyValue::new("leak.request_id", report.request_id.clone()),
        KeyValue::new("leak.age_ms", report.age.as_millis() as i64),
        KeyValue::new(report.route_label(), report.route.clone()),
    ];
    if !report.method.is_empty() {
        attributes.push(KeyValue::new("http.request.method", report.method.clone()));
    }
    if let Some(location) = report.location {
        attributes.push(KeyValue::new("code.filepath", location.file));
        attributes.push(KeyValue::new("code.lineno", i64::from(location.line)));
    } else if let Some(site) = report.sites.first() {
        if let (Some(file), Some(line)) = (&site.file, site.line) {
            attributes.push(KeyValue::new("code.filepath", file.clone()));
            attributes.push(KeyValue::new("code.lineno", i64::from(line)));
        }
        attributes.push(KeyValue::new("code.function", site.function.clone()));
    }
    if let Some(type_name) = report.type_name {
        attributes.push(KeyValue::new("leak.type", type_name));
    }
    if let Some(bytes) = report.bytes {
        attributes.push(KeyValue::new("leak.retained_bytes", bytes as i64));
    }
    if let Some(blocks) = report.allocations {
        attributes.push(KeyValue::new("leak.retained_blocks", blocks as i64));
    }
    if report.bytes_estimated {
        attributes.push(KeyValue::new("leak.bytes_estimated", true));
    }
    if let Some(trace) = &report.await_trace {
        // Bounded where it is made (`LeakReport::MAX_AWAIT_TRACE`).
        attributes.push(KeyValue::new("leak.await_trace", trace.clone()));
    }
    if let Some(upstream) = &report.upstream {
        attributes.push(KeyValue::new("leak.upstream.method", upstream.method.clone()));
        attributes.push(KeyValue::new("leak.upstream.host", upstream.host.clone()));
    }
    attributes
}

impl ReportSink for OtelSink {
    fn report(&self, report: &LeakReport) {
        if report.state == LeakState::Suspected {
            return;
        }
        self.instruments.record(report);
        let start = report.closed_at.unwrap_or(report.opened_at);
        let mut span = self
            .tracer
            .span_builder(Cow::Owned(format!("leak {}", report.kind)))
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes(report))
            .start_with_context(&self.tracer, &parent(report));
        if report.state == LeakState::Confirmed {
            span.set_status(Status::error(report.detail.clone()));
        }
        span.end_with_timestamp(report.detected_at.max(start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::sample_report;

    #[test]
    fn an_upstream_is_named_by_method_and_host() {
        let mut report = sample_report();
        report.upstream = Some(crate::report::Upstream {
            method: "POST".into(),
            host: "api.internal:8443".into(),
        });
        let attributes = attributes(&report);
        let value = |key: &str| {
            let found = attributes.iter().find(|kv| kv.key.as_str() == key);
            found.map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(value("leak.upstream.method").as_deref(), Some("POST"));
        assert_eq!(
            value("leak.upstream.host").as_deref(),
            Some("api.internal:8443")
        );
        assert_eq!(value("http.route").as_deref(), Some("/jobs/{id}"));
    }

    #[test]
    fn an_await_trace_is_a_span_attribute() {
        let value = |report: &LeakReport| {
            attributes(report)
                .into_iter()
                .find(|kv| kv.key.as_str() == "leak.await_trace")
                .map(|kv| kv.value.to_string())
        };
        let mut report = sample_report();
        assert_eq!(value(&report), None);
        report.await_trace = Some("╼ jobs::run\n  └╼ Receiver::recv".into());
        assert_eq!(value(&report).as_deref(), report.await_trace.as_deref());
    }

    #[test]
    fn a_unit_is_labelled_leakwatch_unit_with_no_method() {
        let mut report = sample_report();
        report.route = "consumer/orders".into();
        report.method = String::new();
        report.unit = true;
        let keys: Vec<(String, String)> = attributes(&report)
            .into_iter()
            .map(|kv| (kv.key.as_str().to_owned(), kv.value.to_string()))
            .collect();
        let value = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(value("leakwatch.unit"), Some("consumer/orders"));
        assert_eq!(value("http.route"), None);
        assert_eq!(value("http.request.method"), None);
    }
}
