//! Debian's Chromium for tests that look at a page in a real browser: installed with `apt-get`
//! the first time when it is not on the machine, failing with a clear message when it cannot
//! be — never skipping.

use std::path::PathBuf;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The path of a Chromium that runs headless.
pub fn chromium() -> PathBuf {
    static PROVISIONING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PROVISIONING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = PathBuf::from(CHROMIUM);
    if path.exists() {
        return path;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("cannot run apt-get to install chromium: {e}"))
    };
    let install = ["install", "-y", "-q", "--no-install-recommends", "chromium"];
    let mut output = apt(&install);
    if !output.status.success() {
        // A fresh machine may have no package lists yet.
        let update = apt(&["update", "-q"]);
        assert!(
            update.status.success(),
            "apt-get update failed (is this Debian, run as root?):\n{}",
            String::from_utf8_lossy(&update.stderr)
        );
        output = apt(&install);
    }
    assert!(
        output.status.success() && path.exists(),
        "installing Debian's chromium failed (apt-get install chromium, as root):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    path
}
