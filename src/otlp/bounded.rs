//! Span accounting around the SDK's batch processor, so no leak span is lost unseen.
//!
//! The SDK's `BatchSpanProcessor` drops a span when its bounded queue is full and only logs the
//! count at shutdown. leakwatch keeps its own count of the spans in flight (handed to the
//! processor, not yet through an export attempt) and refuses a span itself once that count
//! reaches the queue's size: the SDK's queue can then never overflow, and every span that is
//! not delivered is counted, by reason, as it happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// Counts shared by [`Admission`] and [`Accounted`].
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    /// Spans handed to the processor whose export attempt has not finished.
    in_flight: AtomicU64,
    /// Spans refused because `in_flight` had reached the queue size.
    queue_full: AtomicU64,
    /// Spans of batches the exporter failed to deliver (collector down, refusing, too slow).
    export_failed: AtomicU64,
}

impl Accounting {
    pub(crate) fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    pub(crate) fn export_failed(&self) -> u64 {
        self.export_failed.load(Ordering::Relaxed)
    }

    /// Takes one place in flight if fewer than `limit` are taken.
    fn admit(&self, limit: u64) -> bool {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

/// A span processor admitting at most `limit` spans in flight into `inner`.
#[derive(Debug)]
pub(crate) struct Admission<P> {
    pub(crate) inner: P,
    pub(crate) limit: u64,
    pub(crate) accounting: Arc<Accounting>,
}

impl<P: SpanProcessor> SpanProcessor for Admission<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.accounting.admit(self.limit) {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that releases a batch's places in flight when its export attempt ends (also if
/// the attempt is abandoned), counting the spans of failed attempts.
#[derive(Debug)]
pub(crate) struct Accounted<E> {
    pub(crate) inner: E,
    pub(crate) accounting: Arc<Accounting>,
}

/// Gives back a batch's places in flight when dropped.
struct Release<'a> {
    accounting: &'a Accounting,
    spans: u64,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.accounting
            .in_flight
            .fetch_sub(self.spans, Ordering::AcqRel);
    }
}

impl<E: SpanExporter> SpanExporter for Accounted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let _release = Release {
            accounting: &self.accounting,
            spans: batch.len() as u64,
        };
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.accounting
                .export_failed
                .fetch_add(spans, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
    use std::sync::{Condvar, Mutex};

    /// An exporter that holds every export until opened, then fails it.
    #[derive(Debug, Clone, Default)]
    struct HeldExporter(Arc<Held>);

    #[derive(Debug, Default)]
    struct Held {
        open: Mutex<bool>,
        opened: Condvar,
        received: AtomicU64,
    }

    impl SpanExporter for HeldExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let held = &self.0;
            let mut open = held.open.lock().unwrap();
            while !*open {
                open = held.opened.wait(open).unwrap();
            }
            held.received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Err(OTelSdkError::InternalFailure("collector down".into()))
        }
    }

    #[test]
    fn spans_over_the_queue_size_are_refused_and_counted() {
        let held = HeldExporter::default();
        let accounting = Arc::new(Accounting::default());
        let batch = BatchSpanProcessor::builder(Accounted {
            inner: held.clone(),
            accounting: accounting.clone(),
        })
        .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(4).build())
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Admission {
                inner: batch,
                limit: 4,
                accounting: accounting.clone(),
            })
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..10 {
            tracer.start("leak OrphanTask").end();
        }
        // Four wait (queued or held in an export); six were refused on the spot.
        assert_eq!(accounting.queue_full(), 6);
        assert_eq!(accounting.in_flight.load(Ordering::Relaxed), 4);

        *held.0.open.lock().unwrap() = true;
        held.0.opened.notify_all();
        let _ = provider.force_flush();
        assert_eq!(held.0.received.load(Ordering::Relaxed), 4);
        assert_eq!(accounting.export_failed(), 4);
        assert_eq!(accounting.in_flight.load(Ordering::Relaxed), 0);

        // With the places given back, the next span is admitted again.
        tracer.start("leak OrphanTask").end();
        let _ = provider.force_flush();
        assert_eq!(accounting.queue_full(), 6);
        assert_eq!(accounting.export_failed(), 5);
        let _ = provider.shutdown();
    }
}
