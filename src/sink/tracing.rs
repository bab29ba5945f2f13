use tracing::Level;

use super::ReportSink;
use crate::report::{LeakReport, LeakState};

/// Emits one `tracing` event per report, with target `leakwatch`: `WARN` for confirmed leaks,
/// `INFO` for suspected and released ones.
///
/// Fields use OpenTelemetry's semantic-convention names where they exist (`http.route`,
/// `http.request.method`, `code.filepath`, `code.lineno`) and `leak.*` for the rest
/// (`leak.kind`, `leak.state`, `leak.id`, `leak.request_id`, `leak.age_ms`, `leak.type`), plus
/// `trace_id` when the request's trace is known. A unit of work's report
/// ([`LeakReport::unit`]) names it in `leakwatch.unit` instead of `http.route`, with no method.
/// The
/// message is the report's one-line [`Display`](std::fmt::Display) form.
///
/// This is the default sink when the `tracing` feature is on.
///
/// ```
/// let detector = leakwatch::LeakDetector::builder()
///     .sink(leakwatch::sink::TracingSink::new())
///     .build()
///     .unwrap();
/// # drop(detector);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink {
    _private: (),
}

impl TracingSink {
    /// A sink emitting to the current `tracing` subscriber.
    pub fn new() -> Self {
        TracingSink { _private: () }
    }
}

macro_rules! emit {
    ($level:expr, $r:expr) => {
        tracing::event!(
            target: "leakwatch",
            $level,
            leak.kind = $r.kind.as_str(),
            leak.state = $r.state.as_str(),
            leak.id = $r.id,
            leak.request_id = %$r.request_id,
            leak.age_ms = $r.age.as_millis() as u64,
            leak.type = $r.type_name,
            leak.bytes_estimated = $r.bytes_estimated,
            trace_id = $r.trace_id.as_deref(),
            http.route = (!$r.unit).then_some($r.route.as_str()),
            http.request.method = (!$r.method.is_empty()).then_some($r.method.as_str()),
            leakwatch.unit = $r.unit.then_some($r.route.as_str()),
            code.filepath = $r.location.map(|l| l.file),
            code.lineno = $r.location.map(|l| l.line),
            leak.await_trace = $r.await_trace.as_deref(),
            leak.upstream = $r.upstream.as_ref().map(tracing::field::display),
            "{}",
            $r
        )
    };
}

impl ReportSink for TracingSink {
    fn report(&self, report: &LeakReport) {
        match report.state {
            LeakState::Confirmed => emit!(Level::WARN, report),
            _ => emit!(Level::INFO, report),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;
    use crate::test_helpers::sample_report;

    /// Records the fields of every event, by name.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let value = format!("{value:?}").trim_matches('"').to_owned();
            self.0.lock().unwrap().push((field.name().to_owned(), value));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Fields {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            event.record(&mut self.clone());
        }
    }

    fn fields_of(report: &LeakReport) -> Vec<(String, String)> {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        tracing::subscriber::with_default(subscriber, || TracingSink::new().report(report));
        let recorded = fields.0.lock().unwrap().clone();
        recorded
    }

    fn value<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let found = fields.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_request_is_named_by_its_route_and_a_unit_by_its_unit() {
        let report = sample_report();
        let fields = fields_of(&report);
        assert_eq!(value(&fields, "http.route"), Some("/jobs/{id}"));
        assert_eq!(value(&fields, "http.request.method"), Some("GET"));
        assert_eq!(value(&fields, "leakwatch.unit"), None);

        let unit = LeakReport {
            route: "consumer/orders".into(),
            method: String::new(),
            unit: true,
            ..sample_report()
        };
        let fields = fields_of(&unit);
        assert_eq!(value(&fields, "leakwatch.unit"), Some("consumer/orders"));
        assert_eq!(value(&fields, "http.route"), None);
        assert_eq!(value(&fields, "http.request.method"), None);
        let message = value(&fields, "message").unwrap();
        assert!(message.contains("unit consumer/orders"), "{message}");
    }
}
