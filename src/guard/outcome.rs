//! What a guard run found: [`GuardOutcome`], one [`RouteVerdict`] per route, and
//! [`GuardError`].

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::report::{render_list, LeakReport};
use crate::stats::MemoryAccounting;
use crate::util::table::{self, or_dash, Align};

/// The most leak reports the table lists per route.
const LEAKS_SHOWN: usize = 5;

/// One route's result in a [`GuardOutcome`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouteVerdict {
    /// The route template, as listed.
    pub route: String,
    /// Requests sent and measured (after the warm-up).
    pub requests: usize,
    /// Requests the detector saw finish under this route, warm-up included. Fewer than were
    /// sent means the template does not match what the service calls the route.
    pub finished_requests: u64,
    /// Requests that failed (the service or the response body returned an error).
    pub errors: usize,
    /// Heap bytes the route's requests kept, per measured request; `None` when the
    /// [`TrackingAllocator`](crate::TrackingAllocator) is not installed.
    pub bytes_per_request: Option<i64>,
    /// The budget of retained bytes per request.
    pub budget: u64,
    /// The route's figure in the baseline file, when comparing against one.
    pub baseline: Option<u64>,
    /// The most bytes per request the baseline allows (its figure plus the tolerance).
    pub allowed: Option<u64>,
    /// Leak reports of the route's requests.
    pub leaks: Vec<LeakReport>,
    /// Why the route failed, one sentence each; empty when it passed.
    pub problems: Vec<String>,
}

impl RouteVerdict {
    /// No leak report, within budget and baseline, every request seen and answered.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The result of [`LeakGuard::run`](super::LeakGuard::run): a verdict per route, in the order
/// they were listed. Its [`Display`](fmt::Display) form is the table printed on failure.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GuardOutcome {
    /// One verdict per route.
    pub routes: Vec<RouteVerdict>,
    /// Warm-up requests sent to each route before measuring.
    pub warmup: usize,
    /// How heap memory was measured: exactly, estimated (the allocator is in sampled mode;
    /// exact mode is the one for a guard), or not at all (the allocator is not installed).
    pub memory: MemoryAccounting,
    /// The baseline file, and whether this run rewrote it (else it was compared against).
    pub baseline: Option<(PathBuf, bool)>,
}

impl GuardOutcome {
    /// Whether every route passed.
    pub fn passed(&self) -> bool {
        self.routes.iter().all(RouteVerdict::passed)
    }

    /// Panics with the table and every failing route's reasons unless every route passed.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.passed() {
            panic!("leakwatch guard failed:\n{self}");
        }
    }
}

/// Signed bytes, with the sign always shown for a change.
fn change(now: i64, before: u64) -> String {
    let delta = now - before as i64;
    if before == 0 {
        format!("{delta:+} B")
    } else {
        let percent = delta as f64 * 100.0 / before as f64;
        format!("{delta:+} B ({percent:+.0}%)")
    }
}

impl fmt::Display for GuardOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests = self.routes.first().map_or(0, |r| r.requests);
        write!(
            f,
            "leakwatch guard: {} routes, {requests} requests each after {} warm-up; memory: {}",
            self.routes.len(),
            self.warmup,
            self.memory.as_str()
        )?;
        match &self.baseline {
            Some((path, true)) => writeln!(f, "; baseline {} rewritten", path.display())?,
            Some((path, false)) => writeln!(f, "; baseline {}", path.display())?,
            None => writeln!(f)?,
        }
        let rows: Vec<Vec<String>> = self
            .routes
            .iter()
            .map(|r| {
                vec![
                    r.route.clone(),
                    or_dash(r.bytes_per_request),
                    r.budget.to_string(),
                    or_dash(r.baseline),
                    match (r.bytes_per_request, r.baseline) {
                        (Some(now), Some(before)) => change(now, before),
                        _ => "-".to_owned(),
                    },
                    r.leaks.len().to_string(),
                    if r.passed() { "ok" } else { "FAIL" }.to_owned(),
                ]
            })
            .collect();
        use Align::{Left, Right};
        let headers = [
            ("ROUTE", Left),
            ("BYTES/REQ", Right),
            ("BUDGET", Right),
            ("BASELINE", Right),
            ("CHANGE", Right),
            ("LEAKS", Right),
            ("VERDICT", Left),
        ];
        table::write(f, &headers, &rows)?;
        for route in self.routes.iter().filter(|r| !r.passed()) {
            writeln!(f, "\n{}:", route.route)?;
            for problem in &route.problems {
                writeln!(f, "  - {problem}")?;
            }
            let shown = route.leaks.len().min(LEAKS_SHOWN);
            f.write_str(&render_list(&route.leaks[..shown]))?;
            if route.leaks.len() > shown {
                writeln!(f, "  … and {} more", route.leaks.len() - shown)?;
            }
        }
        Ok(())
    }
}

