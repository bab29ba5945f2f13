//! npm packages for tests that need a third-party reader (a pprof decoder, a browser driver):
//! installed once under `target/npm/<name>` with the machine's `npm`, failing with a clear
//! message when that cannot be done — never skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory whose `node_modules` holds `package@version`, installed there the first time
/// (tests of one binary that need it at the same time wait for one another; two binaries
/// install into directories of their own).
pub fn package(name: &str, version: &str) -> PathBuf {
    static PROVISIONING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PROVISIONING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/npm")
        .join(format!("{name}-{version}"));
    let installed = prefix.join("node_modules").join(name).join("package.json");
    if installed.exists() {
        return prefix;
    }
    std::fs::create_dir_all(&prefix).unwrap();
    let output = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&prefix)
        .arg(format!("{name}@{version}"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run npm to install {name}@{version} (install Node.js and npm): {e}")
        });
    assert!(
        output.status.success() && installed.exists(),
        "installing {name}@{version} with npm failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    prefix
}

/// Runs `node script args…` with `packages`' `node_modules` on its module path; returns its
/// standard output, failing the test with its error output when it fails.
pub fn node(packages: &Path, script: &Path, args: &[&Path]) -> String {
    let output = Command::new("node")
        .env("NODE_PATH", packages.join("node_modules"))
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (install Node.js): {e}"));
    assert!(
        output.status.success(),
        "node {} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
