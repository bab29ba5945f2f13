//! Task cells the allocator saw: which blocks are tasks, where each was spawned, and whose it is.
//!
//! The allocator records a block of tokio's task-cell alignment allocated inside a request with
//! its call stack (return addresses only), and the request layer tracks it as soon as the
//! request's scope is left ([`Liveness::Cell`]). Here, off the request path, the sweeper reads
//! each distinct stack once:
//!
//! - below the allocator's and the standard library's frames, the stack must enter tokio's task
//!   creation (the cell's constructor, or where a release build inlined it: the task's `new`,
//!   `bind`, `spawn_inner`, the blocking pool's spawn). Anything else of the same alignment (a
//!   cache-padded channel) is let go, and its stack is never tracked again;
//! - the *spawn line* is the first frame above tokio's that is neither tokio's nor the standard
//!   library's: the user's `tokio::spawn(…)`, or a dependency's;
//! - whose it is follows the rule of [`origin`]: a dependency's spawn (a pooled client's
//!   connection, a worker) is judged by growth, the user's by the grace period; a spawn line
//!   matching [`ignore_spawned_at`](crate::LeakDetectorBuilder::ignore_spawned_at) is let go.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use crate::alloc::symbolize::{Frame, Symbolizer};
use crate::alloc::{self, CellKind};
use crate::config::Config;
use crate::registry::TrackedObject;
use crate::report::SourceLocation;
use crate::request::liveness::Liveness;
use crate::request::origin;
use crate::request::scope::Judged;
use crate::util::{self, sync::lock};

/// Functions of tokio that create a task, innermost first: the first frame of a stack outside
/// the allocator and the standard library must be one of them (with debug information the
/// cell's constructor; without, whichever of its callers kept a symbol).
const TASK_CREATION: &[(&str, &str)] = &[
    ("tokio::runtime::task::core::Cell<", ">::new"),
    ("tokio::runtime::task::raw::RawTask::new", ""),
    ("tokio::runtime::task::new_task", ""),
    ("tokio::runtime::task::unowned", ""),
    ("tokio::runtime::task::list::", "::bind"),
    ("tokio::runtime::scheduler::", "::bind_new_task"),
    (
        "tokio::runtime::blocking::pool::Spawner::spawn_blocking",
        "",
    ),
    ("tokio::task::spawn::spawn_inner", ""),
];

/// What a stack was read as.
#[derive(Clone, Debug)]
enum Read {
    /// Not a task (for every detector: its stack is not tracked again).
    NotTask,
    /// A task spawned where this detector was told to look away: let go.
    Ignored,
    /// A task spawned at `location` (none without debug information), judged as said.
    Task {
        location: Option<SourceLocation>,
        judged: Judged,
    },
}

/// Reads the stacks of task cells, each once.
#[derive(Default)]
pub(crate) struct CellReader {
    symbolizer: Symbolizer,
    read: HashMap<u32, Read>,
}

impl CellReader {
    /// Reads `object` if it is a task cell not read yet: sets its spawn line and how it is
    /// judged. Returns `false` when it is to be let go (not a task, or an ignored spawn line).
    pub(crate) fn read(&mut self, object: &mut TrackedObject, config: &Config) -> bool {
        let Liveness::Cell(cell) = &object.liveness else {
            return true;
        };
        if !object.is_unread() {
            return true;
        }
        let stack = cell.stack();
        let read = match self.read.get(&stack) {
            Some(read) => read.clone(),
            None => {
                let Some(frames) = cell.frames() else {
                    // Its entry is being written: next sweep.
                    return true;
                };
                self.read_and_keep(stack, &frames, config)
            }
        };
        match read {
            Read::NotTask | Read::Ignored => {
                cell.release();
                false
            }
            Read::Task { location, judged } => {
                object.read_as(location, judged);
                true
            }
        }
    }

    /// Reads every stack the allocator recorded that no detector has read yet, whether or not
    /// a block of it is tracked: what a spawn site or a channel's allocation is, is learnt once.
    pub(crate) fn read_new_stacks(&mut self, config: &Config) {
        for (stack, frames) in alloc::unread_cell_stacks() {
            if !self.read.contains_key(&stack) {
                self.read_and_keep(stack, &frames, config);
            }
        }
    }

    /// Reads the stack numbered `stack`, keeps what it is, and says it to the allocator.
    fn read_and_keep(&mut self, stack: u32, frames: &[usize], config: &Config) -> Read {
        let read = self.read_stack(stack, frames, config);
        // Whether a stack is a task's is the same for every detector; whether it is ignored
        // is this detector's own setting.
        match read {
            Read::NotTask => alloc::set_cell_kind(stack, CellKind::Other),
            Read::Task { .. } => alloc::set_cell_kind(stack, CellKind::Task),
            Read::Ignored => {}
        }
        self.read.insert(stack, read.clone());
        read
    }

