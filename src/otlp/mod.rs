//! OTLP export for services without an OpenTelemetry pipeline of their own (feature `otlp`).
//!
//! [`init`] builds a tracer provider and a meter provider that export over OTLP — to Jaeger,
//! Tempo, an OpenTelemetry collector or any APM — from the standard environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's base URL | `http://localhost:4317` (gRPC), `http://localhost:4318` (HTTP) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` or `http/protobuf` | `grpc` |
//! | `OTEL_SERVICE_NAME` | `service.name` | `unknown_service` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes, `key=value,key=value` | none |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | milliseconds one export may take | 10 000 |
//! | `OTEL_BSP_MAX_QUEUE_SIZE` | leak spans waiting for export, at most | 2 048 |
//!
//! It sets them as the global providers (so [`OtelSink::new`](crate::sink::OtelSink::new) uses
//! them), sets the W3C trace-context propagator (so a request's `traceparent` is honoured), and
//! returns an [`OtlpProviders`] that flushes and shuts them down when dropped. Spans and
//! metrics are exported in batches from background threads, never on a request's path. A
//! malformed setting is an [`OtlpError`] from `init`, not a panic later. Each process gets a
//! `service.instance.id`.
//!
//! Nothing is lost unseen: a span that cannot wait for export because the queue is full (the
//! collector is slower than the leaks), or whose export fails, is counted in
//! [`OtlpProviders::dropped_spans`] and in the counter `leakwatch.export.dropped` (attribute
//! `reason`: `queue_full` or `export_failed`).
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), leakwatch::otlp::OtlpError> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_SERVICE_NAME=checkout
//! let otlp = leakwatch::otlp::init()?;
//! let detector = leakwatch::LeakDetector::builder()
//!     .sink(leakwatch::sink::OtelSink::new())
//!     .build()
//!     .unwrap();
//! detector.register_metrics(&opentelemetry::global::meter("leakwatch"));
//! // … serve …
//! drop(otlp); // flushes what is left
//! # Ok(())
//! # }
//! ```

mod bounded;

use std::fmt;
use std::sync::Arc;

use opentelemetry::metrics::MeterProvider;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use bounded::{Accounted, Accounting, Admission};

/// The SDK's default for `OTEL_BSP_MAX_QUEUE_SIZE`.
const DEFAULT_QUEUE_SIZE: usize = 2048;

/// The wire protocol of the exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention). Needs a tokio runtime when built.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// Settings for [`OtlpBuilder::install`]; [`init`] fills them from the environment.
#[derive(Clone, Debug, Default)]
#[must_use = "nothing is exported until `install()` is called"]
pub struct OtlpBuilder {
    endpoint: Option<String>,
    protocol: Option<OtlpProtocol>,
    service_name: Option<String>,
    attributes: Vec<(String, String)>,
    timeout: Option<std::time::Duration>,
    queue_size: Option<usize>,
}

/// Builds providers from the environment variables and installs them (see the module docs).
///
/// # Errors
///
/// An [`OtlpError`] naming the variable that is malformed, or saying why an exporter could not
/// be built.
pub fn init() -> Result<OtlpProviders, OtlpError> {
    OtlpBuilder::from_env(|name| std::env::var(name).ok())?.install()
}

