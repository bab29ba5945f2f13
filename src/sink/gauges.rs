//! Gauges of a detector's state for OpenTelemetry (feature `otel`), registered by
//! [`LeakDetector::register_metrics`](crate::LeakDetector::register_metrics).

use std::sync::{Arc, Weak};

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use crate::engine::Engine;
use crate::report::LeakKind;

/// One single-valued instrument: name, unit, description and how to read it.
struct Reading {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    read: fn(&Engine) -> Option<u64>,
}

/// The gauges with one value each.
const GAUGES: [Reading; 4] = [
    Reading {
        name: "leakwatch.heap.live",
        unit: "By",
        description: "Live heap bytes of the process, from the TrackingAllocator",
        read: Engine::live_heap_bytes,
    },
    Reading {
        name: "leakwatch.tasks.alive",
        unit: "{task}",
        description: "Alive tokio tasks at the last trend sample",
        read: Engine::runtime_tasks,
    },
    Reading {
        name: "leakwatch.requests.in_flight",
        unit: "{request}",
        description: "Requests in flight",
        read: |engine| Some(engine.requests_in_flight() as u64),
    },
    Reading {
        name: "leakwatch.registry.entries",
        unit: "{entry}",
        description: "Scopes and objects held by the weak-reference registry",
        read: |engine| Some(engine.registry_entries() as u64),
    },
];

/// The counters of what went uncounted.
const COUNTERS: [Reading; 2] = [
    Reading {
        name: "leakwatch.registry.uncounted",
        unit: "{entry}",
        description: "Scopes and objects not tracked because the registry was full",
        read: |engine| Some(engine.uncounted().registry_entries),
    },
    Reading {
        name: "leakwatch.requests.uncounted",
        unit: "{request}",
        description: "Requests whose memory was not counted per request because every \
                      allocator request slot was taken (process-wide)",
        read: |engine| Some(engine.uncounted().requests),
    },
];

/// Registers the detector's gauges on `meter`; see
/// [`LeakDetector::register_metrics`](crate::LeakDetector::register_metrics).
pub(crate) fn register(engine: &Arc<Engine>, meter: &Meter) {
    let engine = Arc::downgrade(engine);
    let weak = engine.clone();
    meter
        .u64_observable_gauge("leakwatch.leaks.active")
        .with_unit("{leak}")
        .with_description("Active leak reports (suspected or confirmed)")
        .with_callback(move |gauge| {
            if let Some(engine) = weak.upgrade() {
                let counts = engine.active_counts();
                for &kind in LeakKind::ALL {
                    let kind_label = KeyValue::new("leak.kind", kind.as_str());
                    gauge.observe(counts.get(kind), &[kind_label]);
                }
            }
        })
        .build();
    for reading in GAUGES {
        let weak = engine.clone();
        meter
            .u64_observable_gauge(reading.name)
            .with_unit(reading.unit)
            .with_description(reading.description)
            .with_callback(move |gauge| {
                if let Some(value) = read(&weak, reading.read) {
                    gauge.observe(value, &[]);
                }
            })
            .build();
    }
    for reading in COUNTERS {
        let weak = engine.clone();
        meter
            .u64_observable_counter(reading.name)
            .with_unit(reading.unit)
            .with_description(reading.description)
            .with_callback(move |counter| {
                if let Some(value) = read(&weak, reading.read) {
                    counter.observe(value, &[]);
                }
            })
            .build();
    }
}

/// Reads one figure from the engine, while it lives.
fn read(engine: &Weak<Engine>, read: fn(&Engine) -> Option<u64>) -> Option<u64> {
    engine.upgrade().and_then(|engine| read(&engine))
}
