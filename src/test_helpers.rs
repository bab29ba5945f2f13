//! Helpers shared by the unit tests.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::report::{LeakKind, LeakReport, LeakState, SourceLocation};
use crate::request::id::RequestId;
use crate::request::liveness::Liveness;
use crate::request::route::{Route, RouteInfo};
use crate::request::scope::{Judged, Owner, Place, RequestHead, Scope};

/// The owner of a scope whose detector is gone.
struct Gone;

impl Owner for Gone {
    fn insert_object(
        &self,
        _: &Arc<Scope>,
        _: Liveness,
        _: Option<SourceLocation>,
        _: Option<&'static str>,
    ) -> Option<Judged> {
        unreachable!("a scope whose owner is gone tracks nothing")
    }

    fn retire(&self, _: Arc<Scope>) {
        unreachable!("a scope whose owner is gone is given back to nothing")
    }
}

/// What a `GET /t` request numbered `id` tells its scope.
pub(crate) fn head(id: u64) -> RequestHead {
    RequestHead {
        request_id: RequestId::Generated {
            prefix: 0,
            number: id,
        },
        method: http::Method::GET,
        route: Route::Static("/t"),
        info: RouteInfo::NONE,
        trace: None,
        upstream: None,
    }
}

/// A fresh scope of a `GET /t` request numbered `id`, of no detector.
pub(crate) fn fresh_scope(id: u64) -> Scope {
    Scope::new(id, head(id), Weak::<Gone>::new(), None, Place::NONE)
}

/// [`fresh_scope`], shared.
pub(crate) fn scope(id: u64) -> Arc<Scope> {
    Arc::new(fresh_scope(id))
}

/// A fixed, fully populated report.
pub(crate) fn sample_report() -> LeakReport {
    LeakReport {
        id: 7,
        kind: LeakKind::OrphanTask,
        state: LeakState::Confirmed,
        route: "/jobs/{id}".into(),
        method: "GET".into(),
        unit: false,
        request_id: "req-1".into(),
        trace_id: None,
        span_id: None,
        request_number: 3,
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
        bytes_estimated: false,
        sites: Vec::new(),
        await_trace: None,
        upstream: None,
        detail: "task still running".into(),
    }
}

/// Compile-time check that `T` is `Send`.
pub(crate) fn assert_send<T: Send>() {}

/// Compile-time check that `T` is `Sync`.
pub(crate) fn assert_sync<T: Sync>() {}
