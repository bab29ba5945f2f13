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
use std::time::{Duration, Instant};

use crate::config::TrendConfig;
use crate::report::lifecycle::StandingAlert;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::route;
use crate::util::clock;
use crate::util::Ids;

/// One sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) heap_bytes: Option<u64>,
    pub(crate) runtime_tasks: Option<u64>,
    pub(crate) in_flight: u64,
}

/// What the window holds, for a snapshot.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrendWindow {
    pub(crate) samples: usize,
    /// Every sample of the window, oldest first.
    pub(crate) series: Vec<Sample>,
    pub(crate) first: Option<(Instant, Sample)>,
    pub(crate) latest: Option<(Instant, Sample)>,
}

/// The sampler's state, owned by the sweeper.
pub(crate) struct Trend {
    config: TrendConfig,
    confirm_sweeps: u32,
    samples: VecDeque<(Instant, Sample)>,
    last: Option<Instant>,
    runtime: Option<tokio::runtime::Handle>,
    heap: StandingAlert,
    tasks: StandingAlert,
}

/// The growth of one measure over the window.
struct Growth {
    kind: LeakKind,
    /// What grew, for the report ("live heap bytes").
    what: &'static str,
    first: u64,
    last: u64,
    /// The absolute threshold for this measure.
    absolute: u64,
    window: Duration,
}

impl Trend {
    /// A sampler of the tokio runtime it is made in, if any; its alerts' ids come from
    /// `registry`.
    pub(crate) fn new(config: TrendConfig, confirm_sweeps: u32, ids: &Ids) -> Self {
        Trend {
            config,
            confirm_sweeps,
            samples: VecDeque::new(),
            last: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            heap: StandingAlert::new(ids.next()),
            tasks: StandingAlert::new(ids.next()),
        }
    }

    /// Takes a sample if the interval has passed since the last one, judges the window, and
    /// pushes the alerts that changed onto `reports`.
    pub(crate) fn sample(
        &mut self,
        now: Instant,
        heap_bytes: impl FnOnce() -> Option<u64>,
        in_flight: u64,
        reports: &mut Vec<LeakReport>,
    ) {
        let config = &self.config;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < config.interval)
        {
            return;
        }
        self.last = Some(now);
        let sample = Sample {
            heap_bytes: heap_bytes().or_else(resident_set_bytes),
            runtime_tasks: self
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
        let measures = [
            (
                &mut self.heap,
                LeakKind::HeapGrowth,
                "live heap bytes",
                first.heap_bytes.zip(sample.heap_bytes),
                config.heap_growth_bytes,
            ),
            (
                &mut self.tasks,
                LeakKind::TaskGrowth,
                "alive tokio tasks",
                first.runtime_tasks.zip(sample.runtime_tasks),
                config.task_growth,
            ),
        ];
        for (alert, kind, what, values, absolute) in measures {
            let Some((first, last)) = values else {
                continue;
            };
            let growth = Growth {
                kind,
                what,
                first,
                last,
                absolute,
                window,
            };
            reports.extend(judge(alert, growth, config, self.confirm_sweeps, now));
        }
    }

    /// The samples of the window: how many, and the oldest and newest.
    pub(crate) fn window(&self) -> TrendWindow {
        TrendWindow {
            samples: self.samples.len(),
            series: self.samples.iter().map(|(_, s)| *s).collect(),
            first: self.samples.front().copied(),
            latest: self.samples.back().copied(),
        }
    }

    /// The newest sample.
    pub(crate) fn latest(&self) -> Option<Sample> {
        self.samples.back().map(|(_, s)| *s)
    }

    /// Active growth alerts.
    pub(crate) fn active_reports(&self) -> impl Iterator<Item = &LeakReport> + '_ {
        [&self.heap, &self.tasks]
            .into_iter()
            .filter_map(StandingAlert::active)
    }
}

/// Raises or releases `alert` for `growth`; returns the report to announce, if any.
fn judge(
    alert: &mut StandingAlert,
    growth: Growth,
    config: &TrendConfig,
    confirm_sweeps: u32,
    now: Instant,
) -> Option<LeakReport> {
    let Growth {
        kind,
        what,
        first,
        last,
        absolute,
        window,
    } = growth;
    let grew = last.saturating_sub(first);
    let detail = format!(
        "{what} grew from {first} to {last} (+{grew}) over {} ms",
        window.as_millis()
    );
    if grew > absolute && (grew as f64) > config.growth_ratio * first as f64 {
        let report = process_report(kind, detail, grew, now);
        alert.raise(report, confirm_sweeps)
    } else {
        alert.release(clock::wall(now), detail)
    }
}