/// Why a guard could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum GuardError {
    /// The detector's configuration is invalid.
    Config(ConfigError),
    /// A setting of the guard is invalid.
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The baseline file is missing, unreadable or malformed, or cannot be written.
    Baseline {
        /// The file.
        path: PathBuf,
        /// The 1-based line at fault, for a malformed file.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A baseline was asked for, but heap memory is not measured: the
    /// [`TrackingAllocator`](crate::TrackingAllocator) is not the global allocator.
    MemoryNotTracked,
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Config(error) => write!(f, "invalid detector configuration: {error}"),
            GuardError::Invalid { field, message } => write!(f, "invalid guard `{field}`: {message}"),
            GuardError::Baseline {
                path,
                line: Some(line),
                message,
            } => write!(f, "baseline file {}, line {line}: {message}", path.display()),
            GuardError::Baseline {
                path,
                line: None,
                message,
            } => write!(f, "baseline file {}: {message}", path.display()),
            GuardError::MemoryNotTracked => f.write_str(
                "a baseline needs heap memory to be measured: install leakwatch::TrackingAllocator \
                 as the global allocator",
            ),
        }
    }
}

impl std::error::Error for GuardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuardError::Config(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ConfigError> for GuardError {
    fn from(error: ConfigError) -> Self {
        GuardError::Config(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(route: &str, bytes: i64, baseline: Option<u64>, problems: &[&str]) -> RouteVerdict {
        RouteVerdict {
            route: route.to_owned(),
            requests: 200,
            finished_requests: 250,
            errors: 0,
            bytes_per_request: Some(bytes),
            budget: 64,
            baseline,
            allowed: baseline.map(|b| b + 16),
            leaks: Vec::new(),
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn the_table_shows_each_route_and_why_one_failed() {
        let report = GuardOutcome {
            routes: vec![
                verdict("/ok", 0, Some(0), &[]),
                verdict("/leak/{id}", 4130, Some(48), &["over the budget"]),
            ],
            warmup: 50,
            memory: MemoryAccounting::Exact,
            baseline: Some((PathBuf::from("leaks.baseline"), false)),
        };
        assert!(!report.passed());
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "leakwatch guard: 2 routes, 200 requests each after 50 warm-up; memory: exact; \
             baseline leaks.baseline"
        );
        assert_eq!(
            lines[1],
            "  ROUTE       BYTES/REQ  BUDGET  BASELINE            CHANGE  LEAKS  VERDICT"
        );
        assert_eq!(
            lines[2],
            "  /ok                 0      64         0              +0 B      0  ok"
        );
        assert_eq!(
            lines[3],
            "  /leak/{id}       4130      64        48  +4082 B (+8504%)      0  FAIL"
        );
        assert_eq!(&lines[4..], ["", "/leak/{id}:", "  - over the budget"]);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let error = GuardError::Baseline {
            path: PathBuf::from("tests/leaks.baseline"),
            line: Some(3),
            message: "`x` is not a number".into(),
        };
        assert_eq!(
            error.to_string(),
            "baseline file tests/leaks.baseline, line 3: `x` is not a number"
        );
    }
}
