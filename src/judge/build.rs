//! Turning what a judge found into a [`LeakReport`]: the one place a report about a request is
//! filled in.
//!
//! Each judge builds a report once, when its finding changes state, and keeps it (the objects
//! judge's [`Active`](super::objects::Active), the alerts of the memory, task and trend
//! judges); reading the detector's reports later returns those, never a report rebuilt at the
//! time of the read.

use std::time::Instant;

use crate::alloc;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::scope::Scope;
use crate::util::clock;

/// A report about `scope`'s request, made at `now`: everything the request's record knows
/// filled in; no location, type, allocation sites or per-request figure (the judge adds what
/// it knows of those).
pub(crate) fn request_report(
    scope: &Scope,
    id: u64,
    kind: LeakKind,
    state: LeakState,
    now: Instant,
    detail: String,
) -> LeakReport {
    let closed_at = scope.closed_at();
    let usage = scope.usage();
    // A stuck request's age runs from when it opened; anything else's from the close.
    let since = closed_at.unwrap_or(scope.opened_at);
    LeakReport {
        id,
        kind,
        state,
        route: scope.route.as_str().to_owned(),
        method: match scope.unit {
            true => String::new(),
            false => scope.method.as_str().to_owned(),
        },
        unit: scope.unit,
        request_id: scope.request_id.to_string(),
        trace_id: scope.trace.map(|t| t.trace_id_hex()),
        span_id: scope.trace.map(|t| t.span_id_hex()),
        request_number: scope.id,
        opened_at: scope.opened_wall(),
        closed_at: closed_at.map(clock::wall),
        detected_at: clock::wall(now),
        age: now.saturating_duration_since(since),
        location: None,
        type_name: None,
        bytes: usage.map(|u| u.retained_bytes()),
        allocations: usage.map(|u| u.retained_blocks()),
        bytes_per_request: None,
        bytes_estimated: usage.is_some() && alloc::sampling_mean().is_some(),
        sites: Vec::new(),
        await_trace: None,
        upstream: scope.upstream(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::scope;

    #[test]
    fn reports_carry_the_request_and_no_raw_path() {
        let s = scope(6);
        let now = Instant::now();
        let kind = LeakKind::StuckRequest;
        let open = request_report(&s, 9, kind, LeakState::Suspected, now, "d".into());
        assert_eq!((open.id, open.request_number), (9, 6));
        assert_eq!((open.route.as_str(), open.method.as_str()), ("/t", "GET"));
        assert_eq!(open.request_id, "lw-00000000-6");
        assert_eq!(open.closed_at, None);
        assert_eq!(open.bytes, None, "memory is not tracked");
        s.close();
        let kind = LeakKind::OrphanTask;
        let closed = request_report(&s, 9, kind, LeakState::Confirmed, now, String::new());
        assert!(closed.closed_at.is_some());
        assert_eq!(closed.detected_at, clock::wall(now));
    }
}
