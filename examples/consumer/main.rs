//! A queue consumer with one unit of work per message, and the leaks leakwatch finds in it.
//!
//! ```text
//! cargo run --example consumer
//! ```
//!
//! Three consumers take 1 000 messages each off tokio `mpsc` queues; each message is handled
//! in `detector.scope(name, handler(message))`. `consumer/ship` is clean; `consumer/audit`
//! keeps every order it decodes (reported as `RetainedMemory` under its name, with the bytes
//! each message keeps); `consumer/notify` parks a task per message (an `OrphanTask` per message,
//! at its spawn line). The same code is checked by `tests/consumer.rs`.

use std::time::Duration;

use leakwatch::{LeakDetector, LeakKind, LeakReport};
use tokio::sync::mpsc;

mod queue;

/// Plain `tokio::spawn` in a handler and the memory a handler keeps are seen through the
/// allocator.
#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const MESSAGES: u64 = 1000;

#[tokio::main]
async fn main() {
    let detector = LeakDetector::builder()
        .grace(Duration::from_millis(50))
        .confirm_sweeps(0)
        .sink(leakwatch::sink::from_fn(|_: &LeakReport| {}))
        .build()
        .expect("valid settings");

    let mut consumers = Vec::new();
    for name in ["consumer/ship", "consumer/audit", "consumer/notify"] {
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(queue::produce(sender, MESSAGES));
        let detector = detector.clone();
        consumers.push(tokio::spawn(async move {
            let handled = match name {
                "consumer/ship" => queue::consume(&detector, name, receiver, queue::ship).await,
                "consumer/audit" => queue::consume(&detector, name, receiver, queue::audit).await,
                _ => queue::consume(&detector, name, receiver, queue::notify).await,
            };
            (name, handled)
        }));
    }
    for consumer in consumers {
        let (name, handled) = consumer.await.expect("the consumer ran");
        println!("{name}: {handled} messages, one unit each");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    detector.sweep_now();

    let leaks = detector.leaks();
    println!("\nreports ({}):", leaks.len());
    for report in leaks
        .iter()
        .filter(|r| r.kind != LeakKind::OrphanTask)
        .take(5)
    {
        println!("  {report}");
    }
    let orphans: Vec<_> = leaks
        .iter()
        .filter(|r| r.kind == LeakKind::OrphanTask)
        .collect();
    if let Some(first) = orphans.first() {
        println!("  {first}");
        println!(
            "  … and {} more OrphanTask reports like it",
            orphans.len() - 1
        );
    }
    println!("\nunits (LeakDetector::stats):");
    for unit in detector.stats().routes.iter().filter(|r| r.unit) {
        println!(
            "  {:<16} {:>5} finished  {:>9} bytes retained  {:>5} tasks alive  {:>5} reports",
            unit.route,
            unit.finished_requests,
            unit.retained_bytes.unwrap_or(0),
            unit.tracked_tasks,
            unit.active_reports
        );
    }
    println!();

    let of = |unit: &str, kind: LeakKind| -> Vec<&LeakReport> {
        let is = |r: &&LeakReport| r.unit && r.route == unit && r.kind == kind;
        leaks.iter().filter(is).collect()
    };
    // What each message's decoded order holds: what `consumer/audit` keeps per message.
    let kept = queue::Order::decode(&queue::message(0)).map_or(0, |o| o.heap_bytes()) as u64;
    let audit = of("consumer/audit", LeakKind::RetainedMemory);
    let notify = of("consumer/notify", LeakKind::OrphanTask);
    let at_spawn = |r: &&LeakReport| {
        r.location.is_some_and(|l| {
            l.file.ends_with("consumer/queue.rs") && l.line == queue::NOTIFY_SPAWN_LINE
        })
    };
    let checks = [
        (
            "consumer/ship is not reported",
            leaks.iter().all(|r| r.route != "consumer/ship"),
        ),
        (
            "consumer/audit: one RetainedMemory, the bytes each message keeps within 10 %",
            audit.len() == 1
                && audit[0]
                    .bytes_per_request
                    .is_some_and(|b| b.abs_diff(kept) * 10 <= kept),
        ),
        (
            "consumer/notify: an OrphanTask per message, at its spawn line",
            notify.len() == MESSAGES as usize && notify.iter().all(at_spawn),
        ),
    ];
    let mut failed = false;
    for (check, ok) in checks {
        println!("{} {check}", if ok { "  ok " } else { "  FAILED" });
        failed |= !ok;
    }
    if failed {
        std::process::exit(1);
    }
}
