//! `/debug/leaks/heap` and `/debug/leaks/tasks`: pprof profiles of a real axum server on
//! 127.0.0.1, fetched by a real client and decoded by a third-party reader — the npm package
//! `pprof-format`, installed under `target/npm` the first time — for what a profiling tool
//! would show: the sample types, the route and holder labels, the leaking line, the bytes
//! (exact mode: within 10 % of the truth), and nothing of a request's query or headers.
#![cfg(all(feature = "axum", feature = "pprof"))]

#[path = "support/npm.rs"]
mod npm;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use leakwatch::{AllocationSites, LeakDetector};
use serde_json::Value;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

type Map = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// Requests that leak, and what each keeps.
const LEAKS: u64 = 200;
const KEPT: u64 = 4096;

/// The line of the allocation in `leak_map`.
const MAP_LINE: u32 = line!() + 3;
/// L3: 4 KiB of request data kept in a global map.
async fn leak_map(State(map): State<Map>, UrlPath(id): UrlPath<u64>) -> &'static str {
    let data = vec![id as u8; KEPT as usize];
    map.lock().unwrap().insert(id, data);
    "kept"
}

/// 64 KiB kept per request, for the sampled profile.
async fn leak_big(State(map): State<Map>, UrlPath(id): UrlPath<u64>) -> &'static str {
    let data = vec![1; BIG as usize];
    map.lock().unwrap().insert(1_000_000 + id, data);
    "kept"
}
const BIG: u64 = 64 << 10;

/// The line of the `spawn` in `orphan`.
const SPAWN_LINE: u32 = line!() + 3;
/// Spawns a task that never ends: an orphan once the response is sent.
async fn orphan() -> &'static str {
    leakwatch::spawn(std::future::pending::<()>());
    "spawned"
}

async fn start(detector: &LeakDetector) -> SocketAddr {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/leak/map/{id}", get(leak_map))
        .route("/leak/big/{id}", get(leak_big))
        .route("/jobs/{id}", get(orphan))
        .with_state(Map::default())
        .nest_service("/debug/leaks", detector.snapshot_service())
        .layer(detector.layer());
    support::serve(app).await.0
}

/// GETs `path` with a secret in a header; returns the status and the body.
async fn get_path(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let request = Request::get(format!("http://{addr}{path}"))
        .header("x-api-key", "hunter2-header")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = support::client().request(request).await.unwrap();
    let status = response.status();
    (status, support::read_body(response).await)
}

/// Fetches a profile and decodes it with `pprof-format`.
async fn decoded(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get_path(addr, path).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::env::temp_dir().join(format!(
        "leakwatch-profile-{}-{}.pb.gz",
        std::process::id(),
        path.len() ^ (path.bytes().map(usize::from).sum::<usize>() << 8)
    ));
    std::fs::write(&file, &body).unwrap();
    let packages = tokio::task::spawn_blocking(|| npm::package("pprof-format", "2.3.2"))
        .await
        .unwrap();
    let script = root.join("tests/support/pprof_decode.js");
    let json = tokio::task::spawn_blocking(move || {
        let out = npm::node(&packages, &script, &[&file]);
        let _ = std::fs::remove_file(&file);
        out
    })
    .await
    .unwrap();
    serde_json::from_str(&json).unwrap()
}

fn samples<'a>(profile: &'a Value, route: &str) -> Vec<&'a Value> {
    profile["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["route"] == route)
        .collect()
}

