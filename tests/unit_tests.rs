//! `#[leakwatch::test]` and `assert_no_leaks_in`: a library's test fails naming the task its
//! type forgets to stop, and passes once the type is fixed — while other tests of this binary
//! leak on purpose, in parallel, and each sees only its own leftovers.

use std::sync::{Arc, Barrier};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// A library's client, as its users hold it: it starts a heartbeat task when it connects.
mod client {
    use std::time::Duration;
    use tokio::task::JoinHandle;

    async fn heartbeat() {
        let mut ticks = tokio::time::interval(Duration::from_millis(5));
        loop {
            ticks.tick().await;
        }
    }

    /// Forgets its heartbeat when dropped: the task runs on, for ever.
    pub struct LeakyClient {
        _heartbeat: JoinHandle<()>,
    }

    pub const LEAKY_SPAWN_LINE: u32 = line!() + 4;

    impl LeakyClient {
        pub fn connect() -> Self {
            let heartbeat = tokio::spawn(heartbeat());
            LeakyClient {
                _heartbeat: heartbeat,
            }
        }
    }

    /// Stops its heartbeat when dropped.
    pub struct Client {
        heartbeat: JoinHandle<()>,
    }

    impl Client {
        pub fn connect() -> Self {
            Client {
                heartbeat: tokio::spawn(heartbeat()),
            }
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.heartbeat.abort();
        }
    }
}

mod support;

use client::{Client, LeakyClient, LEAKY_SPAWN_LINE};
use support::panic_message;

#[leakwatch::test]
#[should_panic(expected = "OrphanTask")]
async fn a_client_that_forgets_its_task_fails() {
    let client = LeakyClient::connect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(client);
}

#[leakwatch::test]
async fn the_fixed_client_passes() {
    let client = Client::connect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(client);
}

#[leakwatch::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_client_passes_on_a_multi_thread_runtime() {
    for _ in 0..20 {
        drop(Client::connect());
    }
}

#[leakwatch::test]
async fn a_test_returns_what_its_body_returns() -> Result<(), String> {
    let answer = tokio::spawn(async { 42 })
        .await
        .map_err(|e| e.to_string())?;
    (answer == 42)
        .then_some(())
        .ok_or_else(|| "wrong answer".into())
}

// Tests that leak on purpose, run by the harness in parallel with the ones above.

#[leakwatch::test]
#[should_panic(expected = "OrphanTask")]
async fn leaks_a_parked_task_on_purpose() {
    tokio::spawn(std::future::pending::<()>());
}

#[leakwatch::test]
#[should_panic(expected = "WatchedObject")]
async fn leaks_a_watched_object_on_purpose() {
    let object = Arc::new([0u8; 64]);
    leakwatch::watch(&object);
    std::mem::forget(object);
}

#[leakwatch::test]
#[should_panic(expected = "OrphanTask")]
async fn leaks_a_tracked_task_on_purpose() {
    leakwatch::spawn(std::future::pending::<()>());
}

#[test]
fn the_failure_names_the_test_and_the_spawn_line() {
    let message = panic_message(a_client_that_forgets_its_task_fails).expect("the test fails");
    let line = format!("spawned at {}:{LEAKY_SPAWN_LINE}", file!());
    assert!(message.contains(&line), "names {line}: {message}");
    assert!(
        message.contains("outlived their unit `unit_tests::a_client_that_forgets_its_task_fails`"),
        "{message}"
    );
    assert_eq!(message.matches("OrphanTask").count(), 1, "{message}");
    assert!(
        message.contains("checked: tasks spawned in unit `unit_tests::")
            && message.contains("memory not judged in one run"),
        "what was checked: {message}"
    );
}

#[test]
fn tests_in_parallel_each_see_only_their_own_leftovers() {
    const THREADS: usize = 8;
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .name(format!("parallel-{i}"))
                .spawn(move || {
                    panic_message(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        runtime.block_on(leakwatch::assert_no_leaks_in(async move {
                            let client = if i % 2 == 0 {
                                Box::new(LeakyClient::connect()) as Box<dyn Send>
                            } else {
                                Box::new(Client::connect())
                            };
                            // Every test's client is alive at once, on its own thread.
                            let barrier = barrier.clone();
                            tokio::task::spawn_blocking(move || barrier.wait())
                                .await
                                .unwrap();
                            drop(client);
                        }))
                    })
                })
                .unwrap()
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let failure = thread.join().unwrap();
        match (i % 2 == 0, failure) {
            (true, Some(message)) => {
                assert_eq!(message.matches("OrphanTask").count(), 1, "{message}");
                assert!(
                    message.contains(&format!("unit `parallel-{i}`")),
                    "{message}"
                );
                assert!(
                    message.contains(&format!(":{LEAKY_SPAWN_LINE}")),
                    "{message}"
                );
            }
            (false, None) => {}
            (leaky, failure) => panic!("test {i} (leaky: {leaky}): {failure:?}"),
        }
    }
}