impl OtlpBuilder {
    /// Empty settings: every one takes its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from environment variables, read through `var` (so tests need not touch the
    /// process environment).
    ///
    /// # Errors
    ///
    /// An [`OtlpError`] naming the malformed variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, OtlpError> {
        let mut builder = OtlpBuilder::new();
        if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.is_empty()) {
            builder.endpoint = Some(endpoint);
        }
        if let Some(protocol) = var("OTEL_EXPORTER_OTLP_PROTOCOL").filter(|p| !p.is_empty()) {
            builder.protocol = Some(match protocol.as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                other => {
                    return Err(OtlpError::setting(
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        format!("{other:?} is not supported (use \"grpc\" or \"http/protobuf\")"),
                    ))
                }
            });
        }
        builder.service_name = var("OTEL_SERVICE_NAME").filter(|s| !s.is_empty());
        if let Some(timeout) = var("OTEL_EXPORTER_OTLP_TIMEOUT").filter(|t| !t.is_empty()) {
            let millis: u64 = timeout.parse().map_err(|_| {
                OtlpError::setting(
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                    format!("{timeout:?} is not a number of milliseconds"),
                )
            })?;
            builder.timeout = Some(std::time::Duration::from_millis(millis));
        }
        if let Some(size) = var("OTEL_BSP_MAX_QUEUE_SIZE").filter(|s| !s.is_empty()) {
            builder.queue_size = Some(size.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                OtlpError::setting(
                    "OTEL_BSP_MAX_QUEUE_SIZE",
                    format!("{size:?} is not a positive number of spans"),
                )
            })?);
        }
        if let Some(attributes) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in attributes.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(OtlpError::setting(
                        "OTEL_RESOURCE_ATTRIBUTES",
                        format!("{pair:?} is not key=value"),
                    ));
                };
                if key.trim().is_empty() {
                    return Err(OtlpError::setting(
                        "OTEL_RESOURCE_ATTRIBUTES",
                        format!("{pair:?} has an empty key"),
                    ));
                }
                builder
                    .attributes
                    .push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Ok(builder)
    }

    /// The collector's base URL (`http://host:port`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The wire protocol. Default: gRPC.
    pub fn protocol(mut self, protocol: OtlpProtocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// How long one export may take before it is abandoned (the batch is dropped). Default: the
    /// exporter's (10 s).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// At most this many leak spans wait for export; more are dropped and counted. Default:
    /// 2 048.
    pub fn max_queue_size(mut self, spans: usize) -> Self {
        self.queue_size = Some(spans);
        self
    }

    /// One more resource attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// The protocol and the validated base endpoint (no trailing `/`).
    fn target(&self) -> Result<(OtlpProtocol, String), OtlpError> {
        let protocol = self.protocol.unwrap_or(OtlpProtocol::Grpc);
        let endpoint = match (&self.endpoint, protocol) {
            (Some(endpoint), _) => endpoint.trim_end_matches('/').to_owned(),
            (None, OtlpProtocol::Grpc) => "http://localhost:4317".to_owned(),
            (None, OtlpProtocol::HttpProtobuf) => "http://localhost:4318".to_owned(),
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| {
            OtlpError::setting("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{endpoint:?}: {e}"))
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(OtlpError::setting(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{endpoint:?} is not an http:// or https:// URL with a host"),
            ));
        }
        Ok((protocol, endpoint))
    }

    fn resource(&self) -> Resource {
        let mut attributes: Vec<KeyValue> = self
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        if !self
            .attributes
            .iter()
            .any(|(k, _)| k == "service.instance.id")
        {
            attributes.push(KeyValue::new("service.instance.id", instance_id()));
        }
        Resource::builder_empty()
            .with_service_name(
                self.service_name
                    .clone()
                    .unwrap_or_else(|| "unknown_service".to_owned()),
            )
            .with_attributes(attributes)
            .build()
    }

    /// Builds the exporters and providers, sets them as the global providers, and returns the
    /// guard that shuts them down.
    ///
    /// # Errors
    ///
    /// A malformed setting, a gRPC exporter asked for outside a tokio runtime, or an exporter
    /// that could not be built.
    pub fn install(self) -> Result<OtlpProviders, OtlpError> {
        let (protocol, endpoint) = self.target()?;
        let queue_size = self.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
        if queue_size == 0 {
            return Err(OtlpError::setting(
                "OTEL_BSP_MAX_QUEUE_SIZE",
                "a queue of 0 spans would drop every leak span",
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let (spans, metrics) = exporters(protocol, &endpoint, timeout)?;
        let resource = self.resource();
        let accounting = Arc::new(Accounting::default());
        let spans = Accounted {
            inner: spans,
            accounting: accounting.clone(),
        };
        let batch = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(queue_size)
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(Admission {
                inner: batch,
                limit: queue_size as u64,
                accounting: accounting.clone(),
            })
            .with_resource(resource.clone())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource)
            .build();
        register_dropped_counter(&meter_provider, accounting.clone());
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        // OTEL_PROPAGATORS' default: W3C trace context, so incoming `traceparent` headers work.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        Ok(OtlpProviders {
            tracer_provider,
            meter_provider,
            accounting,
        })
    }
}

