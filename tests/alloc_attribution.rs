//! Exact attribution: 8 threads send requests in parallel, each thread to its own route, each
//! request retaining a distinct amount; every route is charged exactly its own bytes, and
//! memory freed by another thread — or by another route's request — still leaves the route that
//! allocated it.

mod support;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::server::RequestBody;
use tower::{ServiceBuilder, ServiceExt};

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const THREADS: usize = 8;
const PER_THREAD: usize = 50;

fn amount(route: usize) -> usize {
    1000 * (route + 1) + 7
}

const ROUTES: [&str; THREADS] = ["/r0", "/r1", "/r2", "/r3", "/r4", "/r5", "/r6", "/r7"];

#[test]
fn parallel_requests_are_charged_exactly_to_their_own_routes() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .route_fn(|_, uri| ROUTES.iter().copied().find(|r| *r == uri.path()))
        .build()
        .unwrap();
    assert!(detector.stats().memory.is_tracked());
    // Reserved outside any request, so that keeping a block never grows this vector inside one.
    let kept: Arc<Mutex<Vec<Vec<u8>>>> =
        Arc::new(Mutex::new(Vec::with_capacity(THREADS * PER_THREAD)));
    let service = {
        let kept = kept.clone();
        ServiceBuilder::new().layer(detector.layer()).service_fn(
            move |req: Request<RequestBody<Full<Bytes>>>| {
                let kept = kept.clone();
                async move {
                    let route = ROUTES.iter().position(|r| *r == req.uri().path()).unwrap();
                    // Kept: charged to the route. Temporary: allocated and freed inside.
                    let block = vec![route as u8; amount(route)];
                    let scratch = vec![0u8; 10_000 + route];
                    std::hint::black_box(&scratch);
                    kept.lock().unwrap().push(block);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            },
        )
    };

    std::thread::scope(|s| {
        for (t, route) in ROUTES.iter().enumerate() {
            let service = service.clone();
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..PER_THREAD {
                        let request = Request::get(*route).body(Full::new(Bytes::new())).unwrap();
                        let response = service.clone().oneshot(request).await.unwrap();
                        assert_eq!(&support::read_body(response).await[..], b"ok");
                    }
                });
                t
            });
        }
    });

    detector.sweep_now();
    let stats = detector.stats();
    assert_eq!(stats.routes.len(), THREADS, "{stats:#?}");
    assert_eq!(stats.uncounted.requests, 0, "{stats:#?}");
    for (t, route) in ROUTES.iter().enumerate() {
        let r = stats.routes.iter().find(|r| r.route == *route).unwrap();
        assert_eq!(r.finished_requests, PER_THREAD as u64);
        assert_eq!(
            r.live_bytes,
            Some((PER_THREAD * amount(t)) as u64),
            "{route}: {r:?}"
        );
        assert_eq!(r.live_blocks, Some(PER_THREAD as u64), "{route}: {r:?}");
    }

    // Freed on another thread, outside any request: the routes let go of exactly that memory.
    let blocks: Vec<Vec<u8>> = kept.lock().unwrap().drain(..).collect();
    std::thread::spawn(move || drop(blocks)).join().unwrap();
    let stats = detector.stats();
    for r in &stats.routes {
        assert_eq!((r.live_bytes, r.live_blocks), (Some(0), Some(0)), "{r:?}");
    }
}

