//! Helpers shared by the unit tests.

use std::time::{Duration, SystemTime};

use crate::report::{LeakKind, LeakReport, LeakState, SourceLocation};

/// A fixed, fully populated report.
pub(crate) fn sample_report() -> LeakReport {
    LeakReport {
        id: 7,
        kind: LeakKind::OrphanTask,
        state: LeakState::Confirmed,
        route: "/jobs/{id}".into(),
        method: "GET".into(),
        request_id: "req-1".into(),
        trace_id: None,
        span_id: None,
        scope_id: 3,
        opened_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_000),
        closed_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
        detected_at: SystemTime::UNIX_EPOCH + Duration::from_millis(4_000),
        age: Duration::from_millis(2_500),
        location: Some(SourceLocation {
            file: "src/jobs.rs",
            line: 42,
            column: 9,
        }),
        type_name: Some("jobs::run::{{closure}}"),
        bytes: None,
        allocations: None,
        bytes_per_request: None,
        sites: Vec::new(),
        detail: "task still running".into(),
    }
}

/// Compile-time check that `T` is `Send`.
pub(crate) fn assert_send<T: Send>() {}

/// Compile-time check that `T` is `Sync`.
pub(crate) fn assert_sync<T: Sync>() {}