/// The exporter's default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The span and metric exporters for `protocol`, sending to the base `endpoint`.
fn exporters(
    protocol: OtlpProtocol,
    endpoint: &str,
    timeout: std::time::Duration,
) -> Result<(SpanExporter, MetricExporter), OtlpError> {
    // The same endpoint and timeout for every exporter; over HTTP, the signal's path is
    // appended here (the exporters use an endpoint given in code exactly as given).
    fn to<B: WithExportConfig>(builder: B, endpoint: String, timeout: std::time::Duration) -> B {
        builder.with_endpoint(endpoint).with_timeout(timeout)
    }
    let (spans, metrics) = match protocol {
        OtlpProtocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(OtlpError::build(
                    "the gRPC exporter must be built inside a tokio runtime",
                ));
            }
            let spans = to(SpanExporter::builder().with_tonic(), endpoint.into(), timeout);
            let metrics = to(MetricExporter::builder().with_tonic(), endpoint.into(), timeout);
            (spans.build(), metrics.build())
        }
        OtlpProtocol::HttpProtobuf => {
            let spans = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            let metrics = MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            let spans = to(spans, format!("{endpoint}/v1/traces"), timeout);
            let metrics = to(metrics, format!("{endpoint}/v1/metrics"), timeout);
            (spans.build(), metrics.build())
        }
    };
    let spans = spans.map_err(|e| OtlpError::build(format!("span exporter: {e}")))?;
    let metrics = metrics.map_err(|e| OtlpError::build(format!("metric exporter: {e}")))?;
    Ok((spans, metrics))
}

/// The counter `leakwatch.export.dropped`, read from `accounting` at each collection.
fn register_dropped_counter(meter_provider: &SdkMeterProvider, accounting: Arc<Accounting>) {
    meter_provider
        .meter(crate::sink::INSTRUMENTATION_NAME)
        .u64_observable_counter("leakwatch.export.dropped")
        .with_unit("{span}")
        .with_description("Leak spans not delivered: the export queue was full, or the export failed")
        .with_callback(move |counter| {
            let queue_full = accounting.queue_full();
            counter.observe(queue_full, &[KeyValue::new("reason", "queue_full")]);
            let export_failed = accounting.export_failed();
            counter.observe(export_failed, &[KeyValue::new("reason", "export_failed")]);
        })
        .build();
}

fn instance_id() -> String {
    format!(
        "{:08x}-{}",
        crate::request::id::random_prefix(),
        std::process::id()
    )
}

/// Keeps the OTLP providers; flushes and shuts them down when dropped.
#[derive(Debug)]
pub struct OtlpProviders {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    accounting: Arc<Accounting>,
}

impl OtlpProviders {
    /// The tracer provider (also the global one).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider (also the global one).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// An [`OtelSink`](crate::sink::OtelSink) that exports through these providers (the same
    /// as `OtelSink::new()` while they are the global ones).
    pub fn sink(&self) -> crate::sink::OtelSink {
        crate::sink::OtelSink::with_tracer_provider(&self.tracer_provider)
            .with_meter_provider(&self.meter_provider)
    }

    /// Spans not delivered since `install`: those refused because the export queue was full
    /// plus those whose export failed (collector down, refusing, or too slow). Also exported as
    /// the counter `leakwatch.export.dropped`, split by `reason`.
    pub fn dropped_spans(&self) -> u64 {
        self.accounting.queue_full() + self.accounting.export_failed()
    }

    /// The spans refused because [`max_queue_size`](OtlpBuilder::max_queue_size) spans were
    /// already waiting for export (part of [`dropped_spans`](Self::dropped_spans)).
    pub fn queue_full_spans(&self) -> u64 {
        self.accounting.queue_full()
    }

