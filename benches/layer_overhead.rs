//! What the layer adds to a request: a trivial service called through `oneshot`, with and
//! without `LeakLayer`.
//!
//! ```text
//! cargo bench --bench layer_overhead
//! ```

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use leakwatch::LeakDetector;
use tower::{service_fn, ServiceBuilder, ServiceExt};

async fn hello<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    // Read the body, as a well-behaved handler does (an unread body would be reported).
    req.into_body().collect().await.unwrap();
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/hello")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/hello")
        .body(Full::new(Bytes::from_static(&[0u8; 256])))
        .unwrap()
}

fn layer_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A large registry and frequent sweeps, so that every request takes the tracked path.
    let detector = LeakDetector::builder()
        .registry_capacity(1 << 24)
        .sweep_interval(Duration::from_millis(20))
        .ignore_route("/ignored")
        .route_fn(|_, uri| match uri.path() {
            "/ignored" => Some("/ignored"),
            _ => Some("/hello"),
        })
        .build()
        .unwrap();

    let mut group = c.benchmark_group("oneshot");
    let plain = service_fn(hello::<Full<Bytes>>);
    group.bench_function("without layer", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(plain.oneshot(request()).await.unwrap()) })
    });
    let layered = ServiceBuilder::new()
        .layer(detector.layer())
        .service(service_fn(
            hello::<leakwatch::server::RequestBody<Full<Bytes>>>,
        ));
    group.bench_function("with layer", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(layered.clone().oneshot(request()).await.unwrap()) })
    });
    group.bench_function("with layer, POST body tracked", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(layered.clone().oneshot(post()).await.unwrap()) })
    });
    group.bench_function("with layer, ignored route", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::get("/ignored")
                .body(Full::new(Bytes::new()))
                .unwrap();
            drop(layered.clone().oneshot(req).await.unwrap())
        })
    });
    group.finish();

    let stats = detector.stats();
    assert_eq!(
        stats.uncounted.registry_entries, 0,
        "every request was tracked: {stats:?}"
    );
    assert_eq!(stats.active.total(), 0, "nothing leaked: {stats:?}");
}

criterion_group!(benches, layer_overhead);
criterion_main!(benches);
