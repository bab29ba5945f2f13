//! Warnings that the detector did not count everything: requests whose memory went uncounted
//! (every allocator slot taken) and entries the registry had no room for.
//!
//! Checked by the sweeper, never on a request's path: at most one `tracing` warning per minute
//! and per cause, saying how many went uncounted since the last one and which setting raises
//! the bound.

use std::time::{Duration, Instant};

use crate::stats::Uncounted;

/// At most one warning per cause in this long.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// One cause's last warning.
#[derive(Default)]
struct Cause {
    /// The total when it was last warned about.
    warned: u64,
    at: Option<Instant>,
}

impl Cause {
    /// How many more went uncounted since the last warning, when one is due now.
    fn due(&mut self, total: u64, now: Instant) -> Option<u64> {
        if total <= self.warned || self.at.is_some_and(|at| now.duration_since(at) < EVERY) {
            return None;
        }
        let more = total - self.warned;
        self.warned = total;
        self.at = Some(now);
        Some(more)
    }
}

/// The warnings' state, kept by the engine and checked at every sweep.
#[derive(Default)]
pub(crate) struct Warnings {
    untracked: Cause,
    skipped: Cause,
}

impl Warnings {
    /// Warns about what went uncounted since the last warnings, at most once per [`EVERY`] per
    /// cause; returns the warnings given (for tests), each naming its knob.
    pub(crate) fn check(&mut self, totals: Uncounted, now: Instant) -> Vec<String> {
        let mut given = Vec::new();
        if let Some(more) = self.untracked.due(totals.requests, now) {
            given.push(format!(
                "leakwatch: the memory of {more} requests was not counted per request (every one \
                 of the allocator's 65 536 request slots was taken; {} in all since start-up). A \
                 request that ends still holding memory keeps its slot until it is judged, one \
                 `grace` period later: a shorter `grace`, or `TrackingAllocator::sampled`, \
                 raises how many requests per second are counted",
                totals.requests
            ));
        }
        if let Some(more) = self.skipped.due(totals.registry_entries, now) {
            given.push(format!(
                "leakwatch: {more} requests, tasks or bodies were not tracked because the \
                 registry was full ({} in all since start-up); `registry_capacity` raises the \
                 bound",
                totals.registry_entries
            ));
        }
        #[cfg(feature = "tracing")]
        for warning in &given {
            tracing::warn!(target: "leakwatch", "{warning}");
        }
        given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, registry_entries: u64) -> Uncounted {
        Uncounted {
            requests,
            registry_entries,
            ..Uncounted::default()
        }
    }

    #[test]
    fn nothing_uncounted_warns_nothing() {
        let mut warnings = Warnings::default();
        assert!(warnings.check(totals(0, 0), Instant::now()).is_empty());
    }

    #[test]
    fn one_warning_per_minute_and_cause_naming_the_knob() {
        let mut warnings = Warnings::default();
        let start = Instant::now();
        let given = warnings.check(totals(5, 0), start);
        assert_eq!(given.len(), 1);
        assert!(given[0].contains("memory of 5 requests"), "{}", given[0]);
        assert!(given[0].contains("`grace`"), "{}", given[0]);
        // More within the minute: silent; the registry's own cause still warns.
        let given = warnings.check(totals(9, 2), start + Duration::from_secs(30));
        assert_eq!(given.len(), 1);
        assert!(given[0].contains("`registry_capacity`"), "{}", given[0]);
        // A minute later: the requests missed since the last warning.
        let given = warnings.check(totals(9, 2), start + EVERY);
        assert_eq!(given.len(), 1);
        assert!(given[0].contains("memory of 4 requests"), "{}", given[0]);
        assert!(given[0].contains("9 in all"), "{}", given[0]);
        // Nothing more missed: silent, however long after.
        assert!(warnings.check(totals(9, 2), start + 10 * EVERY).is_empty());
    }
}