/// A report about the whole process rather than one request (its id and state are the
/// alert's).
fn process_report(kind: LeakKind, detail: String, growth: u64, now: Instant) -> LeakReport {
    let now = clock::wall(now);
    LeakReport {
        id: 0,
        kind,
        state: LeakState::Suspected,
        route: route::PROCESS.to_owned(),
        method: String::new(),
        unit: false,
        request_id: String::new(),
        trace_id: None,
        span_id: None,
        request_number: 0,
        opened_at: now,
        closed_at: None,
        detected_at: now,
        age: Duration::ZERO,
        location: None,
        type_name: None,
        bytes: (kind == LeakKind::HeapGrowth).then_some(growth),
        allocations: None,
        bytes_per_request: None,
        bytes_estimated: kind == LeakKind::HeapGrowth && crate::alloc::sampling_mean().is_some(),
        sites: Vec::new(),
        await_trace: None,
        upstream: None,
        detail,
    }
}

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

    fn trend(interval: Duration) -> Trend {
        let config = TrendConfig {
            interval,
            window: 4,
            growth_ratio: 0.3,
            heap_growth_bytes: 1000,
            task_growth: 10,
        };
        Trend::new(config, 0, &Ids::default())
    }

    /// Feeds heap samples 1 ms apart from `start`; returns what was reported.
    fn feed(t: &mut Trend, start: Instant, heap: &[u64]) -> Vec<LeakReport> {
        let mut reports = Vec::new();
        for (i, &bytes) in heap.iter().enumerate() {
            let at = start + Duration::from_millis(i as u64);
            t.sample(at, || Some(bytes), 0, &mut reports);
        }
        reports
    }

    #[test]
    fn growth_beyond_both_thresholds_alerts_then_releases() {
        let mut t = trend(Duration::ZERO);
        let start = Instant::now();
        let reports = feed(&mut t, start, &[10_000, 12_000, 14_000, 16_000]);
        assert_eq!(reports.len(), 1, "{reports:#?}");
        assert_eq!(reports[0].kind, LeakKind::HeapGrowth);
        assert_eq!(reports[0].state, LeakState::Confirmed);
        assert_eq!(reports[0].route, route::PROCESS);
        assert_eq!(
            reports[0].bytes,
            Some(4_000),
            "10 000 → 14 000: raised at once"
        );
        assert_eq!(t.active_reports().count(), 1);
        // Flat for a whole window: released.
        let later = start + Duration::from_millis(4);
        let reports = feed(&mut t, later, &[16_000; 4]);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].state, LeakState::Released);
        assert_eq!(t.active_reports().count(), 0);
    }

    #[test]
    fn small_or_slow_growth_does_not_alert() {
        let start = Instant::now();
        // +50 % but only +500 bytes: under the absolute threshold.
        let small = feed(
            &mut trend(Duration::ZERO),
            start,
            &[1_000, 1_200, 1_400, 1_500],
        );
        // +2000 bytes but +2 %: under the relative threshold.
        let slow = [100_000, 100_500, 101_000, 102_000];
        let slow = feed(&mut trend(Duration::ZERO), start, &slow);
        assert!(small.is_empty() && slow.is_empty(), "{small:#?} {slow:#?}");
    }

    #[test]
    fn samples_respect_the_interval() {
        let mut t = trend(Duration::from_secs(5));
        let start = Instant::now();
        let mut reports = Vec::new();
        t.sample(start, || Some(1), 0, &mut reports);
        t.sample(start + Duration::from_secs(1), || Some(2), 0, &mut reports);
        assert_eq!(t.samples.len(), 1);
        t.sample(start + Duration::from_secs(6), || Some(3), 0, &mut reports);
        assert_eq!(t.samples.len(), 2);
        assert_eq!(t.latest().unwrap().heap_bytes, Some(3));
    }

    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_set_bytes().unwrap() > 0);
        }
    }
}
