//! `assert_no_leaks_repeated` and `#[leakwatch::test(repeat = n)]`: memory each call keeps is
//! found by the window rule; a cache filled once, a bounded cache and a `OnceLock` are not.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use leakwatch::unit::{assert_no_leaks_repeated, MIN_REPEAT};

#[global_allocator]
static ALLOCATOR: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// The message of the panic `f` ends in.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
    let payload = std::panic::catch_unwind(f).err()?;
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
    Some(message.unwrap_or_default())
}

fn block_on(future: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Each call keeps 2 KiB for ever.
async fn keeps_2_kib() {
    KEPT.lock().unwrap().push(vec![1; 2048]);
}

#[test]
fn each_call_keeping_2_kib_fails() {
    let message = panic_message(|| block_on(assert_no_leaks_repeated(64, keeps_2_kib)))
        .expect("a leak of 2 KiB per call is found");
    assert!(message.contains("RetainedMemory"), "{message}");
    assert!(
        message.contains("memory (exact) judged over 64 runs: what a run keeps 16 runs later"),
        "{message}"
    );
    assert!(
        message.contains("unit each_call_keeping_2_kib_fails"),
        "{message}"
    );
    let per_call: u64 = message
        .split("per_request=")
        .nth(1)
        .and_then(|rest| rest.split('B').next())
        .and_then(|n| n.parse().ok())
        .expect("bytes per call");
    assert!(
        (1843..=2253).contains(&per_call),
        "2 KiB within 10 %: {per_call}"
    );
}

#[test]
fn a_bounded_cache_of_10_passes() {
    static CACHE: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());
    block_on(assert_no_leaks_repeated(64, || async {
        let mut cache = CACHE.lock().unwrap();
        if cache.len() == 10 {
            cache.pop_front();
        }
        cache.push_back(vec![2; 2048]);
    }));
}

#[test]
fn a_cache_of_10_the_first_call_fills_passes() {
    static CACHE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    block_on(assert_no_leaks_repeated(64, || async {
        let mut cache = CACHE.lock().unwrap();
        if cache.is_empty() {
            cache.extend((0..10).map(|_| vec![3; 2048]));
        }
    }));
}

#[test]
fn a_once_lock_initialised_on_the_first_call_passes() {
    static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
    block_on(assert_no_leaks_repeated(64, || async {
        let table = TABLE.get_or_init(|| (0..4096).collect());
        assert_eq!(table.len(), 4096);
    }));
}

#[test]
fn too_few_calls_is_an_error_not_a_pass() {
    let message = panic_message(|| block_on(assert_no_leaks_repeated(MIN_REPEAT - 1, || async {})))
        .expect("too few calls to judge memory");
    assert!(message.contains("at least 16 calls"), "{message}");
}

#[leakwatch::test(repeat = 64)]
#[should_panic(expected = "RetainedMemory")]
async fn the_macro_repeats_and_finds_2_kib_per_call() {
    static KEPT_HERE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    KEPT_HERE.lock().unwrap().push(vec![4; 2048]);
}

#[leakwatch::test(repeat = 64)]
async fn the_macro_repeats_and_passes_a_bounded_cache() {
    static CACHE: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());
    let mut cache = CACHE.lock().unwrap();
    if cache.len() == 10 {
        cache.pop_front();
    }
    cache.push_back(vec![5; 2048]);
}
