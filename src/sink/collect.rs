use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ReportSink;
use crate::report::LeakReport;
use crate::util::sync::lock;

/// Keeps reports in memory, for tests and tools. Clones share one buffer.
///
/// The buffer is bounded ([`CollectingSink::DEFAULT_CAPACITY`] unless set): past it, the oldest
/// report is dropped and [`dropped`](Self::dropped) counts it.
///
/// ```
/// let reports = leakwatch::sink::CollectingSink::new();
/// let detector = leakwatch::LeakDetector::builder()
///     .sink(reports.clone())
///     .build()
///     .unwrap();
/// detector.sweep_now();
/// assert!(reports.reports().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct CollectingSink {
    inner: Arc<Collected>,
}

#[derive(Debug)]
struct Collected {
    reports: Mutex<VecDeque<LeakReport>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl Default for CollectingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectingSink {
    /// How many reports a sink made by [`new`](Self::new) keeps.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// A sink keeping up to [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) reports.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A sink keeping up to `capacity` reports (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        CollectingSink {
            inner: Arc::new(Collected {
                reports: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// A copy of the reports received so far, oldest first.
    pub fn reports(&self) -> Vec<LeakReport> {
        lock(&self.inner.reports).iter().cloned().collect()
    }

    /// Takes the reports received so far, leaving the sink empty.
    pub fn take(&self) -> Vec<LeakReport> {
        lock(&self.inner.reports).drain(..).collect()
    }

    /// Reports dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl ReportSink for CollectingSink {
    fn report(&self, report: &LeakReport) {
        let mut reports = lock(&self.inner.reports);
        if reports.len() >= self.inner.capacity {
            reports.pop_front();
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
        reports.push_back(report.clone());
    }
}

/// Sends reports into a bounded tokio channel. Never blocks: when the channel is full or closed,
/// the report is dropped and counted.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (sink, mut receiver) = leakwatch::sink::ChannelSink::new(64);
/// let detector = leakwatch::LeakDetector::builder().sink(sink).build().unwrap();
/// // elsewhere: while let Some(report) = receiver.recv().await { … }
/// # drop(detector);
/// # assert!(receiver.recv().await.is_none());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ChannelSink {
    sender: mpsc::Sender<LeakReport>,
    dropped: Arc<AtomicU64>,
}

impl ChannelSink {
    /// A sink and the receiving end of its channel, holding up to `capacity` reports (at least
    /// one).
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<LeakReport>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let sink = ChannelSink {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (sink, receiver)
    }

    /// Reports dropped because the channel was full or its receiver gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl ReportSink for ChannelSink {
    fn report(&self, report: &LeakReport) {
        if self.sender.try_send(report.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::sample_report as sample;

    #[test]
    fn collecting_sink_is_bounded() {
        let sink = CollectingSink::with_capacity(2);
        for id in 0..5 {
            let mut report = sample();
            report.id = id;
            sink.report(&report);
        }
        let ids: Vec<u64> = sink.reports().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![3, 4]);
        assert_eq!(sink.dropped(), 3);
        assert_eq!(sink.take().len(), 2);
        assert!(sink.reports().is_empty());
    }

    #[tokio::test]
    async fn channel_sink_drops_when_full() {
        let (sink, mut receiver) = ChannelSink::new(1);
        sink.report(&sample());
        sink.report(&sample());
        assert_eq!(sink.dropped(), 1);
        assert_eq!(receiver.recv().await.unwrap().id, sample().id);
        drop(receiver);
        sink.report(&sample());
        assert_eq!(sink.dropped(), 2);
    }
}
