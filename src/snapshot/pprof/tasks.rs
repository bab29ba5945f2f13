//! The task profile: tracked tasks still alive, grouped by route and spawn location, as pprof
//! (sample type `tasks`/`count`) or as text in the manner of Go's `goroutine?debug=1`.
//!
//! A group's stack is its await trace where a task dump gave one (innermost future first),
//! above its spawn location. Each group gives up to two samples, labelled like the heap
//! profile's: `held_by` `finished` for the tasks whose request has finished (what leaks),
//! `in_flight` for the others.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

use super::{Builder, Filter, HeldBy};
use crate::alloc::symbolize::Frame;
use crate::engine::Engine;
use crate::report::SourceLocation;
use crate::stats::TaskGroup;

/// A group of tasks and the await trace of one of them, when a dump gave one.
struct Group {
    tasks: TaskGroup,
    await_trace: Option<String>,
}

/// The tracked tasks `filter` keeps, grouped, most tasks first.
fn groups(engine: &Engine, filter: &Filter) -> Vec<Group> {
    let mut traces: HashMap<(String, Option<SourceLocation>), String> = HashMap::new();
    for report in engine.leaks() {
        if let Some(trace) = report.await_trace {
            traces
                .entry((report.route, report.location))
                .or_insert(trace);
        }
    }
    engine
        .task_groups(Instant::now())
        .into_iter()
        .filter(|g| filter.route.as_deref().is_none_or(|route| route == g.route))
        .filter(|g| match filter.held_by {
            None => true,
            Some(HeldBy::Finished) => g.after_request > 0,
            Some(HeldBy::InFlight) => g.alive > g.after_request,
        })
        .map(|tasks| Group {
            await_trace: traces.remove(&(tasks.route.clone(), tasks.location)),
            tasks,
        })
        .collect()
}

/// The task profile of `engine` as pprof, gzipped.
pub(crate) fn pprof(engine: &Engine, filter: &Filter) -> Vec<u8> {
    let mut builder = Builder::new(&[("tasks", "count")]);
    builder.period("tasks", "count", 1);
    builder.comment("leakwatch task profile: tracked tasks alive, by route and spawn location");
    for group in groups(engine, filter) {
        let mut frames: Vec<Frame> = group
            .await_trace
            .as_deref()
            .map(await_frames)
            .unwrap_or_default();
        frames.push(spawn_frame(group.tasks.location));
        let stack: Vec<u64> = frames.iter().map(|f| builder.source_location(f)).collect();
        let after = group.tasks.after_request;
        let during = group.tasks.alive - after;
        for (held_by, count) in [(HeldBy::Finished, after), (HeldBy::InFlight, during)] {
            if count == 0 || filter.held_by.is_some_and(|wanted| wanted != held_by) {
                continue;
            }
            builder.sample(
                stack.clone(),
                vec![i64::try_from(count).unwrap_or(i64::MAX)],
                &[
                    (engine.name_label(&group.tasks.route), &group.tasks.route),
                    ("held_by", held_by.as_str()),
                ],
            );
        }
    }
    builder.finish()
}

/// The task profile of `engine` as text: a paragraph per group, its count and route, then its
/// frames on lines starting with `#`.
pub(crate) fn text(engine: &Engine, filter: &Filter) -> String {
    let groups = groups(engine, filter);
    let total: u64 = groups.iter().map(|g| g.tasks.alive).sum();
    let after: u64 = groups.iter().map(|g| g.tasks.after_request).sum();
    let mut out = format!(
        "tasks profile: total {total}, {after} outliving their request, {} groups\n",
        groups.len()
    );
    for group in &groups {
        let tasks = &group.tasks;
        let _ = write!(
            out,
            "\n{} @ {}: {} outlive their request, oldest {} ms\n",
            tasks.alive,
            tasks.route,
            tasks.after_request,
            tasks.oldest.as_millis()
        );
        match tasks.location {
            Some(location) => {
                let _ = writeln!(out, "#\tspawned at {location}:{}", location.column);
            }
            None => out.push_str("#\tspawned at an unknown place\n"),
        }
        if let Some(trace) = &group.await_trace {
            out.push_str("#\tawaiting:\n");
            for line in trace.lines() {
                let _ = writeln!(out, "#\t{line}");
            }
        }
    }
    out
}

/// The frame of a spawn location: the root of a group's stack.
fn spawn_frame(location: Option<SourceLocation>) -> Frame {
    match location {
        Some(location) => Frame {
            function: format!("spawned at {location}"),
            file: Some(location.file.to_owned()),
            line: Some(location.line),
            ..Frame::default()
        },
        None => Frame {
            function: "spawned at an unknown place".to_owned(),
            ..Frame::default()
        },
    }
}

/// The frames of a tokio await trace (outermost future first, one per line, drawn as a tree:
/// `╼ name at file:line:column`), innermost first.
fn await_frames(trace: &str) -> Vec<Frame> {
    let mut frames: Vec<Frame> = trace
        .lines()
        .map(|line| {
            line.trim_start_matches([' ', '│', '├', '└', '─', '╼'])
                .trim_end()
        })
        .filter(|line| !line.is_empty())
        .map(|text| {
            let Some((function, place)) = text.rsplit_once(" at ") else {
                return named(text);
            };
            let mut parts = place.rsplitn(3, ':');
            let (column, line, file) = (parts.next(), parts.next(), parts.next());
            match (file, line.and_then(|l| l.parse().ok()), column) {
                (Some(file), Some(line), Some(_)) => Frame {
                    function: function.to_owned(),
                    file: Some(file.to_owned()),
                    line: Some(line),
                    ..Frame::default()
                },
                _ => named(text),
            }
        })
        .collect();
    frames.reverse();
    frames
}

fn named(function: &str) -> Frame {
    Frame {
        function: function.to_owned(),
        ..Frame::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn await_traces_become_frames_innermost_first() {
        let trace = "╼ jobs::run::{{closure}} at src/jobs.rs:10:5\n  └╼ tokio::sync::mpsc::Receiver::recv at /cargo/tokio/src/sync/mpsc/bounded.rs:429:9\n      └╼ odd line without place";
        let frames = await_frames(trace);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].function, "odd line without place");
        assert_eq!(frames[0].file, None);
        assert_eq!(frames[1].function, "tokio::sync::mpsc::Receiver::recv");
        assert_eq!(frames[1].line, Some(429));
        assert_eq!(frames[2].function, "jobs::run::{{closure}}");
        assert_eq!(frames[2].file.as_deref(), Some("src/jobs.rs"));
        assert_eq!(frames[2].line, Some(10));
    }

    #[test]
    fn a_spawn_location_is_the_root_frame() {
        let frame = spawn_frame(Some(SourceLocation {
            file: "src/main.rs",
            line: 42,
            column: 5,
        }));
        assert_eq!(frame.function, "spawned at src/main.rs:42");
        assert_eq!(
            (frame.file.as_deref(), frame.line),
            (Some("src/main.rs"), Some(42))
        );
    }
}
