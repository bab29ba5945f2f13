//! The crate root's public names, listed: growing the root is a decision, made here.
//!
//! The root holds what a user writes in the first hour (the detector, its builder, the
//! allocator, the report and the task functions); every other public item has one path, in its
//! module (`server::LeakLayer`, `sink::ReportSink`, `stats::Stats`, `report::Upstream`, …).

#![allow(unused_imports)]

use std::collections::BTreeSet;

// Every name below must resolve: a name removed from the root fails to compile here.
use leakwatch::{
    client, detach, guard, outside, report, route, scoped, server, sink, snapshot, spawn,
    spawn_detached, stats, watch, AllocationSites, ConfigError, Detached, LeakDetector,
    LeakDetectorBuilder, LeakKind, LeakReport, LeakState, Scoped, TrackingAllocator,
};

/// The root's items (not modules): ≈ 15, as tower-http keeps its root small.
const ITEMS: &[&str] = &[
    "AllocationSites",
    "ConfigError",
    "Detached",
    "LeakDetector",
    "LeakDetectorBuilder",
    "LeakKind",
    "LeakReport",
    "LeakState",
    "Scoped",
    "TrackingAllocator",
    "assert_no_leaks_in",
    "detach",
    "outside",
    "scoped",
    "spawn",
    "spawn_detached",
    "watch",
    // `#[leakwatch::test]` (feature `macros`).
    "test",
    // With `--cfg tokio_unstable` only.
    "instrument_runtime",
];

/// The root's public modules.
const MODULES: &[&str] = &[
    "client", "guard", "report", "route", "server", "sink", "snapshot", "stats", "unit",
    // With feature `otlp`, and `--cfg tokio_unstable`.
    "otlp", "hooks",
];

/// The names `src/lib.rs` makes public: `pub mod x`, and the last segment (or each name of a
/// `{…}` group) of every `pub use`.
fn declared() -> (BTreeSet<String>, BTreeSet<String>) {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let code: String = lib
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut items = BTreeSet::new();
    let mut modules = BTreeSet::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let statement = statement.rsplit('\n').next().unwrap_or("").trim();
        if let Some(name) = statement.strip_prefix("pub mod ") {
            modules.insert(name.trim().to_owned());
        } else if let Some(path) = statement.strip_prefix("pub use ") {
            let names = match (path.find('{'), path.rfind('}')) {
                (Some(open), Some(close)) => path[open + 1..close].to_owned(),
                _ => path.rsplit("::").next().unwrap().to_owned(),
            };
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                items.insert(name.to_owned());
            }
        }
    }
    // `pub use crate::request::route;` and `pub use crate::task::hooks;` re-export modules.
    for module in ["route", "hooks"] {
        if items.remove(module) {
            modules.insert(module.to_owned());
        }
    }
    (items, modules)
}

#[test]
fn the_root_holds_the_listed_names_and_no_others() {
    let (items, modules) = declared();
    let expected_items: BTreeSet<String> = ITEMS.iter().map(|s| s.to_string()).collect();
    let expected_modules: BTreeSet<String> = MODULES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        items, expected_items,
        "the crate root's items changed: update ITEMS here if that is the decision"
    );
    assert_eq!(
        modules, expected_modules,
        "the crate root's modules changed: update MODULES here if that is the decision"
    );
    // 17 for services, and two for tests (`assert_no_leaks_in`, `#[leakwatch::test]`).
    assert!(items.len() <= 19, "{} items at the root", items.len());
}

#[test]
fn types_in_public_fields_and_signatures_are_nameable() {
    // `LeakReport::upstream`, `LeakReport::location` and `LeakReport::sites` name these.
    fn _fields(report: &LeakReport) {
        let _: &Option<report::Upstream> = &report.upstream;
        let _: &Option<report::SourceLocation> = &report.location;
        let _: &Vec<report::AllocationSite> = &report.sites;
    }
    // `LeakDetector::stats`, `layer`, `client_layer` return these.
    fn _returns(detector: &LeakDetector) {
        let stats: stats::Stats = detector.stats();
        let _: &Vec<stats::RouteStats> = &stats.routes;
        let _: stats::KindCounts = stats.active;
        let _: stats::MemoryAccounting = stats.memory;
        let _: server::LeakLayer = detector.layer();
        let _: client::ClientLeakLayer = detector.client_layer();
        let _: snapshot::Snapshot = detector.snapshot();
    }
    fn _sink(sink: impl sink::ReportSink) -> LeakDetectorBuilder {
        LeakDetector::builder().sink(sink)
    }
}
