//! The trace a request belongs to, so that its leak spans land inside that trace.
//!
//! With the `otel` feature, a scope records, when it opens, the span context of the current
//! `tracing` span (through tracing-opentelemetry, e.g. under tower-http's `TraceLayer`) or, when
//! there is none, the one a W3C `traceparent` header carries, extracted through the global
//! OpenTelemetry propagator (set one with `opentelemetry::global::set_text_map_propagator`).

use std::fmt;

/// A request's trace and span ids.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
}

impl TraceParent {
    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub(crate) fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.trace_id_hex(), self.span_id_hex())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace context of a request arriving now: the current `tracing` span's, else the
/// propagated one from its headers (looked at only when `traceparent` says there is one).
/// `None` without the `otel` feature.
#[cfg(feature = "otel")]
pub(crate) fn capture(headers: &http::HeaderMap, traceparent: bool) -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let valid = |cx: &opentelemetry::Context| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
        })
    };
    // No subscriber was ever set, so there is no current span to ask (and asking costs more
    // than the rest of opening a scope).
    if tracing::dispatcher::has_been_set() {
        let current = tracing::Span::current();
        if !current.is_disabled() {
            if let Some(parent) = valid(&current.context()) {
                return Some(parent);
            }
        }
    }
    if !traceparent {
        return None;
    }
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    valid(&cx)
}

/// Without the `otel` feature no trace context is recorded.
#[cfg(not(feature = "otel"))]
pub(crate) fn capture(_headers: &http::HeaderMap, _traceparent: bool) -> Option<TraceParent> {
    None
}

#[cfg(feature = "otel")]
struct HeaderExtractor<'a>(&'a http::HeaderMap);

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_render_as_lowercase_hex() {
        let parent = TraceParent {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
        };
        assert_eq!(parent.trace_id_hex(), "ab".repeat(16));
        assert_eq!(parent.span_id_hex(), "01".repeat(8));
    }

    #[test]
    fn no_context_without_a_traceparent() {
        assert!(capture(&http::HeaderMap::new(), false).is_none());
    }
}
