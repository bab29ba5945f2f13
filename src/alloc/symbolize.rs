//! Turns sampled return addresses into `file:line` for reports, skipping the allocator's own
//! frames and the standard library's, so that the first frame left is the caller's code.

use std::collections::HashMap;
use std::sync::Arc;

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

/// One function in a sampled stack, and where in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Frame {
    /// Demangled, without its hash; `<unknown>` when the address has no symbol.
    pub(crate) function: String,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    /// Known by its source path to be the allocator's, the unwinder's or the toolchain's (with
    /// line tables only, debug information names inlined functions without their paths).
    pub(crate) internal_source: bool,
}

/// One return address of a sampled stack, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Location {
    #[cfg_attr(not(feature = "pprof"), allow(dead_code))]
    pub(crate) address: usize,
    /// The functions at this address, innermost first: all but the last were inlined into the
    /// last (the order of pprof's `Location.line`).
    pub(crate) frames: Arc<[Frame]>,
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

/// This crate's allocator sources, as the compiler named them.
const ALLOCATOR_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/alloc/");

/// Whether the absolute source path `path` is the allocator's, the unwinder's (the `backtrace`
/// package) or the toolchain's.
fn is_internal_source(path: &str) -> bool {
    path.starts_with(ALLOCATOR_SOURCES)
        || path.starts_with("/rustc/")
        || path.contains("/rustlib/src/")
        || crate::util::in_package(path, "backtrace")
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

/// Resolves sampled stacks, caching each address: a code address means the same all along.
#[derive(Default)]
pub(crate) struct Symbolizer {
    resolved: HashMap<usize, Arc<[Frame]>>,
}

impl Symbolizer {
    /// Resolves `sites` into report entries: each one's first frame outside the allocator and
    /// the standard library.
    pub(crate) fn sites(&mut self, sites: &[RawSite]) -> Vec<AllocationSite> {
        sites
            .iter()
            .map(|site| {
                let frame = self
                    .stack(&site.frames)
                    .into_iter()
                    .next()
                    .and_then(|l| l.frames.first().cloned());
                let frame = frame.unwrap_or_else(|| Frame {
                    function: "<unknown>".to_owned(),
                    ..Frame::default()
                });
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

    /// Every function of the stack of return addresses `frames`, leaf first (a function inlined
    /// into another before it), each with the index of its return address in `frames`.
    pub(crate) fn functions(&mut self, frames: &[usize]) -> Vec<(usize, Frame)> {
        let mut functions = Vec::new();
        for (index, &address) in frames.iter().enumerate() {
            let resolved = self
                .resolved
                .entry(address)
                .or_insert_with(|| resolve(address));
            functions.extend(resolved.iter().map(|f| (index, f.clone())));
        }
        functions
    }

    /// The stack of return addresses `frames`, leaf first, from the caller's frame on: the
    /// allocator's, the unwinder's and the standard library's frames above the first frame of
    /// other code are left out (all of the stack is kept when it has no other frame).
    pub(crate) fn stack(&mut self, frames: &[usize]) -> Vec<Location> {
        let mut stack: Vec<Location> = frames
            .iter()
            .map(|&address| Location {
                address,
                frames: self
                    .resolved
                    .entry(address)
                    .or_insert_with(|| resolve(address))
                    .clone(),
            })
            .collect();
        let Some(first) = stack
            .iter()
            .position(|l| l.frames.iter().any(|f| !f.is_internal()))
        else {
            return stack;
        };
        stack.drain(..first);
        let leaf = &stack[0].frames;
        if let Some(inner) = leaf
            .iter()
            .position(|f| !f.is_internal())
            .filter(|&i| i > 0)
        {
            stack[0].frames = leaf[inner..].into();
        }
        stack
    }
}

impl Frame {
    /// Whether it belongs to the allocator, the unwinder or the standard library.
    pub(crate) fn is_internal(&self) -> bool {
        self.internal_source || is_internal(&self.function, self.file.as_deref())
    }
}

/// The functions at `address`, innermost first (at least one).
fn resolve(address: usize) -> Arc<[Frame]> {
    let mut frames = Vec::new();
    backtrace::resolve(address as *mut std::ffi::c_void, |symbol| {
        frames.push(Frame {
            function: symbol
                .name()
                .map_or_else(|| "<unknown>".to_owned(), |n| format!("{n:#}")),
            file: symbol.filename().map(relative),
            line: symbol.lineno(),
            internal_source: symbol
                .filename()
                .is_some_and(|path| is_internal_source(&path.to_string_lossy())),
        });
    });
    if frames.is_empty() {
        frames.push(Frame {
            function: "<unknown>".to_owned(),
            ..Frame::default()
        });
    }
    frames.into()
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