/// The detector's own bookkeeping (registry entries, probes, the scope itself) is never charged
/// to the request: a handler that only watches objects created elsewhere retains nothing.
#[test]
fn the_detectors_own_allocations_are_not_charged_to_requests() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .route_fn(|_, _| Some("/watch"))
        .build()
        .unwrap();
    let shared: Arc<Vec<u8>> = Arc::new(vec![0u8; 4096]);
    let service = {
        let shared = shared.clone();
        ServiceBuilder::new().layer(detector.layer()).service_fn(
            move |_req: Request<RequestBody<Full<Bytes>>>| {
                let shared = shared.clone();
                async move {
                    for _ in 0..20 {
                        leakwatch::watch(&shared);
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            },
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..10 {
            let request = Request::post("/watch")
                .body(Full::new(Bytes::from_static(b"a body, tracked too")))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            support::read_body(response).await;
        }
    });
    // 200 watch entries and 10 body entries are in the registry, allocated during the requests.
    assert_eq!(detector.stats().watched_objects, 200);
    assert_eq!(detector.stats().tracked_bodies, 10);
    detector.sweep_now();
    let stats = detector.stats();
    let route = stats.routes.iter().find(|r| r.route == "/watch").unwrap();
    assert_eq!(route.finished_requests, 10);
    assert_eq!(
        (route.live_bytes, route.live_blocks),
        (Some(0), Some(0)),
        "{route:?}"
    );
}

/// What one request does with the blocks in the shared stash, by name.
#[derive(Clone, Copy)]
enum Step {
    /// Keeps a new block of this many bytes.
    Keep(&'static str, usize),
    /// Frees a block, then keeps a vector grown and shrunk in place: its block is reallocated
    /// twice and ends at 500 bytes.
    FreeAndResize(&'static str, &'static str),
    /// Frees a block.
    Free(&'static str),
}

/// A block freed by another request — of the same route or of another one, judged already or
/// not — is taken off the route that allocated it, not the route of the request that frees
/// it; a block reallocated by its request is charged its final size.
#[test]
fn blocks_freed_by_other_requests_leave_the_route_that_allocated_them() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .route_fn(|_, uri| ["/a", "/b"].into_iter().find(|r| *r == uri.path()))
        .build()
        .unwrap();
    // Reserved outside any request: inserting and removing never allocates or frees inside one.
    let stash: Arc<Mutex<HashMap<&'static str, Vec<u8>>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(16)));
    let steps: Arc<Mutex<VecDeque<Step>>> = Arc::new(Mutex::new(VecDeque::with_capacity(16)));
    let service = {
        let (stash, steps) = (stash.clone(), steps.clone());
        ServiceBuilder::new().layer(detector.layer()).service_fn(
            move |_req: Request<RequestBody<Full<Bytes>>>| {
                let step = steps.lock().unwrap().pop_front().unwrap();
                let stash = stash.clone();
                async move {
                    let mut stash = stash.lock().unwrap();
                    match step {
                        Step::Keep(name, n) => {
                            stash.insert(name, vec![1u8; n]);
                        }
                        Step::FreeAndResize(freed, kept) => {
                            drop(stash.remove(freed).unwrap());
                            let mut v = vec![2u8; 100];
                            v.reserve_exact(900);
                            v.shrink_to(500);
                            assert_eq!(v.capacity(), 500);
                            stash.insert(kept, v);
                        }
                        Step::Free(name) => drop(stash.remove(name).unwrap()),
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            },
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let send = |route: &'static str, step: Step| {
        steps.lock().unwrap().push_back(step);
        rt.block_on(async {
            let request = Request::get(route).body(Full::new(Bytes::new())).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            support::read_body(response).await;
        });
    };
    let live = || {
        let stats = detector.stats();
        let of = |route: &str| {
            let r = stats.routes.iter().find(|r| r.route == route).unwrap();
            (r.live_bytes.unwrap(), r.live_blocks.unwrap())
        };
        (of("/a"), of("/b"))
    };

    send("/a", Step::Keep("a1", 3000));
    send("/b", Step::Keep("b1", 7000));
    detector.sweep_now(); // a1's and b1's requests are judged; their slots retired
    assert_eq!(live(), ((3000, 1), (7000, 1)));
    // Not judged yet: their requests still hold their slots.
    send("/a", Step::Keep("a2", 4000));
    assert_eq!(live(), ((7000, 2), (7000, 1)));
    // Same route, another request: a2 leaves /a; a3 is charged its final 500 bytes.
    send("/a", Step::FreeAndResize("a2", "a3"));
    assert_eq!(live(), ((3500, 2), (7000, 1)));
    // Another route's request frees a3: /a is charged, not /b.
    send("/b", Step::Free("a3"));
    assert_eq!(live(), ((3000, 1), (7000, 1)));
    // Blocks of judged requests, freed by other routes' requests.
    send("/a", Step::Free("b1"));
    assert_eq!(live(), ((3000, 1), (0, 0)));
    send("/b", Step::Free("a1"));
    assert_eq!(live(), ((0, 0), (0, 0)));

    detector.sweep_now();
    assert_eq!(live(), ((0, 0), (0, 0)));
    assert!(stash.lock().unwrap().is_empty());
}
