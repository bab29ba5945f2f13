//! Without the `TrackingAllocator`, a repeated check cannot judge memory: it fails saying so,
//! rather than passing; a single check still sees what `leakwatch::spawn` starts.

#[tokio::test]
async fn a_repeated_check_without_the_allocator_fails_saying_why() {
    let check = tokio::spawn(leakwatch::unit::assert_no_leaks_repeated(64, || async {}));
    let panic = check.await.unwrap_err().into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("cannot judge memory")
            && message.contains("install leakwatch::TrackingAllocator"),
        "{message}"
    );
}

#[tokio::test]
async fn a_single_check_without_the_allocator_sees_tracked_tasks() {
    let check = tokio::spawn(leakwatch::assert_no_leaks_in(async {
        leakwatch::spawn(std::future::pending::<()>());
    }));
    let panic = check.await.unwrap_err().into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("1 leak(s)") && message.contains("OrphanTask"),
        "{message}"
    );
    assert!(message.contains("memory not tracked"), "{message}");
}
