//! Where reports go: the [`ReportSink`] trait and the built-in sinks.
//!
//! The sweeper hands every state change to every configured sink, from its own thread, after a
//! sweep — never on a request's path. A sink must not block for long; one that panics is caught
//! and counted in [`Stats::sink_panics`](crate::stats::Stats::sink_panics).
//!
//! Built in:
//!
//! - [`TracingSink`] (feature `tracing`, the default sink): one `tracing` event per report,
//!   `WARN` for confirmed leaks.
//! - [`CollectingSink`]: keeps reports in memory, for tests and the demo.
//! - [`ChannelSink`]: sends reports into a bounded tokio channel; drops (counted) when full.
//! - [`from_fn`]: any closure taking a `&LeakReport`.
//! - `OtelSink` (feature `otel`): leak spans inside the request's trace.
//!
//! Sinks compose: `Option<S>` is a sink that may be switched off, `Vec<Box<dyn ReportSink>>`
//! fans out, and [`ReportSinkExt::chain`] hands each report to two sinks in turn.

use std::sync::Arc;

pub use crate::report::sink::ReportSink;

use crate::report::LeakReport;

mod collect;
pub use self::collect::{ChannelSink, CollectingSink};

cfg_feature! {
    "tracing",
    mod tracing;
    pub use self::tracing::TracingSink;
}

cfg_feature! {
    "otel",
    mod otel;
    pub use self::otel::{OtelSink, INSTRUMENTATION_NAME};
}

#[cfg(feature = "otel")]
pub(crate) mod gauges;

/// A sink that calls `f` with every report: the closure form of [`ReportSink`].
///
/// ```
/// let detector = leakwatch::LeakDetector::builder()
///     .sink(leakwatch::sink::from_fn(|report| eprintln!("leak: {report}")))
///     .build()
///     .unwrap();
/// # drop(detector);
/// ```
pub fn from_fn<F>(f: F) -> FnSink<F>
where
    F: Fn(&LeakReport) + Send + Sync + 'static,
{
    FnSink(f)
}

/// A sink made of a closure; from [`from_fn`].
#[derive(Clone)]
pub struct FnSink<F>(F);

impl<F> std::fmt::Debug for FnSink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSink").finish_non_exhaustive()
    }
}

impl<F> ReportSink for FnSink<F>
where
    F: Fn(&LeakReport) + Send + Sync + 'static,
{
    fn report(&self, report: &LeakReport) {
        (self.0)(report);
    }
}

/// Combines sinks.
pub trait ReportSinkExt: ReportSink + Sized {
    /// A sink that hands each report to `self`, then to `other`.
    ///
    /// ```
    /// use leakwatch::sink::{CollectingSink, ReportSinkExt};
    ///
    /// let first = CollectingSink::new();
    /// let second = CollectingSink::new();
    /// let both = first.clone().chain(second.clone());
    /// let detector = leakwatch::LeakDetector::builder().sink(both).build().unwrap();
    /// # drop(detector);
    /// ```
    fn chain<T: ReportSink>(self, other: T) -> Chain<Self, T> {
        Chain(self, other)
    }
}

impl<S: ReportSink> ReportSinkExt for S {}

/// Two sinks in a row, made by [`ReportSinkExt::chain`].
#[derive(Clone, Debug)]
pub struct Chain<A, B>(A, B);

impl<A: ReportSink, B: ReportSink> ReportSink for Chain<A, B> {
    fn report(&self, report: &LeakReport) {
        self.0.report(report);
        self.1.report(report);
    }
}

impl<S: ReportSink> ReportSink for Option<S> {
    fn report(&self, report: &LeakReport) {
        if let Some(sink) = self {
            sink.report(report);
        }
    }
}

impl<S: ReportSink + ?Sized> ReportSink for Box<S> {
    fn report(&self, report: &LeakReport) {
        (**self).report(report);
    }
}

impl<S: ReportSink + ?Sized> ReportSink for Arc<S> {
    fn report(&self, report: &LeakReport) {
        (**self).report(report);
    }
}

impl ReportSink for Vec<Box<dyn ReportSink>> {
    fn report(&self, report: &LeakReport) {
        for sink in self {
            sink.report(report);
        }
    }
}

/// The sinks a detector uses when none is configured.
pub(crate) fn default_sinks() -> Vec<Box<dyn ReportSink>> {
    #[cfg(feature = "tracing")]
    {
        vec![Box::new(TracingSink::new())]
    }
    #[cfg(not(feature = "tracing"))]
    {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::sample_report as sample;

    #[test]
    fn a_closure_sink_sees_every_report() {
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        let sink = from_fn(move |report| {
            counter.fetch_add(report.request_number, std::sync::atomic::Ordering::Relaxed);
        });
        sink.report(&sample());
        sink.report(&sample());
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 6);
        assert_eq!(format!("{sink:?}"), "FnSink { .. }");
    }

    #[test]
    fn combinators_deliver_to_every_sink() {
        let a = CollectingSink::new();
        let b = CollectingSink::new();
        let c = CollectingSink::new();
        let fan: Vec<Box<dyn ReportSink>> = vec![Box::new(b.clone()), Box::new(Some(c.clone()))];
        let chain = a.clone().chain(fan).chain(None::<CollectingSink>);
        chain.report(&sample());
        Arc::new(chain).report(&sample());
        assert_eq!(a.reports().len(), 2);
        assert_eq!(b.reports().len(), 2);
        assert_eq!(c.reports().len(), 2);
    }
}
