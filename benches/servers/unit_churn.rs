//! `benches/unit_instructions.sh`: `N` trivial futures awaited one after the other on a
//! current-thread runtime — bare, each as a unit of work (`LeakDetector::scope`), or each as a
//! request through the layer (`ServiceExt::oneshot`) — for counting the instructions a unit
//! scope costs under callgrind. The `TrackingAllocator` (exact) is the global allocator in
//! every mode, as in a service that counts memory.
//!
//! ```text
//! cargo run --release --example unit_churn -- unit 100000
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// The trivial unit of work: no allocation, no spawn.
async fn work(n: u64) -> u64 {
    black_box(n) + 1
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: unit_churn bare|unit|request N";
    let (mode, n) = match args.as_slice() {
        [_, mode, n] => (mode.clone(), n.parse::<u64>().expect(usage)),
        _ => panic!("{usage}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let detector = leakwatch::LeakDetector::builder()
        .build()
        .expect("valid settings");
    let mut total = 0;
    runtime.block_on(async {
        match mode.as_str() {
            "bare" => {
                for i in 0..n {
                    total += work(i).await;
                }
            }
            "unit" => {
                for i in 0..n {
                    total += detector.scope("job/trivial", work(i)).await;
                }
            }
            "request" => {
                let service = tower::ServiceBuilder::new()
                    .layer(detector.layer())
                    .service_fn(
                        |_: http::Request<leakwatch::server::RequestBody<String>>| async {
                            Ok::<_, Infallible>(http::Response::new(String::new()))
                        },
                    );
                for i in 0..n {
                    let request = http::Request::new(String::new());
                    let response = service.clone().oneshot(request).await.expect("infallible");
                    drop(black_box(response));
                    total += i;
                }
            }
            _ => panic!("{usage}"),
        }
    });
    black_box(total);
    drop(detector);
}
