//! What one await trace costs: a tokio task dump of a multi-thread runtime (2 workers) holding
//! 10 000 idle tasks, then the symbolised trace of one task — what leakwatch does, off the
//! request path, when a sweep reports new orphan tasks. Five rounds a second apart (as sweeps
//! are; tokio's dumps taken back to back can stall the runtime, tokio-rs/tokio#7478); prints
//! each and the median.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" cargo bench --bench task_dump --features taskdump
//! IDLE_TASKS=1000 RUSTFLAGS="--cfg tokio_unstable" cargo bench --bench task_dump --features taskdump
//! ```

#[cfg(leakwatch_taskdump)]
fn main() {
    use std::time::{Duration, Instant};

    let idle_tasks: usize = std::env::var("IDLE_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    const ROUNDS: usize = 5;

    async fn idle(stop: std::sync::Arc<tokio::sync::Notify>) {
        stop.notified().await;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..idle_tasks)
            .map(|_| tokio::spawn(idle(stop.clone())))
            .collect();
        let target = tasks[idle_tasks / 2].id();
        tokio::time::sleep(Duration::from_millis(100)).await; // every task parked
        let handle = tokio::runtime::Handle::current();
        let (mut dumps, mut traces) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            let start = Instant::now();
            let dump = tokio::time::timeout(Duration::from_secs(10), handle.dump())
                .await
                .expect("the dump finished");
            let dumped = start.elapsed();
            let start = Instant::now();
            let trace = dump
                .tasks()
                .iter()
                .find(|task| task.id() == target)
                .map(|task| task.trace().to_string())
                .expect("the task is in the dump");
            let symbolised = start.elapsed();
            assert!(trace.contains("Notified"), "{trace}");
            if round == 1 {
                println!("the trace of one idle task:\n{trace}");
            }
            println!(
                "round {round}: dump of {} tasks {dumped:?}, one trace symbolised {symbolised:?}",
                dump.tasks().iter().count()
            );
            dumps.push(dumped);
            traces.push(symbolised);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        dumps.sort();
        traces.sort();
        println!(
            "median: dump {:?}, one trace {:?} ({idle_tasks} idle tasks, 2 workers)",
            dumps[ROUNDS / 2],
            traces[ROUNDS / 2]
        );
        for task in tasks {
            task.abort();
        }
    });
}

#[cfg(not(leakwatch_taskdump))]
fn main() {
    eprintln!("task_dump: needs Linux, RUSTFLAGS=\"--cfg tokio_unstable\" and --features taskdump");
}
