//! The baseline file: retained bytes per request, by route, committed with the code.
//!
//! ```text
//! # leakwatch baseline: retained heap bytes per request, by route.
//! # Rewrite with LEAKWATCH_BASELINE_UPDATE=1.
//! 0 /health
//! 48 /users/{id}
//! ```
//!
//! One route per line, the bytes first so that a route template may hold any character; blank
//! lines and lines starting with `#` are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GuardError;

/// The environment variable naming the baseline file.
pub const BASELINE_ENV: &str = "LEAKWATCH_BASELINE";

/// The environment variable that, set to `1`, rewrites the baseline file from this run.
pub const BASELINE_UPDATE_ENV: &str = "LEAKWATCH_BASELINE_UPDATE";

/// Where the baseline is, and whether this run compares against it or rewrites it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BaselineMode {
    pub(crate) path: PathBuf,
    pub(crate) update: bool,
}

impl BaselineMode {
    /// From the environment, as `var` reads it: `None` when [`BASELINE_ENV`] is unset or empty.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<BaselineMode> {
        let path = var(BASELINE_ENV).filter(|p| !p.is_empty())?;
        let update = var(BASELINE_UPDATE_ENV).is_some_and(|v| v == "1");
        Some(BaselineMode {
            path: PathBuf::from(path),
            update,
        })
    }
}

/// Retained bytes per request, by route template.
pub(crate) type Baseline = BTreeMap<String, u64>;

/// Reads and parses the baseline at `path`.
pub(crate) fn read(path: &Path) -> Result<Baseline, GuardError> {
    let text = std::fs::read_to_string(path).map_err(|error| GuardError::Baseline {
        path: path.to_owned(),
        line: None,
        message: if error.kind() == std::io::ErrorKind::NotFound {
            format!("not found; create it by running with {BASELINE_UPDATE_ENV}=1")
        } else {
            format!("cannot be read: {error}")
        },
    })?;
    parse(&text).map_err(|(line, message)| GuardError::Baseline {
        path: path.to_owned(),
        line: Some(line),
        message,
    })
}

/// Parses a baseline; on error, the 1-based line and what is wrong with it.
fn parse(text: &str) -> Result<Baseline, (usize, String)> {
    let mut baseline = Baseline::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((bytes, route)) = line.split_once(char::is_whitespace) else {
            return Err((
                number,
                format!("expected `<bytes per request> <route>`, found `{line}`"),
            ));
        };
        let bytes: u64 = bytes.parse().map_err(|_| {
            (
                number,
                format!(
                    "`{bytes}` is not a number of bytes (expected `<bytes per request> <route>`)"
                ),
            )
        })?;
        let route = route.trim();
        if baseline.insert(route.to_owned(), bytes).is_some() {
            return Err((number, format!("route `{route}` is listed twice")));
        }
    }
    Ok(baseline)
}

/// The file's text for `baseline`.
pub(crate) fn render(baseline: &Baseline) -> String {
    let mut text = format!(
        "# leakwatch baseline: retained heap bytes per request, by route.\n\
         # Rewrite with {BASELINE_UPDATE_ENV}=1.\n"
    );
    for (route, bytes) in baseline {
        text.push_str(&format!("{bytes} {route}\n"));
    }
    text
}

/// Writes `baseline` to `path`.
pub(crate) fn write(path: &Path, baseline: &Baseline) -> Result<(), GuardError> {
    std::fs::write(path, render(baseline)).map_err(|error| GuardError::Baseline {
        path: path.to_owned(),
        line: None,
        message: format!("cannot be written: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_baseline_parses_back() {
        let mut baseline = Baseline::new();
        baseline.insert("/users/{id}".into(), 48);
        baseline.insert("/with space".into(), 0);
        assert_eq!(parse(&render(&baseline)).unwrap(), baseline);
    }

    #[test]
    fn errors_name_the_line() {
        let text = "# comment\n\n12 /ok\nabc /bad\n";
        let (line, message) = parse(text).unwrap_err();
        assert_eq!(line, 4);
        assert!(message.contains("`abc` is not a number"), "{message}");
        let (line, message) = parse("12\n").unwrap_err();
        assert_eq!(line, 1);
        assert!(message.contains("expected `<bytes per request> <route>`"));
        let (line, message) = parse("1 /a\n2 /a\n").unwrap_err();
        assert_eq!((line, message.as_str()), (2, "route `/a` is listed twice"));
    }

    #[test]
    fn the_mode_comes_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                let found = pairs.iter().find(|(k, _)| *k == name);
                found.map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(BaselineMode::from_env(env(&[])), None);
        assert_eq!(BaselineMode::from_env(env(&[(BASELINE_ENV, "")])), None);
        let compare = BaselineMode::from_env(env(&[(BASELINE_ENV, "leaks.txt")])).unwrap();
        assert_eq!(compare.path, PathBuf::from("leaks.txt"));
        assert!(!compare.update);
        let update = env(&[(BASELINE_ENV, "b"), (BASELINE_UPDATE_ENV, "1")]);
        assert!(BaselineMode::from_env(update).unwrap().update);
    }

    #[test]
    fn a_missing_file_says_how_to_create_it() {
        let error = read(Path::new("/nonexistent/leakwatch-baseline")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/leakwatch-baseline"), "{text}");
        assert!(text.contains(BASELINE_UPDATE_ENV), "{text}");
    }
}
