//! Profiles in pprof's `profile.proto` (gzipped), the format of Go's `/debug/pprof` that pprof,
//! speedscope, Pyroscope, Grafana and Parca read: the live tracked heap ([`heap`]) and the
//! tracked tasks ([`tasks`]).
//!
//! The messages are prost's code for the official schema (`proto/profile.proto`, checked in as
//! `proto.rs`; `tests/pprof_proto_is_generated.rs` keeps the two the same). [`Builder`] fills
//! one in the way the format asks: one string table whose entry 0 is `""`, functions and
//! locations stored once and referred to by id, one mapping (this executable, its functions,
//! files and lines already resolved, so that no tool tries to symbolise it again).

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use prost::Message;

use crate::alloc::symbolize::{Frame, Location};

pub(crate) mod heap;
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
#[rustfmt::skip]
mod proto;
pub(crate) mod tasks;

/// Who holds a block or a task: a request that has finished (what leaks), or one in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeldBy {
    Finished,
    InFlight,
}

impl HeldBy {
    /// The `held_by` label's value, and the `?held_by=` filter's.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            HeldBy::Finished => "finished",
            HeldBy::InFlight => "in_flight",
        }
    }

    /// Parses the `?held_by=` filter.
    pub(crate) fn parse(value: &str) -> Option<HeldBy> {
        [HeldBy::Finished, HeldBy::InFlight]
            .into_iter()
            .find(|held_by| held_by.as_str() == value)
    }
}

/// Which samples a profile keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Only this route template.
    pub(crate) route: Option<String>,
    /// Only what these hold.
    pub(crate) held_by: Option<HeldBy>,
}

/// The one mapping every location refers to.
const MAPPING: u64 = 1;

/// Builds one profile.
pub(crate) struct Builder {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    /// Locations by code address; those without one (a spawn location) by file and line.
    locations: HashMap<LocationKey, u64>,
}

#[derive(PartialEq, Eq, Hash)]
enum LocationKey {
    Address(usize),
    Source(Frame),
}

impl Builder {
    /// A profile whose samples have the values `sample_types` (`(type, unit)`), taken now; the
    /// last sample type is the one tools show first.
    pub(crate) fn new(sample_types: &[(&str, &str)]) -> Self {
        let mut builder = Builder {
            profile: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        builder.string("");
        for &(kind, unit) in sample_types {
            let value_type = builder.value_type(kind, unit);
            builder.profile.sample_type.push(value_type);
        }
        builder.profile.default_sample_type =
            builder.profile.sample_type.last().map_or(0, |t| t.r#type);
        builder.profile.time_nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let executable = std::env::current_exe()
            .ok()
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        let filename = builder.string(&executable);
        builder.profile.mapping.push(proto::Mapping {
            id: MAPPING,
            memory_start: 0,
            memory_limit: u64::MAX,
            filename,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..proto::Mapping::default()
        });
        builder
    }

    /// Sets what one count of the samples stands for (`period` of `kind`/`unit`).
    pub(crate) fn period(&mut self, kind: &str, unit: &str, period: i64) {
        self.profile.period_type = Some(self.value_type(kind, unit));
        self.profile.period = period;
    }

    /// Adds a line of free text that tools show with the profile (`pprof -comments`).
    pub(crate) fn comment(&mut self, text: &str) {
        let index = self.string(text);
        self.profile.comment.push(index);
    }

    /// The id of the location of a resolved return address.
    pub(crate) fn location(&mut self, location: &Location) -> u64 {
        let key = LocationKey::Address(location.address);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let lines = location
            .frames
            .iter()
            .map(|frame| self.line(frame))
            .collect();
        self.add_location(key, location.address as u64, lines)
    }

    /// The id of a location known only by its source position (no code address).
    pub(crate) fn source_location(&mut self, frame: &Frame) -> u64 {
        let key = LocationKey::Source(frame.clone());
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let line = self.line(frame);
        self.add_location(key, 0, vec![line])
    }

    /// Adds a sample: its stack (location ids, leaf first), one value per sample type, and its
    /// labels (`(key, value)`).
    pub(crate) fn sample(&mut self, stack: Vec<u64>, values: Vec<i64>, labels: &[(&str, &str)]) {
        let label = labels
            .iter()
            .map(|&(key, value)| proto::Label {
                key: self.string(key),
                str: self.string(value),
                ..proto::Label::default()
            })
            .collect();
        self.profile.sample.push(proto::Sample {
            location_id: stack,
            value: values,
            label,
        });
    }

    /// The profile, encoded and gzipped.
    pub(crate) fn finish(self) -> Vec<u8> {
        let encoded = self.profile.encode_to_vec();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing to a `Vec` cannot fail.
        let _ = gzip.write_all(&encoded);
        gzip.finish().unwrap_or_default()
    }

    /// The profile as it stands (for tests).
    #[cfg(test)]
    fn profile(&self) -> &proto::Profile {
        &self.profile
    }

    fn add_location(&mut self, key: LocationKey, address: u64, line: Vec<proto::Line>) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            mapping_id: MAPPING,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    fn line(&mut self, frame: &Frame) -> proto::Line {
        proto::Line {
            function_id: self.function(&frame.function, frame.file.as_deref()),
            line: frame.line.map_or(0, i64::from),
            column: 0,
        }
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = self.string(file.unwrap_or(""));
        if let Some(&id) = self.functions.get(&(name, filename)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(proto::Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.functions.insert((name, filename), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.to_owned(),
            file: Some("src/app.rs".to_owned()),
            line: Some(line),
            ..Frame::default()
        }
    }

    #[test]
    fn held_by_parses_its_own_names_only() {
        assert_eq!(HeldBy::parse("finished"), Some(HeldBy::Finished));
        assert_eq!(HeldBy::parse("in_flight"), Some(HeldBy::InFlight));
        assert_eq!(HeldBy::parse("Finished"), None);
        assert_eq!(HeldBy::parse(""), None);
    }

    #[test]
    fn strings_functions_and_locations_are_stored_once() {
        let mut builder = Builder::new(&[("inuse_objects", "count"), ("inuse_space", "bytes")]);
        let leaf = Location {
            address: 0x1000,
            frames: Arc::from(vec![frame("app::inlined", 3), frame("app::handler", 10)]),
        };
        let a = builder.location(&leaf);
        assert_eq!(builder.location(&leaf), a);
        let spawn = builder.source_location(&frame("app::handler", 12));
        assert_ne!(spawn, a);
        builder.sample(vec![a, spawn], vec![1, 64], &[("route", "/a")]);
        builder.sample(vec![a], vec![2, 128], &[("route", "/a")]);
        let profile = builder.profile();
        assert_eq!(profile.string_table[0], "");
        let count = |s: &str| profile.string_table.iter().filter(|t| *t == s).count();
        assert_eq!(
            (count("route"), count("/a"), count("src/app.rs")),
            (1, 1, 1)
        );
        assert_eq!(profile.function.len(), 2, "app::handler is one function");
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.location[0].line.len(), 2, "the inlined frame first");
        let default = profile.default_sample_type as usize;
        assert_eq!(profile.string_table[default], "inuse_space");
    }

    #[test]
    fn the_output_is_a_gzipped_profile() {
        let mut builder = Builder::new(&[("tasks", "count")]);
        builder.comment("hello");
        let bytes = builder.finish();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut decoded)
            .unwrap();
        let profile = proto::Profile::decode(&decoded[..]).unwrap();
        let comment = profile.comment[0] as usize;
        assert_eq!(profile.string_table[comment], "hello");
        assert_eq!(profile.mapping.len(), 1);
    }
}
