//! Trend alerts: the process's live heap and tokio's alive tasks, sampled over a window.
//!
//! Per-request attribution finds what a request leaves behind; a trend catches what it cannot
//! see (a leak outside any request, tasks spawned with plain `tokio::spawn`). Every
//! `trend_interval` the sweeper samples the live heap (from the
//! [`TrackingAllocator`](crate::TrackingAllocator) when installed, else the resident set size
//! from `/proc/self/status`), the runtime's alive tasks and the requests in flight. When the
//! growth from the oldest to the newest sample of the window exceeds *both* the relative and
//! the absolute threshold, it raises [`HeapGrowth`](LeakKind::HeapGrowth) or
//! [`TaskGrowth`](LeakKind::TaskGrowth); once growth over the window falls back under them, the
//! alert is released.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use crate::registry::Registry;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::sweep::{Outcome, Tracker};

/// Trend settings, validated by the builder.
#[derive(Clone, Debug)]
pub(crate) struct TrendConfig {
    pub(crate) interval: std::time::Duration,
    pub(crate) window: usize,
    pub(crate) relative: f64,
    pub(crate) heap_absolute: u64,
    pub(crate) task_absolute: u64,
}

/// One sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) heap_bytes: Option<u64>,
    pub(crate) alive_tasks: Option<u64>,
    pub(crate) in_flight: u64,
}

/// The sampler's state, owned by the sweeper.
pub(crate) struct Trend {
    samples: VecDeque<(Instant, Sample)>,
    last: Option<Instant>,
    runtime: Option<tokio::runtime::Handle>,
    heap: Alert,
    tasks: Alert,
}

struct Alert {
    id: u64,
    tracker: Tracker,
    report: Option<LeakReport>,
}

impl Trend {
    pub(crate) fn new(registry: &Registry) -> Self {
        Trend {
            samples: VecDeque::new(),
            last: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            heap: Alert::new(registry.next_id()),
            tasks: Alert::new(registry.next_id()),
        }
    }

    /// Takes a sample if `interval` has passed since the last one, and judges the window.
    pub(crate) fn sample(
        &mut self,
        now: Instant,
        heap_bytes: impl FnOnce() -> Option<u64>,
        in_flight: u64,
        config: &TrendConfig,
        confirm_sweeps: u32,
        out: &mut Outcome,
    ) {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < config.interval)
        {
            return;
        }
        self.last = Some(now);
        let sample = Sample {
            heap_bytes: heap_bytes().or_else(resident_set_bytes),
            alive_tasks: self
                .runtime
                .as_ref()
                .map(|rt| rt.metrics().num_alive_tasks() as u64),
            in_flight,
        };
        self.samples.push_back((now, sample));
        while self.samples.len() > config.window {
            self.samples.pop_front();
        }
        if self.samples.len() < 2 {
            return;
        }
        let (first_at, first) = self.samples[0];
        let window = now.saturating_duration_since(first_at);
        let heap = first.heap_bytes.zip(sample.heap_bytes);
        self.heap.judge(
            LeakKind::HeapGrowth,
            heap,
            config.relative,
            config.heap_absolute,
            "live heap bytes",
            window,
            confirm_sweeps,
            out,
        );
        let tasks = first.alive_tasks.zip(sample.alive_tasks);
        self.tasks.judge(
            LeakKind::TaskGrowth,
            tasks,
            config.relative,
            config.task_absolute,
            "alive tokio tasks",
            window,
            confirm_sweeps,
            out,
        );
    }

    /// The newest sample.
    pub(crate) fn latest(&self) -> Option<Sample> {
        self.samples.back().map(|(_, s)| *s)
    }

    /// Active growth alerts.
    pub(crate) fn active_reports(&self) -> impl Iterator<Item = LeakReport> + '_ {
        [&self.heap, &self.tasks]
            .into_iter()
            .filter(|a| a.tracker.reported().is_some_and(LeakState::is_active))
            .filter_map(|a| a.report.clone())
    }
}

