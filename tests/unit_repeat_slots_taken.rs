//! Once every route slot of the allocator is taken (one per route or unit name, for the
//! process's life), a repeated check cannot count a new test's memory: it fails saying so,
//! rather than passing.

#[global_allocator]
static ALLOCATOR: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

#[tokio::test]
async fn a_repeated_check_with_no_slot_left_fails_saying_why() {
    // 4 096 names, each taking a slot, in a detector of their own.
    let detector = leakwatch::LeakDetector::builder().build().unwrap();
    for i in 0..leakwatch::route::MAX_ROUTES {
        let name: &'static str = Box::leak(format!("job/{i}").into_boxed_str());
        detector.scope(name, async {}).await;
    }
    let check = tokio::spawn(leakwatch::unit::assert_no_leaks_repeated(64, || async {}));
    let panic = check.await.unwrap_err().into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("cannot judge memory") && message.contains("route slots"),
        "{message}"
    );
}
