//! OTLP export against a real third-party receiver: the OpenTelemetry Python project's sinks
//! (PyPI `oteltest`), over gRPC and over HTTP/protobuf. The harness installs `oteltest` into a
//! virtualenv under `target/` the first time (failing clearly if it cannot), starts the receiver
//! (`tests/otlp_receiver.py`), sends to it on 127.0.0.1 only, and stops it at the end.
#![cfg(feature = "otlp")]

mod support;

use std::convert::Infallible;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::otlp::{OtlpBuilder, OtlpProtocol};
use leakwatch::server::RequestBody;
use opentelemetry::metrics::MeterProvider;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};

const OTELTEST: &str = "oteltest==0.49.0";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// The virtualenv's python, with `oteltest` installed (once; tests of this binary that need it
/// at the same time wait for one another).
fn python() -> PathBuf {
    static PROVISIONING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PROVISIONING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otel-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import oteltest.sink"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let run = |program: &Path, args: &[&str]| {
        let output = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "provisioning the OTLP receiver failed: {} {args:?}\n{}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(
        Path::new("python3"),
        &["-m", "venv", venv.to_str().unwrap()],
    );
    run(
        &venv.join("bin/pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            OTELTEST,
        ],
    );
    assert!(
        ready(&python),
        "oteltest was installed but cannot be imported"
    );
    python
}

/// A running receiver; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    output: PathBuf,
}

impl Receiver {
    fn start(mode: &str) -> Receiver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let output = std::env::temp_dir().join(format!("leakwatch-otlp-{mode}-{port}.jsonl"));
        let _ = std::fs::remove_file(&output);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([mode, &port.to_string(), output.to_str().unwrap(), "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the receiver did not start");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the receiver never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver {
            child,
            port,
            output,
        }
    }

    /// Waits (up to 30 s) until what arrived satisfies `done`; returns it.
    fn wait_for(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records: Vec<Value> = std::fs::read_to_string(&self.output)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; the receiver got {records:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.output);
    }
}

async fn export_a_leak(mode: &str, protocol: OtlpProtocol) {
    let receiver = Receiver::start(mode);
    let otlp = OtlpBuilder::new()
        .protocol(protocol)
        .endpoint(format!("http://127.0.0.1:{}", receiver.port))
        .service_name("leakwatch-test")
        .install()
        .unwrap();
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .sink(otlp.sink())
        .route_fn(|_, _| Some("/jobs/{id}"))
        .build()
        .unwrap();
    detector.register_metrics(&otlp.meter_provider().meter("leakwatch"));

    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
        |_: Request<RequestBody<Full<Bytes>>>| async {
            leakwatch::spawn(std::future::pending::<()>());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    );
    // Two requests: one orphan from a spawn line alone stays suspected (no span).
    for _ in 0..2 {
        let request = Request::get("/jobs/9")
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .header("x-request-id", format!("otlp-{mode}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        support::read_body(service.clone().oneshot(request).await.unwrap()).await;
    }
    assert_eq!(detector.sweep_now().len(), 2);
    let dropped = tokio::task::spawn_blocking(move || {
        otlp.flush();
        otlp.dropped_spans()
    })
    .await
    .unwrap();
    assert_eq!(dropped, 0, "the receiver took every span");

    let records = receiver.wait_for(|records| {
        records.iter().any(|r| r["signal"] == "span")
            && records.iter().any(|r| r["name"] == "leakwatch.leaks")
    });
    let span = records.iter().find(|r| r["signal"] == "span").unwrap();
    assert_eq!(span["name"], "leak OrphanTask");
    assert_eq!(span["trace_id"], TRACE_ID);
    assert_eq!(span["parent_span_id"], PARENT_ID);
    assert_eq!(span["status_code"], 2, "status error");
    assert_eq!(span["scope"], "leakwatch");
    assert_eq!(span["attributes"]["http.route"], "/jobs/{id}");
    assert_eq!(span["attributes"]["http.request.method"], "GET");
    assert_eq!(span["attributes"]["leak.kind"], "OrphanTask");
    assert_eq!(
        span["attributes"]["leak.request_id"],
        format!("otlp-{mode}")
    );
    assert!(
        span["attributes"]["code.lineno"].is_number()
            || span["attributes"]["code.lineno"].is_string()
    );
    assert_eq!(span["resource"]["service.name"], "leakwatch-test");
    assert!(span["resource"]["service.instance.id"].is_string());
    let metric_names: Vec<&str> = records
        .iter()
        .filter(|r| r["signal"] == "metric")
        .filter_map(|r| r["name"].as_str())
        .collect();
    for name in [
        "leakwatch.leaks",
        "leakwatch.leaks.active",
        "leakwatch.registry.entries",
    ] {
        assert!(
            metric_names.contains(&name),
            "{name} missing from {metric_names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_arrive_at_a_real_otlp_receiver_over_grpc_and_http() {
    export_a_leak("grpc", OtlpProtocol::Grpc).await;
    export_a_leak("http", OtlpProtocol::HttpProtobuf).await;
}

/// The demo's own leaks, exported by `cargo run --example demo` with the OTLP variables set.
fn export_the_demo(mode: &str, protocol: &str) {
    let receiver = Receiver::start(mode);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Exactly the README's command, default features: examples build leakwatch with `otlp`.
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", "demo", "--"])
        .args([
            "--requests",
            "3",
            "--clean-requests",
            "10",
            "--memory-requests",
            "80",
        ])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_SERVICE_NAME", "leakwatch-demo")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("exported over OTLP"), "{stdout}");

    let kinds = [
        "leak OrphanTask",
        "leak UnconsumedBody",
        "leak RetainedBody",
        "leak WatchedObject",
        "leak RetainedMemory",
    ];
    let records = receiver.wait_for(|records| {
        kinds
            .iter()
            .all(|kind| records.iter().any(|r| r["name"] == *kind))
            && records.iter().any(|r| r["name"] == "leakwatch.leaks")
    });
    let spans: Vec<&Value> = records.iter().filter(|r| r["signal"] == "span").collect();
    // 3 requests on each of the per-request leaky routes (four of them leave a task: three
    // through `leakwatch::spawn`, one through plain `tokio::spawn`), one per memory route.
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["name"] == "leak OrphanTask")
            .count(),
        12
    );
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["name"] == "leak RetainedMemory")
            .count(),
        3
    );
    for span in &spans {
        assert_eq!(span["resource"]["service.name"], "leakwatch-demo");
        assert!(span["attributes"]["http.route"]
            .as_str()
            .is_some_and(|r| r.starts_with("/leak/")));
    }
}

#[test]
fn the_demos_leaks_arrive_over_grpc_and_http() {
    export_the_demo("grpc", "grpc");
    export_the_demo("http", "http/protobuf");
}
