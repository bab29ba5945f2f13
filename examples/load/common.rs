//! The service measured by `benches/load.sh`: a hello-world route and an allocation-heavy one,
//! served on 127.0.0.1 by a single-threaded runtime (pinned to one core by the script).

use std::collections::HashMap;

use axum::routing::get;
use axum::{Json, Router};

/// `GET /hello`: nothing to allocate but the response.
async fn hello() -> &'static str {
    "hello, world"
}

/// `GET /alloc`: a few hundred allocations per request, all freed by the end.
async fn alloc_heavy() -> Json<HashMap<String, Vec<String>>> {
    let mut map = HashMap::new();
    for group in 0..20 {
        let items: Vec<String> = (0..10).map(|i| format!("item-{group}-{i}")).collect();
        map.insert(format!("group-{group}"), items);
    }
    Json(map)
}

/// The routes, before any middleware.
pub fn routes() -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/alloc", get(alloc_heavy))
}

/// Serves `app` on `127.0.0.1:<first argument>` (default 8099) until killed.
#[allow(dead_code)] // not every load server uses both
pub fn serve(app: Router) {
    serve_with(move || app);
}

/// Serves the router `make_app` returns, calling it inside the server's runtime.
///
/// With `LOAD_IDLE_THREAD=1` the process first starts a thread that only sleeps. A process that
/// never started a thread lets glibc's `malloc` skip its arena locks; any other thread ends
/// that for good (leakwatch's sweeper, a multi-threaded runtime, a blocking pool). This tells
/// that cost apart from leakwatch's own.
pub fn serve_with(make_app: impl FnOnce() -> Router) {
    if std::env::var("LOAD_IDLE_THREAD").as_deref() == Ok("1") {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8099);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let app = make_app();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind 127.0.0.1");
        axum::serve(listener, app).await.expect("serve");
    });
}
