//! Where a task was spawned, or a block allocated: the service's own code, or a dependency's.
//!
//! A task the user's own code spawns for a request is judged per request (the grace period,
//! then confirming sweeps): the user can say otherwise in code ([`crate::detach`],
//! [`crate::spawn_detached`], [`crate::outside`]). A task a dependency spawns — a pooled
//! client's connection, a `tower::buffer` worker, a WebSocket session — belongs to a shared
//! resource the request only caused, so it is judged by growth against the route's requests.
//!
//! Cargo hands rustc the sources of the packages of the user's workspace by a path relative to
//! the workspace, and those of registry and git dependencies by an absolute path (under
//! `~/.cargo/registry/src/` or `~/.cargo/git/checkouts/`); the standard library's are absolute
//! too (`/rustc/…`). So a spawn location whose file is absolute, or lies under a `vendor/`
//! directory (`cargo vendor`), is a dependency's.

/// Whether a spawn at `file` is a dependency's rather than the user's own code.
pub(crate) fn is_dependency(file: &str) -> bool {
    let bytes = file.as_bytes();
    let windows_absolute = bytes.len() > 2 && bytes[1] == b':' && matches!(bytes[2], b'\\' | b'/');
    file.starts_with('/')
        || file.starts_with('\\')
        || windows_absolute
        || file.starts_with("vendor/")
        || file.contains("/vendor/")
        || file.contains("\\vendor\\")
}

/// Whether source `file`, as debug information names it (an allocation site's first frame
/// outside the standard library), is a dependency's rather than the user's own code.
///
/// Debug information holds absolute paths for the user's code too (the working directory is
/// stripped only when the process runs below it), so only what marks a dependency counts:
/// cargo's layout under any `CARGO_HOME` (`registry/src/`, `git/checkouts/`), `vendor/`, and
/// the toolchain's sources (`/rustc/…`, `rustlib/src/`).
pub(crate) fn is_dependency_source(file: &str) -> bool {
    let file = file.replace('\\', "/");
    [
        "/registry/src/",
        "/git/checkouts/",
        "/vendor/",
        "/rustlib/src/",
    ]
    .iter()
    .any(|dir| file.contains(dir))
        || file.starts_with("/rustc/")
        || file.starts_with("vendor/")
}

/// Whether `file` matches an [`ignore_spawned_at`](crate::LeakDetectorBuilder::ignore_spawned_at)
/// pattern: the path starts with it, or one of its components does (so `"moka-"` matches every
/// file of the `moka` crate under cargo's registry).
pub(crate) fn matches(file: &str, pattern: &str) -> bool {
    file.starts_with(pattern)
        || file
            .match_indices(['/', '\\'])
            .any(|(at, _)| file[at + 1..].starts_with(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_own_files_are_relative() {
        for file in [
            "src/main.rs",
            "tests/shared.rs",
            "examples/demo.rs",
            "crates/api/src/lib.rs",
        ] {
            assert!(!is_dependency(file), "{file}");
        }
    }

    #[test]
    fn registry_git_vendored_and_std_files_are_dependencies() {
        for file in [
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hyper-util-0.1.21/src/rt/tokio.rs",
            "/home/ci/.cargo/git/checkouts/tower-1a2b/8358ee7/tower/src/buffer/service.rs",
            "/rustc/59807616e/library/std/src/thread/mod.rs",
            "C:\\Users\\me\\.cargo\\registry\\src\\index\\axum-0.8.9\\src\\extract\\ws.rs",
            "vendor/moka/src/sync/cache.rs",
            "crates/app/vendor/reqwest/src/async_impl/client.rs",
        ] {
            assert!(is_dependency(file), "{file}");
        }
    }

    #[test]
    fn allocation_sites_in_cargos_layout_are_dependencies() {
        for file in [
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/metrics-util-0.20.4/src/bucket.rs",
            "/usr/local/cargo/registry/src/index.crates.io-6f17d22bba15001f/tracing-opentelemetry-0.34.0/src/layer.rs",
            "/home/ci/.cargo/git/checkouts/tower-1a2b/8358ee7/tower/src/buffer/service.rs",
            "C:\\Users\\me\\.cargo\\registry\\src\\index\\axum-0.8.9\\src\\extract\\ws.rs",
            "/rustc/59807616e/library/std/src/thread/mod.rs",
            "/app/vendor/moka/src/sync/cache.rs",
        ] {
            assert!(is_dependency_source(file), "{file}");
        }
        // The user's code, relative or not (a service run outside its workspace).
        for file in [
            "src/main.rs",
            "examples/scenarios/mod.rs",
            "/build/service/src/handlers/orders.rs",
            "/home/me/work/api/crates/core/src/cache.rs",
        ] {
            assert!(!is_dependency_source(file), "{file}");
        }
    }

    #[test]
    fn patterns_match_a_path_or_a_component() {
        let hyper = "/root/.cargo/registry/src/index/hyper-util-0.1.21/src/rt/tokio.rs";
        assert!(matches(hyper, "hyper-util-"));
        assert!(matches(hyper, "/root/.cargo/"));
        assert!(matches("src/jobs/refresh.rs", "src/jobs/"));
        assert!(!matches("src/jobs/refresh.rs", "jobs/refresh.rs/"));
        assert!(!matches(hyper, "tokio-"));
    }
}
