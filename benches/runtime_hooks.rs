//! What leakwatch's runtime hooks add to a spawn: 100 tasks spawned with plain `tokio::spawn` and
//! joined, on a current-thread runtime with and without `instrument_runtime`, outside any
//! request and inside one (through the layer; every task is then tracked).
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" cargo bench --bench runtime_hooks
//! ```

#[cfg(tokio_unstable)]
mod bench {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use criterion::Criterion;
    use http::{Request, Response};
    use http_body_util::Full;
    use leakwatch::LeakDetector;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    /// Tasks per iteration.
    const TASKS: usize = 100;

    async fn spawn_and_join() {
        for _ in 0..TASKS {
            tokio::spawn(async {}).await.unwrap();
        }
    }

    fn runtime(hooks: bool) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if hooks {
            leakwatch::instrument_runtime(&mut builder);
        }
        builder.build().unwrap()
    }

    pub(crate) fn runtime_hooks(c: &mut Criterion) {
        let detector = LeakDetector::builder()
            .registry_capacity(1 << 24)
            .sweep_interval(Duration::from_millis(20))
            .route_fn(|_, _| Some("/spawn"))
            .build()
            .unwrap();
        let mut group = c.benchmark_group("100 spawns");
        for hooks in [false, true] {
            let rt = runtime(hooks);
            let name = if hooks { "hooks" } else { "no hooks" };
            group.bench_function(format!("outside a request, {name}"), |b| {
                b.to_async(&rt).iter(spawn_and_join)
            });
            let service = ServiceBuilder::new()
                .layer(detector.layer())
                .service(service_fn(|_req: Request<_>| async {
                    spawn_and_join().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }));
            group.bench_function(format!("inside a request, {name}"), |b| {
                b.to_async(&rt).iter(|| {
                    let request = Request::new(Full::new(Bytes::new()));
                    service.clone().oneshot(request)
                })
            });
        }
        group.finish();
    }
}

#[cfg(tokio_unstable)]
criterion::criterion_group!(benches, bench::runtime_hooks);
#[cfg(tokio_unstable)]
criterion::criterion_main!(benches);

#[cfg(not(tokio_unstable))]
fn main() {
    eprintln!("runtime_hooks: build with RUSTFLAGS=\"--cfg tokio_unstable\" to measure the hooks");
}
