//! `assert_no_leaks_repeated` and `#[leakwatch::test(repeat = n)]`: memory each call keeps is
//! found by the window rule; a cache filled once, a bounded cache and a `OnceLock` are not.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

mod support;

use leakwatch::unit::{assert_no_leaks_repeated, MIN_REPEAT};
use support::panic_message;

#[global_allocator]
static ALLOCATOR: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

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
fn a_moka_cache_of_10_passes_with_a_window_above_its_pending_writes() {
    // moka applies its writes 64 at a time: it may hold 10 + 64 entries; 512 calls make a
    // window of 128.
    let cache: moka::sync::Cache<u64, Vec<u8>> = moka::sync::Cache::new(10);
    let mut key = 0;
    block_on(assert_no_leaks_repeated(512, || {
        key += 1;
        let (cache, key) = (cache.clone(), key);
        async move { cache.insert(key, vec![6; 2048]) }
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
