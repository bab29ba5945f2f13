//! Sets `cfg(leakwatch_taskdump)` where tokio can take task dumps: `--cfg tokio_unstable`, the
//! feature `taskdump`, Linux on `aarch64`, `x86`, `x86_64` or `s390x` — one name for a
//! condition the crate tests in several places.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(leakwatch_taskdump)");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let unstable = std::env::var_os("CARGO_CFG_TOKIO_UNSTABLE").is_some();
    let feature = std::env::var_os("CARGO_FEATURE_TASKDUMP").is_some();
    let linux = var("CARGO_CFG_TARGET_OS") == "linux";
    let arch = matches!(
        var("CARGO_CFG_TARGET_ARCH").as_str(),
        "aarch64" | "x86" | "x86_64" | "s390x"
    );
    if unstable && feature && linux && arch {
        println!("cargo::rustc-cfg=leakwatch_taskdump");
    }
}
