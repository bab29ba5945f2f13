//! Trend alerts, with the allocator installed: a synthetic heap leak raises `HeapGrowth` and a
//! pile of never-ending tasks raises `TaskGrowth`; a steady load (allocating and freeing,
//! spawning tasks that end) raises nothing. One test, so that nothing else in this process moves
//! the heap meanwhile.

use std::time::Duration;

use leakwatch::route::PROCESS;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const STEP: Duration = Duration::from_millis(3);

/// Takes one trend sample: waits out the (1 ms) interval, then sweeps.
async fn sample(detector: &LeakDetector) -> Vec<LeakReport> {
    tokio::time::sleep(STEP).await;
    detector.sweep_now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_alerts_fire_on_leaks_and_stay_quiet_on_steady_load() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = LeakDetector::builder()
        .sweep_interval(Duration::from_secs(3600))
        .trend_interval(Duration::from_millis(1))
        .trend_window(4)
        .growth_ratio(0.3)
        .heap_growth_bytes(4 << 20)
        .task_growth(100)
        .confirm_sweeps(0)
        .sink(sink.clone())
        .build()
        .unwrap();
    assert!(detector.stats().memory.is_tracked());

    // Steady load: memory allocated and freed, tasks that end.
    for _ in 0..8 {
        let scratch = std::hint::black_box(vec![1u8; 8 << 20]);
        drop(scratch);
        let tasks: Vec<_> = (0..200).map(|_| tokio::spawn(async {})).collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(sample(&detector).await.is_empty());
    }
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    assert!(detector.stats().runtime_tasks.is_some());

    // A heap leak: 8 MiB kept at every sample.
    let mut kept = Vec::new();
    let mut heap_reports = Vec::new();
    for _ in 0..4 {
        kept.push(std::hint::black_box(vec![2u8; 8 << 20]));
        heap_reports.extend(sample(&detector).await);
    }
    assert_eq!(heap_reports.len(), 1, "{heap_reports:#?}");
    let alert = &heap_reports[0];
    assert_eq!(alert.kind, LeakKind::HeapGrowth);
    assert_eq!(alert.state, LeakState::Confirmed);
    assert_eq!(alert.route, PROCESS);
    assert!(alert.bytes.unwrap() >= 8 << 20, "{alert}");
    assert!(alert.detail.contains("live heap bytes grew"), "{alert}");
    assert_eq!(detector.leaks().len(), 1);

    // The heap stops growing for a whole window: the alert is released.
    let mut released = Vec::new();
    for _ in 0..4 {
        released.extend(sample(&detector).await);
    }
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_eq!(released[0].state, LeakState::Released);
    drop(kept);

    // Tasks that never end: 150 more at every sample.
    let (_keep_open, closed) = tokio::sync::watch::channel(());
    let mut task_reports = Vec::new();
    for _ in 0..4 {
        for _ in 0..150 {
            let mut closed = closed.clone();
            tokio::spawn(async move { while closed.changed().await.is_ok() {} });
        }
        task_reports.extend(sample(&detector).await);
    }
    let growth: Vec<&LeakReport> = task_reports
        .iter()
        .filter(|r| r.kind == LeakKind::TaskGrowth)
        .collect();
    assert_eq!(growth.len(), 1, "{task_reports:#?}");
    assert_eq!(growth[0].state, LeakState::Confirmed);
    assert!(
        growth[0].detail.contains("alive tokio tasks grew"),
        "{}",
        growth[0]
    );
}