    fn read_stack(&mut self, stack: u32, frames: &[usize], config: &Config) -> Read {
        let functions = self.symbolizer.functions(frames);
        let first = first_frame(&functions);
        if !first.is_some_and(|first| is_task_creation(&functions[first].1)) {
            // What allocated it, up to the first frame outside the allocator and the standard
            // library, is never a task's creation: later blocks from there stop unwinding.
            if let Some(first) = first {
                alloc::learn_cell_prefix(&frames[..=functions[first].0], stack);
            }
            return Read::NotTask;
        }
        let unknown = Read::Task {
            location: None,
            judged: Judged::PerRequest,
        };
        let Some((at, spawn)) = spawn_frame(&functions) else {
            // A stack deeper than was kept: a task, spawned where it cannot tell.
            return unknown;
        };
        // Later spawns from this call site stop unwinding at its frame.
        alloc::learn_cell_prefix(&frames[..=*at], stack);
        let Some(file) = spawn.file.as_deref() else {
            // Without debug information: a task, whose spawn line and owner are unknown.
            return unknown;
        };
        if config
            .ignored_spawns
            .iter()
            .any(|pattern| origin::matches(file, pattern))
        {
            return Read::Ignored;
        }
        let judged = if origin::is_dependency_source(file) {
            Judged::ByGrowth
        } else {
            Judged::PerRequest
        };
        Read::Task {
            location: Some(SourceLocation {
                file: intern(file),
                line: spawn.line.unwrap_or(0),
                column: 0,
            }),
            judged,
        }
    }
}

/// The frame that spawned the task whose cell's allocation `functions` (leaf first, each with
/// the index of its return address) shows, or `None` when it shows no task's creation.
fn spawn_frame(functions: &[(usize, Frame)]) -> Option<&(usize, Frame)> {
    let first = first_frame(functions)?;
    if !is_task_creation(&functions[first].1) {
        return None;
    }
    functions[first..]
        .iter()
        .find(|(_, f)| !is_tokio(f) && !f.is_internal())
}

/// The position of the first frame of `functions` outside the allocator, the unwinder and the
/// standard library: what allocated the block.
fn first_frame(functions: &[(usize, Frame)]) -> Option<usize> {
    functions
        .iter()
        .position(|(_, f)| !f.is_internal() && !is_unwinder(&f.function))
}

fn is_task_creation(frame: &Frame) -> bool {
    let function = &frame.function;
    TASK_CREATION
        .iter()
        .any(|(prefix, suffix)| function.starts_with(prefix) && function.contains(suffix))
        || frame.file.as_deref().is_some_and(|file| {
            let name = short_name(function);
            util::in_package(file, "tokio")
                && CREATION_SOURCES
                    .iter()
                    .any(|(path, f)| file.replace('\\', "/").ends_with(path) && name == *f)
        })
}

/// Where [`TASK_CREATION`]'s functions are, for debug information with line tables only, which
/// names inlined functions without their paths (`new<…>`): tokio's source file and the name.
const CREATION_SOURCES: &[(&str, &str)] = &[
    ("/runtime/task/core.rs", "new"),
    ("/runtime/task/raw.rs", "new"),
    ("/runtime/task/mod.rs", "new_task"),
    ("/runtime/task/mod.rs", "unowned"),
    ("/runtime/task/list.rs", "bind"),
    ("/runtime/blocking/pool.rs", "spawn_blocking"),
    ("/task/spawn.rs", "spawn_inner"),
];

