//! The parts of a [`LeakReport`]: where a task was spawned or an object watched
//! ([`SourceLocation`]), where retained memory was allocated ([`AllocationSite`]), and which
//! upstream an outgoing call went to ([`Upstream`]).
//!
//! A report is produced by the sweeper each time a finding changes state (`Suspected`,
//! `Confirmed`, `Released`). Reports carry the route *template* (never the raw path), the
//! method, the request id and, for tasks and watched objects, the source location of the
//! `spawn` / `watch` call. They never contain header values, query strings or bodies.

use std::fmt;

pub(crate) mod leak;
pub(crate) mod lifecycle;
pub(crate) mod sink;

// Public at the crate root (`leakwatch::LeakReport`, …) and at `leakwatch::sink::ReportSink`:
// one path each.
pub(crate) use self::leak::{LeakKind, LeakReport, LeakState};
pub(crate) use self::sink::ReportSink;

/// A source location captured with `#[track_caller]` at a `spawn`, `scoped` or `watch` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SourceLocation {
    /// The file, as the compiler names it (relative to the crate root of the caller).
    pub file: &'static str,
    /// The 1-based line.
    pub line: u32,
    /// The 1-based column.
    pub column: u32,
}

impl SourceLocation {
    pub(crate) fn from_std(location: &'static std::panic::Location<'static>) -> Self {
        SourceLocation {
            file: location.file(),
            line: location.line(),
            column: location.column(),
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Where retained memory was allocated: a sampled call stack's first frame in the caller's code,
/// with the (estimated) bytes and blocks its allocations still hold.
///
/// `file` and `line` need debug information in the binary (`debug = "line-tables-only"` in a
/// release profile is enough); without it only the function is known.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AllocationSite {
    /// The function, demangled, without its hash.
    pub function: String,
    /// The source file, when debug information is present.
    pub file: Option<String>,
    /// The line, when debug information is present.
    pub line: Option<u32>,
    /// Live bytes allocated there (an estimate when sampling, exact in exact mode).
    pub bytes: u64,
    /// Live blocks allocated there (an estimate when sampling: each sampled block counts for
    /// the blocks it stands for, exact in exact mode).
    pub blocks: u64,
}

impl fmt::Display for AllocationSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}")?,
            _ => f.write_str(&self.function)?,
        }
        write!(f, " ({} bytes)", self.bytes)
    }
}

/// The upstream of an outgoing call, in [`LeakReport::upstream`]: its method and host — never
/// its path or query.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Upstream {
    /// The call's HTTP method.
    pub method: String,
    /// The upstream's host, with the port when the URI names one (`"api.example.com:8443"`);
    /// `"<unknown>"` for a URI without a host.
    pub host: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.host)
    }
}

/// Renders reports one per line (a report's await trace on the lines below it), numbered, for
/// panic messages and terminal output.
pub(crate) fn render_list(reports: &[LeakReport]) -> String {
    let mut out = String::new();
    for (i, report) in reports.iter().enumerate() {
        out.push_str(&format!("  {:>3}. {report}\n", i + 1));
    }
    out
}

/// `serde` helpers for times: wall-clock instants as Unix milliseconds, durations as
/// milliseconds.
#[cfg(feature = "serde")]
pub(crate) mod ser {
    use serde::Serializer;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn millis_since_epoch(t: &SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub(crate) fn unix_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis_since_epoch(t))
    }

    pub(crate) fn opt_unix_millis<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&millis_since_epoch(t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(crate) fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::sample_report;

    #[test]
    fn display_is_one_readable_line() {
        let line = sample_report().to_string();
        assert_eq!(
            line,
            "OrphanTask [Confirmed] GET /jobs/{id} request_id=req-1 age=2500ms \
             spawned at src/jobs.rs:42 type=jobs::run::{{closure}}: task still running"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn an_await_trace_follows_on_indented_lines() {
        let mut report = sample_report();
        report.await_trace = Some("╼ jobs::run\n  └╼ Receiver::recv".into());
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("task still running"));
        assert_eq!(lines[1], "    waiting at:");
        assert_eq!(lines[2], "      ╼ jobs::run");
        assert_eq!(lines[3], "        └╼ Receiver::recv");
    }

    #[test]
    fn render_list_numbers_every_report() {
        let text = render_list(&[sample_report(), sample_report()]);
        assert!(text.contains("  1. OrphanTask"));
        assert!(text.contains("  2. OrphanTask"));
    }

    #[test]
    fn kinds_index_their_position() {
        for (i, kind) in LeakKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        assert!(LeakState::Suspected.is_active());
        assert!(!LeakState::Released.is_active());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serializes_to_json_with_millis() {
        let json = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(json["kind"], "OrphanTask");
        assert_eq!(json["state"], "Confirmed");
        assert_eq!(json["route"], "/jobs/{id}");
        assert_eq!(json["opened_at"], 1_000);
        assert_eq!(json["closed_at"], 1_500);
        assert_eq!(json["age"], 2_500);
        assert_eq!(json["location"]["line"], 42);
    }
}