impl Alert {
    fn new(id: u64) -> Self {
        Alert {
            id,
            tracker: Tracker::default(),
            report: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        kind: LeakKind,
        values: Option<(u64, u64)>,
        relative: f64,
        absolute: u64,
        what: &str,
        window: std::time::Duration,
        confirm_sweeps: u32,
        out: &mut Outcome,
    ) {
        let Some((first, last)) = values else {
            return;
        };
        let growth = last.saturating_sub(first);
        let growing = growth > absolute && (growth as f64) > relative * first as f64;
        let state = if growing {
            self.tracker.alive(confirm_sweeps)
        } else {
            let state = self.tracker.gone();
            if state.is_some() {
                // A later alert starts its life cycle afresh.
                self.tracker = Tracker::default();
            }
            state
        };
        let detail = format!(
            "{what} grew from {first} to {last} (+{growth}) over {} ms",
            window.as_millis()
        );
        if growing {
            let mut report = process_report(self.id, kind, detail, growth);
            report.state = self.tracker.reported().unwrap_or(LeakState::Suspected);
            self.report = Some(report.clone());
            if state.is_some() {
                out.reports.push(report);
            }
        } else if let (Some(state), Some(mut report)) = (state, self.report.take()) {
            report.state = state;
            report.detail = detail;
            report.detected_at = SystemTime::now();
            out.reports.push(report);
        }
    }
}

/// A report about the whole process rather than one request.
fn process_report(id: u64, kind: LeakKind, detail: String, growth: u64) -> LeakReport {
    let now = SystemTime::now();
    LeakReport {
        id,
        kind,
        state: LeakState::Suspected,
        route: PROCESS_ROUTE.to_owned(),
        method: String::new(),
        request_id: String::new(),
        trace_id: None,
        span_id: None,
        scope_id: 0,
        opened_at: now,
        closed_at: None,
        detected_at: now,
        age: std::time::Duration::ZERO,
        location: None,
        type_name: None,
        bytes: (kind == LeakKind::HeapGrowth).then_some(growth),
        allocations: None,
        bytes_per_request: None,
        sites: Vec::new(),
        detail,
    }
}

/// The route named in process-wide reports.
pub const PROCESS_ROUTE: &str = "<process>";

/// The resident set size, from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_set_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> TrendConfig {
        TrendConfig {
            interval: Duration::ZERO,
            window: 4,
            relative: 0.3,
            heap_absolute: 1000,
            task_absolute: 10,
        }
    }

    fn trend() -> Trend {
        Trend {
            samples: VecDeque::new(),
            last: None,
            runtime: None,
            heap: Alert::new(1),
            tasks: Alert::new(2),
        }
    }

    #[test]
    fn growth_beyond_both_thresholds_alerts_then_releases() {
        let mut t = trend();
        let mut out = Outcome::default();
        let start = Instant::now();
        for (i, heap) in [10_000u64, 12_000, 14_000, 16_000].into_iter().enumerate() {
            t.sample(
                start + Duration::from_millis(i as u64),
                || Some(heap),
                0,
                &config(),
                0,
                &mut out,
            );
        }
        assert_eq!(out.reports.len(), 1, "{:#?}", out.reports);
        assert_eq!(out.reports[0].kind, LeakKind::HeapGrowth);
        assert_eq!(out.reports[0].state, LeakState::Confirmed);
        assert_eq!(out.reports[0].route, PROCESS_ROUTE);
        assert_eq!(t.active_reports().count(), 1);
        // Flat for a whole window: released.
        for i in 4..8 {
            t.sample(
                start + Duration::from_millis(i),
                || Some(16_000),
                0,
                &config(),
                0,
                &mut out,
            );
        }
        assert_eq!(out.reports.len(), 2);
        assert_eq!(out.reports[1].state, LeakState::Released);
        assert_eq!(t.active_reports().count(), 0);
    }

    #[test]
    fn small_or_slow_growth_does_not_alert() {
        let mut t = trend();
        let mut out = Outcome::default();
        let start = Instant::now();
        // +50 % but only +500 bytes: under the absolute threshold.
        for (i, heap) in [1_000u64, 1_200, 1_400, 1_500].into_iter().enumerate() {
            t.sample(
                start + Duration::from_millis(i as u64),
                || Some(heap),
                0,
                &config(),
                0,
                &mut out,
            );
        }
        // +2000 bytes but +2 %: under the relative threshold.
        let mut t = trend();
        for (i, heap) in [100_000u64, 100_500, 101_000, 102_000]
            .into_iter()
            .enumerate()
        {
            t.sample(
                start + Duration::from_millis(10 + i as u64),
                || Some(heap),
                0,
                &config(),
                0,
                &mut out,
            );
        }
        assert!(out.reports.is_empty(), "{:#?}", out.reports);
    }

    #[test]
    fn samples_respect_the_interval() {
        let mut t = trend();
        let mut out = Outcome::default();
        let config = TrendConfig {
            interval: Duration::from_secs(5),
            ..config()
        };
        let start = Instant::now();
        t.sample(start, || Some(1), 0, &config, 0, &mut out);
        t.sample(
            start + Duration::from_secs(1),
            || Some(2),
            0,
            &config,
            0,
            &mut out,
        );
        assert_eq!(t.samples.len(), 1);
        t.sample(
            start + Duration::from_secs(6),
            || Some(3),
            0,
            &config,
            0,
            &mut out,
        );
        assert_eq!(t.samples.len(), 2);
    }

    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_set_bytes().unwrap() > 0);
        }
    }
}
