//! The README's axum quick start, as a user copies it: its `Cargo.toml` lines and its `main.rs`
//! become a crate of their own (leakwatch by path, the repository's lock file), which is built
//! and run; two requests to the leaking route must print a confirmed `OrphanTask` through the
//! `tracing` subscriber the snippet installs. Only the listening port is changed (to a free one
//! on 127.0.0.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The first fenced block of `language` in the README section titled `heading`.
fn block(readme: &str, heading: &str, language: &str) -> String {
    let section = readme
        .split(&format!("\n## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = section.split("\n## ").next().unwrap();
    let start = section
        .find(&format!("```{language}"))
        .unwrap_or_else(|| panic!("no ```{language} block under {heading:?}"));
    let body = &section[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap()].to_owned()
}

/// Kills the quick start's process however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the quick start's crate under `target/`; returns its directory.
fn write_crate(port: u16) -> PathBuf {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let toml = block(&readme, "Quick start: axum", "toml");
    let code = block(&readme, "Quick start: axum", "rust");
    assert!(toml.contains("leakwatch = "), "{toml}");
    assert!(code.contains("127.0.0.1:3000"), "{code}");
    let dependencies: String = toml
        .lines()
        .map(|line| {
            if line.starts_with("leakwatch = ") {
                format!("leakwatch = {{ path = {ROOT:?} }}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = Path::new(ROOT).join("target/readme-quick-start");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"quick-start\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n{dependencies}\n\n[workspace]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    let main = code.replace("127.0.0.1:3000", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    // The versions the repository is tested with.
    std::fs::copy(Path::new(ROOT).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_quick_start_prints_a_confirmed_leak_as_copied() {
    let port = free_port();
    let dir = write_crate(port);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .status()
        .expect("run cargo");
    assert!(status.success(), "the README's quick start does not build");

    let binary = dir.join("target/debug/quick-start");
    // Run from its crate's directory, as `cargo run` would: spawn lines read from debug
    // information are relative to the working directory.
    let child = Command::new(binary)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let (lines, seen) = mpsc::channel();
    let stdout = running.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });

    // Once it listens, two requests to the leaking route (the first orphan of a spawn line
    // alone stays suspected: it could be a worker started once).
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the quick start never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    for path in ["/jobs/1", "/jobs/2"] {
        let response = get(port, path);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    // The default grace is 5 s and a suspect is confirmed two sweeps later: wait well past it.
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let confirmed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) if line.contains("OrphanTask [Confirmed] GET /jobs/{id}") => break line,
            Ok(line) => printed.push(line),
            Err(_) => panic!("no confirmed leak printed; the quick start printed: {printed:#?}"),
        }
    };
    assert!(confirmed.contains("WARN"), "{confirmed}");
    assert!(confirmed.contains("spawned at src/main.rs:"), "{confirmed}");
    assert!(!confirmed.contains("/jobs/1 "), "the raw path: {confirmed}");
    eprintln!("the quick start printed:\n{confirmed}");
}
