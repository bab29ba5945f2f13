//! The queue consumer of `examples/consumer`: 1 000 messages, one unit of work each. The leaky
//! handlers are reported under their unit's name — at the spawn line of the task each message
//! parks, with the bytes each message keeps within 10 % — and the clean one is not.

#[path = "../examples/consumer/queue.rs"]
mod queue;
mod support;

use leakwatch::{LeakKind, LeakReport};
use queue::{consume, produce, Order};
use support::{detector, of_kind};
use tokio::sync::mpsc;

#[global_allocator]
static ALLOCATOR: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const MESSAGES: u64 = 1000;

/// Runs `handler` over [`MESSAGES`] messages as the unit `name`; returns every report once
/// the units have ended.
async fn run<Fut>(name: &'static str, handler: fn(Vec<u8>) -> Fut) -> Vec<LeakReport>
where
    Fut: std::future::Future<Output = ()>,
{
    let (detector, _) = detector();
    let (sender, receiver) = mpsc::channel(64);
    let producer = tokio::spawn(produce(sender, MESSAGES));
    assert_eq!(consume(&detector, name, receiver, handler).await, MESSAGES);
    producer.await.unwrap();
    detector.sweep_now();
    let stats = detector.stats();
    let unit = stats.routes.iter().find(|r| r.route == name).unwrap();
    assert!(unit.unit);
    assert_eq!(unit.finished_requests, MESSAGES);
    detector.leaks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_consumer_is_not_reported() {
    let reports = run("consumer/ship", queue::ship).await;
    assert!(reports.is_empty(), "{reports:#?}");
}

#[tokio::test]
async fn a_consumer_keeping_each_message_is_reported_with_the_bytes_it_keeps() {
    let reports = run("consumer/audit", queue::audit).await;
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(
        (report.kind, report.route.as_str(), report.unit),
        (LeakKind::RetainedMemory, "consumer/audit", true)
    );
    let kept = Order::decode(&queue::message(0)).unwrap().heap_bytes() as u64;
    let per_message = report.bytes_per_request.unwrap();
    assert!(
        per_message.abs_diff(kept) * 10 <= kept,
        "{per_message} bytes per message, {kept} kept: {report}"
    );
    queue::AUDIT_LOG.lock().unwrap().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_parking_a_task_per_message_is_reported_at_its_spawn_line() {
    let reports = run("consumer/notify", queue::notify).await;
    let orphans = of_kind(&reports, LeakKind::OrphanTask);
    assert_eq!(orphans.len(), MESSAGES as usize);
    assert_eq!(orphans.len(), reports.len(), "one cause, one report");
    for orphan in &orphans {
        let location = orphan.location.unwrap();
        assert_eq!(
            (orphan.route.as_str(), orphan.unit, location.line),
            ("consumer/notify", true, queue::NOTIFY_SPAWN_LINE)
        );
        assert!(
            location.file.ends_with("examples/consumer/queue.rs"),
            "{orphan}"
        );
    }
    // Acknowledged at last: the tasks end.
    queue::PENDING_ACKS.lock().unwrap().take();
}