    /// Exports what is buffered now.
    pub fn flush(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
    }
}

impl Drop for OtlpProviders {
    fn drop(&mut self) {
        self.flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

/// A malformed OTLP setting, or an exporter that could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpError {
    setting: Option<&'static str>,
    message: String,
}

impl OtlpError {
    fn setting(setting: &'static str, message: impl Into<String>) -> Self {
        OtlpError {
            setting: Some(setting),
            message: message.into(),
        }
    }

    fn build(message: impl Into<String>) -> Self {
        OtlpError {
            setting: None,
            message: message.into(),
        }
    }

    /// The environment variable (or setting) at fault, if it is one.
    pub fn setting_name(&self) -> Option<&'static str> {
        self.setting
    }
}

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.setting {
            Some(setting) => write!(f, "invalid OTLP setting `{setting}`: {}", self.message),
            None => write!(f, "OTLP export could not be set up: {}", self.message),
        }
    }
}

impl std::error::Error for OtlpError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn settings_come_from_the_environment() {
        let b = OtlpBuilder::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test, team=payments",
            ),
        ]))
        .unwrap();
        assert_eq!(
            b.target().unwrap(),
            (
                OtlpProtocol::HttpProtobuf,
                "http://127.0.0.1:4318".to_owned()
            )
        );
        assert_eq!(b.service_name.as_deref(), Some("checkout"));
        assert_eq!(b.attributes.len(), 2);
        let resource = b.resource();
        assert!(resource
            .get(&opentelemetry::Key::new("service.instance.id"))
            .is_some());
        assert_eq!(
            resource
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string()),
            Some("checkout".to_owned())
        );
    }

    #[test]
    fn defaults_follow_the_protocol() {
        let grpc = OtlpBuilder::new();
        assert_eq!(grpc.target().unwrap().1, "http://localhost:4317");
        let http = OtlpBuilder::new().protocol(OtlpProtocol::HttpProtobuf);
        assert_eq!(http.target().unwrap().1, "http://localhost:4318");
    }

    #[test]
    fn malformed_settings_are_errors_naming_the_variable() {
        let err = OtlpBuilder::from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .unwrap_err();
        assert_eq!(err.setting_name(), Some("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let err =
            OtlpBuilder::from_env(env(&[("OTEL_RESOURCE_ATTRIBUTES", "novalue")])).unwrap_err();
        assert_eq!(err.setting_name(), Some("OTEL_RESOURCE_ATTRIBUTES"));
        for size in ["0", "-1", "lots"] {
            let err = OtlpBuilder::from_env(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", size)])).unwrap_err();
            assert_eq!(
                err.setting_name(),
                Some("OTEL_BSP_MAX_QUEUE_SIZE"),
                "{size}"
            );
        }
        let err = OtlpBuilder::new()
            .protocol(OtlpProtocol::HttpProtobuf)
            .max_queue_size(0)
            .install()
            .unwrap_err();
        assert_eq!(err.setting_name(), Some("OTEL_BSP_MAX_QUEUE_SIZE"));
        for endpoint in ["not a url", "ftp://host:21", "localhost:4317", "http://"] {
            let err = OtlpBuilder::new().endpoint(endpoint).install().unwrap_err();
            assert_eq!(
                err.setting_name(),
                Some("OTEL_EXPORTER_OTLP_ENDPOINT"),
                "{endpoint}"
            );
            assert!(
                err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
                "{err}"
            );
        }
    }

    #[test]
    fn grpc_outside_a_runtime_is_an_error_not_a_panic() {
        let err = OtlpBuilder::new()
            .endpoint("http://127.0.0.1:4317")
            .install()
            .unwrap_err();
        assert!(err.setting_name().is_none());
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }

    #[test]
    fn http_export_installs_without_a_collector() {
        // Nothing listens there: building must still succeed, and dropping must not hang.
        let guard = OtlpBuilder::new()
            .protocol(OtlpProtocol::HttpProtobuf)
            .endpoint("http://127.0.0.1:9")
            .service_name("leakwatch-test")
            .install()
            .unwrap();
        drop(guard);
    }
}