/// The test's file as the profile names it (relative to the crate, or absolute).
fn is_this_file(file: &Value) -> bool {
    file.as_str()
        .is_some_and(|f| f.ends_with("tests/pprof_profiles.rs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heap_profile_shows_the_leaking_line_of_the_route_that_leaks() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .build()
        .unwrap();
    let addr = start(&detector).await;

    let (status, body) = get_path(addr, "/debug/leaks/heap").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "sites are off");
    assert!(String::from_utf8_lossy(&body).contains("set_allocation_sites"));

    ALLOC.set_allocation_sites(AllocationSites::Exact);
    for id in 0..LEAKS {
        let path = format!("/leak/map/{id}?token=hunter2-query");
        assert_eq!(get_path(addr, &path).await.0, StatusCode::OK);
    }
    for _ in 0..50 {
        assert_eq!(get_path(addr, "/hello").await.0, StatusCode::OK);
    }
    detector.sweep_now();

    let profile = decoded(addr, "/debug/leaks/heap?debug=hunter2-query").await;
    assert_eq!(
        profile["sampleTypes"],
        serde_json::json!([["inuse_objects", "count"], ["inuse_space", "bytes"]])
    );
    assert_eq!(profile["defaultSampleType"], "inuse_space");
    assert_eq!(profile["periodType"], serde_json::json!(["space", "bytes"]));
    assert_eq!(profile["period"], 1);
    assert!(
        profile["comments"][0].as_str().unwrap().contains("exact"),
        "{profile}"
    );
    assert_eq!(profile["mappings"], 1);
    let strings = profile["strings"].to_string();
    assert!(
        !strings.contains("hunter2"),
        "nothing of a query or header: {strings}"
    );

    let leaking = samples(&profile, "/leak/map/{id}");
    // The same line may be reached by more than one stack (`vec![0; n]` takes another path
    // through the allocator than `vec![x; n]`): tools add them up by line, and so does this.
    let at_line: Vec<_> = leaking
        .iter()
        .filter(|s| is_this_file(&s["stack"][0]["file"]) && s["stack"][0]["line"] == MAP_LINE)
        .collect();
    assert!(!at_line.is_empty(), "the leaking line: {leaking:#?}");
    for site in &at_line {
        assert_eq!(site["labels"]["held_by"], "finished");
        let leaf = site["stack"][0]["function"].as_str().unwrap();
        assert!(leaf.contains("leak_map"), "{leaf}");
    }
    let total = |i: usize| {
        at_line
            .iter()
            .map(|s| s["values"][i].as_u64().unwrap())
            .sum::<u64>()
    };
    let (objects, bytes) = (total(0), total(1));
    assert_eq!(objects, LEAKS, "one block per leaking request");
    let truth = LEAKS * KEPT;
    assert!(
        bytes.abs_diff(truth) * 10 <= truth,
        "{bytes} bytes, truth {truth}"
    );
    assert!(
        leaking.iter().all(|s| s["labels"]["held_by"] == "finished"),
        "no request of the route is in flight: {leaking:#?}"
    );

    // Filters: by route (percent-encoded, as a browser sends it) and by holder.
    let only = decoded(addr, "/debug/leaks/heap?route=%2Fleak%2Fmap%2F%7Bid%7D").await;
    let all = only["samples"].as_array().unwrap();
    assert!(!all.is_empty() && all.iter().all(|s| s["labels"]["route"] == "/leak/map/{id}"));
    let hello = decoded(addr, "/debug/leaks/heap?route=/hello").await;
    assert!(samples(&hello, "/leak/map/{id}").is_empty());
    let in_flight = decoded(addr, "/debug/leaks/heap?held_by=in_flight").await;
    assert!(
        samples(&in_flight, "/leak/map/{id}").is_empty(),
        "{in_flight:#}"
    );
    let finished = decoded(addr, "/debug/leaks/heap?held_by=finished").await;
    assert_eq!(samples(&finished, "/leak/map/{id}").len(), leaking.len());

    // Sampled (a mean of 64 KiB): every sampled block counts for the bytes and blocks it
    // stands for. 600 blocks of 64 KiB give about 380 samples: the estimates are within a few
    // per cent, 25 % is eight standard deviations.
    let mean = std::num::NonZeroU64::new(64 << 10).unwrap();
    ALLOC.set_allocation_sites(AllocationSites::Sampled { mean_bytes: mean });
    const BIG_LEAKS: u64 = 600;
    for id in 0..BIG_LEAKS {
        let path = format!("/leak/big/{id}");
        assert_eq!(get_path(addr, &path).await.0, StatusCode::OK);
    }
    detector.sweep_now();
    let sampled = decoded(addr, "/debug/leaks/heap?route=/leak/big/%7Bid%7D").await;
    assert_eq!(sampled["period"], 64 << 10);
    assert!(sampled["comments"][0]
        .as_str()
        .unwrap()
        .contains("estimated"));
    let big = samples(&sampled, "/leak/big/{id}");
    let sum = |i: usize| {
        big.iter()
            .map(|s| s["values"][i].as_u64().unwrap())
            .sum::<u64>()
    };
    let (objects, bytes) = (sum(0) as f64, sum(1) as f64);
    let truth = (BIG_LEAKS * BIG) as f64;
    assert!(
        (bytes / truth - 1.0).abs() < 0.25,
        "{bytes} bytes, truth {truth}"
    );
    let blocks = BIG_LEAKS as f64;
    assert!(
        (objects / blocks - 1.0).abs() < 0.25,
        "{objects} objects, truth {blocks}"
    );
    ALLOC.set_allocation_sites(AllocationSites::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_profile_groups_orphans_by_route_and_spawn_line() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .build()
        .unwrap();
    let addr = start(&detector).await;
    for id in 0..3 {
        let path = format!("/jobs/{id}?token=hunter2-query");
        assert_eq!(get_path(addr, &path).await.0, StatusCode::OK);
    }
    detector.sweep_now();

    let profile = decoded(addr, "/debug/leaks/tasks").await;
    assert_eq!(
        profile["sampleTypes"],
        serde_json::json!([["tasks", "count"]])
    );
    let jobs = samples(&profile, "/jobs/{id}");
    assert_eq!(jobs.len(), 1, "{profile:#}");
    assert_eq!(jobs[0]["labels"]["held_by"], "finished");
    assert_eq!(jobs[0]["values"][0], 3);
    let root = &jobs[0]["stack"][0];
    assert!(is_this_file(&root["file"]), "{root}");
    assert_eq!(root["line"], SPAWN_LINE);
    assert!(!profile["strings"].to_string().contains("hunter2"));
    let in_flight = decoded(addr, "/debug/leaks/tasks?held_by=in_flight").await;
    assert!(samples(&in_flight, "/jobs/{id}").is_empty());

    let (status, text) = get_path(addr, "/debug/leaks/tasks?debug=1").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.starts_with("tasks profile: total 3, 3 outliving"),
        "{text}"
    );
    assert!(
        text.contains("\n3 @ /jobs/{id}: 3 outlive their request"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pprof_profiles.rs:{SPAWN_LINE}:")),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_tasks_are_labelled_unit_where_a_requests_say_route() {
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .build()
        .unwrap();
    let addr = start(&detector).await;
    let spawn_line = line!() + 4;
    for _ in 0..3 {
        detector
            .scope("job/orphans", async {
                drop(leakwatch::spawn(std::future::pending::<()>()));
            })
            .await;
    }
    detector.sweep_now();

    let profile = decoded(addr, "/debug/leaks/tasks").await;
    let units: Vec<&Value> = profile["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["unit"] == "job/orphans")
        .collect();
    assert_eq!(units.len(), 1, "{profile:#}");
    assert!(units[0]["labels"].get("route").is_none(), "{profile:#}");
    assert_eq!(units[0]["values"][0], 3);
    assert_eq!(units[0]["stack"][0]["line"], spawn_line);
}