/// A function's own name: no path, no generic arguments (`tokio::x::Cell<T>::new<U>` → `new`).
fn short_name(function: &str) -> &str {
    let mut base = function;
    if base.ends_with('>') {
        let mut depth = 0;
        for (at, c) in base.char_indices().rev() {
            match c {
                '>' => depth += 1,
                '<' => {
                    depth -= 1;
                    if depth == 0 {
                        base = &base[..at];
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let (mut depth, mut start) = (0i32, 0);
    let bytes = base.as_bytes();
    for (at, c) in base.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ':' if depth == 0 && bytes.get(at + 1) == Some(&b':') => start = at + 2,
            _ => {}
        }
    }
    &base[start.min(base.len())..]
}

/// The unwinder's own frames, and addresses without a symbol, at the leaf of a stack.
fn is_unwinder(function: &str) -> bool {
    function.starts_with("_Unwind") || function == "<unknown>"
}

/// A frame of tokio's own code (by name, or by a source file in a `tokio-<version>` package).
fn is_tokio(frame: &Frame) -> bool {
    frame.function.starts_with("tokio::")
        || frame.function.starts_with("<tokio::")
        || frame
            .file
            .as_deref()
            .is_some_and(|file| util::in_package(file, "tokio"))
}

/// The most distinct files interned; past it, spawn lines are not kept (the names are leaked,
/// once each, for reports that outlive any one sweep).
const MAX_FILES: usize = 4096;

/// A `&'static` copy of `file`, the same one for equal names.
fn intern(file: &str) -> &'static str {
    static FILES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut files = lock(&FILES);
    if let Some(&known) = files.get(file) {
        return known;
    }
    if files.len() >= MAX_FILES {
        return "<too many files>";
    }
    let leaked: &'static str = Box::leak(file.to_owned().into_boxed_str());
    files.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.to_owned(),
            file: Some(file.to_owned()),
            line: Some(line),
            ..Frame::default()
        }
    }

    const TOKIO: &str =
        "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src";

    fn allocation(creation: &str) -> Vec<(usize, Frame)> {
        let frames = vec![
            frame(
                "backtrace::backtrace::libunwind::trace",
                "/b/libunwind.rs",
                1,
            ),
            frame(
                "leakwatch::alloc::counters::record_cell",
                "src/alloc/counters.rs",
                1,
            ),
            frame("__rust_alloc", "src/main.rs", 1),
            frame(
                "alloc::boxed::Box<T>::new",
                "/rustc/x/library/alloc/src/boxed.rs",
                1,
            ),
            frame(creation, &format!("{TOKIO}/runtime/task/core.rs"), 261),
            frame(
                "tokio::runtime::task::raw::RawTask::new",
                &format!("{TOKIO}/runtime/task/raw.rs"),
                1,
            ),
            frame(
                "tokio::task::spawn::spawn",
                &format!("{TOKIO}/task/spawn.rs"),
                1,
            ),
            frame(
                "core::ops::function::FnOnce::call_once",
                "/rustc/x/library/core/src/ops.rs",
                1,
            ),
            frame("demo::handler::{{closure}}", "examples/demo.rs", 42),
            frame(
                "hyper::proto::h1::dispatch::poll",
                "/root/.cargo/registry/src/i/hyper-1.8.1/src/d.rs",
                9,
            ),
        ];
        frames.into_iter().enumerate().collect()
    }

    #[test]
    fn a_task_is_spawned_at_the_first_frame_above_tokio_s() {
        let stack = allocation("tokio::runtime::task::core::Cell<T,S>::new");
        let (at, spawn) = spawn_frame(&stack).unwrap();
        assert_eq!(*at, 8, "the index of its return address");
        assert_eq!(
            (spawn.file.as_deref(), spawn.line),
            (Some("examples/demo.rs"), Some(42))
        );
    }

    #[test]
    fn other_blocks_of_the_alignment_are_no_task() {
        let stack = allocation("tokio::sync::mpsc::chan::channel");
        assert!(spawn_frame(&stack).is_none());
        // Every request's stack passes through tokio's task poll further up: not a creation.
        let mut polled = allocation("crossbeam_channel::flavors::array::Channel<T>::with_capacity");
        polled.push((
            10,
            frame(
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                TOKIO,
                1,
            ),
        ));
        assert!(spawn_frame(&polled).is_none());
    }

    #[test]
    fn tokio_s_frames_are_known_by_name_or_package() {
        assert!(is_tokio(&frame("<tokio::task::JoinSet<T>>::spawn", "x", 1)));
        assert!(is_tokio(&frame(
            "spawn",
            &format!("{TOKIO}/task/join_set.rs"),
            1
        )));
        assert!(!is_tokio(&frame(
            "tokio_util::task::TaskTracker::spawn",
            "/r/tokio-util-0.7.16/src/t.rs",
            1
        )));
        assert!(!is_tokio(&frame(
            "my_app::tokio::spawn_all",
            "src/tokio-helpers/mod.rs",
            1
        )));
    }

    #[test]
    fn with_line_tables_only_creation_is_known_by_tokio_s_file() {
        // Debug information with line tables only names inlined functions without paths.
        let mut stack = allocation("new<demo::handler::{async_block#0}, Arc<Handle>>");
        assert!(spawn_frame(&stack).is_some());
        stack[0].1 = Frame {
            function: "trace".to_owned(),
            file: Some("/r/backtrace-0.3.77/src/backtrace/libunwind.rs".to_owned()),
            line: Some(117),
            internal_source: true,
        };
        assert!(
            spawn_frame(&stack).is_some(),
            "the unwinder's frame, by its source"
        );
        // The same short name elsewhere in tokio is no creation.
        let other = frame("new<T>", &format!("{TOKIO}/sync/mpsc/chan.rs"), 1);
        assert!(!is_task_creation(&other));
        for (full, short) in [
            ("tokio::runtime::task::core::Cell<T,S>::new", "new"),
            ("new<tokio::runtime::task::core::Cell<F, Arc<H>>>", "new"),
            (
                "tokio::task::spawn::spawn_inner::{{closure}}",
                "{{closure}}",
            ),
            ("bind<S>", "bind"),
        ] {
            assert_eq!(short_name(full), short, "{full}");
        }
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern("src/jobs.rs");
        let b = intern(&String::from("src/jobs.rs"));
        assert!(std::ptr::eq(a, b));
    }
}
