//! Gauges of a detector's state for OpenTelemetry (feature `otel`).

use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use crate::detector::{LeakDetector, Stats};

/// Reads one gauge's value from the detector's statistics.
type StatFn = fn(&Stats) -> Option<u64>;
use crate::report::LeakKind;

impl LeakDetector {
    /// Registers observable instruments on `meter`, read at each collection:
    ///
    /// | name | unit | what |
    /// |---|---|---|
    /// | `leakwatch.leaks.active` | `{leak}` | active reports, by `leak.kind` |
    /// | `leakwatch.heap.live` | `By` | the process's live heap (only with the `TrackingAllocator`) |
    /// | `leakwatch.tasks.alive` | `{task}` | alive tokio tasks at the last trend sample |
    /// | `leakwatch.requests.open` | `{request}` | requests in flight |
    /// | `leakwatch.registry.entries` | `{entry}` | scopes and objects held by the registry |
    /// | `leakwatch.registry.skipped` | `{entry}` | entries not tracked because the registry was full (counter) |
    ///
    /// The callbacks hold only a weak reference: once the detector is gone they report nothing.
    ///
    /// ```
    /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
    /// detector.register_metrics(&opentelemetry::global::meter("my-service"));
    /// ```
    pub fn register_metrics(&self, meter: &Meter) {
        let weak = Arc::downgrade(&self.shared);
        let stats = move || weak.upgrade().map(|shared| LeakDetector { shared }.stats());
        let s = stats.clone();
        meter
            .u64_observable_gauge("leakwatch.leaks.active")
            .with_unit("{leak}")
            .with_description("Active leak reports (suspected or confirmed)")
            .with_callback(move |gauge| {
                if let Some(stats) = s() {
                    for kind in LeakKind::ALL {
                        gauge.observe(
                            stats.active.get(kind),
                            &[KeyValue::new("leak.kind", kind.as_str())],
                        );
                    }
                }
            })
            .build();
        let gauges: [(&'static str, &'static str, &'static str, StatFn); 4] = [
            (
                "leakwatch.heap.live",
                "By",
                "Live heap bytes of the process, from the TrackingAllocator",
                |s| s.live_heap_bytes,
            ),
            (
                "leakwatch.tasks.alive",
                "{task}",
                "Alive tokio tasks at the last trend sample",
                |s| s.alive_tasks,
            ),
            (
                "leakwatch.requests.open",
                "{request}",
                "Requests in flight",
                |s| Some(s.open_scopes as u64),
            ),
            (
                "leakwatch.registry.entries",
                "{entry}",
                "Scopes and objects held by the weak-reference registry",
                |s| Some(s.registry_entries as u64),
            ),
        ];
        for (name, unit, description, value) in gauges {
            let s = stats.clone();
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |gauge| {
                    if let Some(v) = s().as_ref().and_then(value) {
                        gauge.observe(v, &[]);
                    }
                })
                .build();
        }
        meter
            .u64_observable_counter("leakwatch.registry.skipped")
            .with_unit("{entry}")
            .with_description("Scopes and objects not tracked because the registry was full")
            .with_callback(move |counter| {
                if let Some(stats) = stats() {
                    counter.observe(stats.skipped, &[]);
                }
            })
            .build();
    }
}
