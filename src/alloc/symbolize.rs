//! Turns sampled return addresses into `file:line` for reports, skipping the allocator's own
//! frames and the standard library's, so that the first frame left is the caller's code.

use std::collections::HashMap;

use crate::alloc::RawSite;
use crate::report::AllocationSite;

/// Function-name prefixes of frames that are never the interesting allocation site.
const SKIPPED: &[&str] = &[
    "leakwatch::alloc",
    "<leakwatch::alloc",
    "backtrace::",
    "__rust",
    "__rdl",
    "alloc::",
    "<alloc::",
    "core::",
    "<core::",
    "std::",
    "<std::",
    "hashbrown::",
    "<hashbrown::",
];

/// The caller's frame of a sampled stack.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frame {
    function: String,
    file: Option<String>,
    line: Option<u32>,
}

/// A source path relative to the working directory when it is below it (as `file!()` gives it),
/// else as compiled.
fn relative(path: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|dir| path.strip_prefix(dir).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Whether a frame belongs to the allocator, the unwinder or the standard library (by name, or
/// by a source path in the toolchain's `library/`).
fn is_internal(function: &str, file: Option<&str>) -> bool {
    SKIPPED.iter().any(|prefix| function.starts_with(prefix))
        || [" as alloc::", " as core::", " as std::"]
            .iter()
            .any(|impl_of| function.contains(impl_of))
        || file.is_some_and(|f| f.starts_with("/rustc/") || f.contains("/library/alloc/"))
}

/// Caches resolved frames by site: a site's stack never changes once recorded.
#[derive(Default)]
pub(crate) struct Symbolizer {
    resolved: HashMap<usize, Frame>,
}

impl Symbolizer {
    /// Resolves `sites` into report entries.
    pub(crate) fn sites(&mut self, sites: &[RawSite]) -> Vec<AllocationSite> {
        sites
            .iter()
            .map(|site| {
                let frame = self
                    .resolved
                    .entry(site.index)
                    .or_insert_with(|| resolve(&site.frames))
                    .clone();
                AllocationSite {
                    function: frame.function,
                    file: frame.file,
                    line: frame.line,
                    bytes: site.bytes,
                    blocks: site.blocks,
                }
            })
            .collect()
    }
}

/// The first frame of `frames` outside the allocator and the standard library.
fn resolve(frames: &[usize]) -> Frame {
    let mut first_named = None;
    for &ip in frames {
        let mut found = None;
        // Inlined frames come innermost first: the first acceptable symbol is the caller.
        backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
            if found.is_some() {
                return;
            }
            let Some(name) = symbol.name().map(|n| format!("{n:#}")) else {
                return;
            };
            let frame = Frame {
                function: name.clone(),
                file: symbol.filename().map(relative),
                line: symbol.lineno(),
            };
            if first_named.is_none() {
                first_named = Some(frame.clone());
            }
            if !is_internal(&name, frame.file.as_deref()) {
                found = Some(frame);
            }
        });
        if let Some(frame) = found {
            return frame;
        }
    }
    first_named.unwrap_or_else(|| Frame {
        function: "<unknown>".to_owned(),
        ..Frame::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_library_and_allocator_frames_are_internal() {
        for name in [
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "alloc::raw_vec::RawVec<T,A>::allocate_in",
            "<leakwatch::alloc::TrackingAllocator<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
        ] {
            assert!(is_internal(name, None), "{name}");
        }
        assert!(is_internal(
            "anything",
            Some("/rustc/abc/library/alloc/src/vec/mod.rs")
        ));
        assert!(!is_internal(
            "my_app::handlers::upload::{{closure}}",
            Some("src/handlers.rs")
        ));
        assert!(!is_internal(
            "alloc_scenarios::leak_map",
            Some("tests/alloc_scenarios.rs")
        ));
    }
}
