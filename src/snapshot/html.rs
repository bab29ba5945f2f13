//! A snapshot as one self-contained HTML page for a browser: no script, no external style sheet,
//! font or image — the routes sorted by what they retain, the trend as an inline SVG chart, the
//! active reports with their await traces, and links to the profiles.
//!
//! Everything it prints from the snapshot goes through [`escape`]: route templates, function
//! names and await traces are text whoever wrote the service chose, and a route template can be
//! anything a router accepts.

use std::fmt::Write;

use super::{Snapshot, TrendSample};
use crate::stats::RouteStats;

/// The most reports the page shows in full (every one is counted in the groups above them).
const MAX_REPORTS: usize = 20;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:72em;\
padding:0 1em;color:#1d1d1f}h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.6em 0 .5em}\
.meta{color:#555}table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;\
border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}th:first-child,td:first-child\
{text-align:left;white-space:normal;word-break:break-all}tr.leaks td:first-child{font-weight:600}\
.bad{color:#b3261e}pre{background:#f5f5f7;padding:.6em;overflow:auto;font-size:12px}\
.report{margin:.8em 0;border-left:3px solid #b3261e;padding-left:.8em}nav a{margin-right:1em}\
svg text{font:11px system-ui,sans-serif}#groups td:first-child{white-space:nowrap;word-break:normal}#groups td:nth-child(3),\
#groups td:nth-child(8){text-align:left;white-space:normal;overflow-wrap:anywhere}";

/// Where the page's links point: paths relative to the page's own address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Links {
    /// What goes before `heap`, `tasks`: `""` when the page's address ends with `/`, else its
    /// last segment and a `/` (percent-encoded).
    prefix: String,
}

impl Links {
    /// Links for a page served at `path` (as the browser asked for it).
    pub(crate) fn for_path(path: &str) -> Links {
        let last = path.rsplit('/').next().unwrap_or("");
        let prefix = if last.is_empty() {
            String::new()
        } else {
            format!("{}/", percent_encoded(last))
        };
        Links { prefix }
    }

    fn to(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }
}

/// The page for `snapshot`.
pub(crate) fn page(snapshot: &Snapshot, links: &Links) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let stats = &snapshot.stats;
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<title>leakwatch</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n<h1>leakwatch</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">Snapshot taken {taken} · memory: {memory} · in flight: {in_flight} · sweeps: {sweeps} · \
         active reports: <b>{active}</b> · registry: {entries} of {capacity}</p>",
        taken = crate::util::clock::utc(snapshot.taken_at),
        memory = stats.memory.as_str(),
        in_flight = stats.requests_in_flight,
        sweeps = stats.sweeps,
        active = stats.active.total(),
        entries = stats.registry_entries,
        capacity = stats.registry_capacity,
    );
    out.push_str("<nav>");
    for (href, label) in [
        (links.to("heap"), "heap profile (pprof)"),
        (
            links.to("heap?held_by=finished"),
            "heap held by finished requests",
        ),
        (links.to("tasks?debug=1"), "tasks (text)"),
        (links.to("tasks"), "tasks (pprof)"),
        ("?format=json".to_owned(), "JSON"),
        ("?format=text".to_owned(), "text"),
    ] {
        let _ = write!(out, "<a href=\"{}\">{label}</a>", escape(&href));
    }
    out.push_str("</nav>\n");
    trend_chart(&mut out, &snapshot.trend.series);
    routes_table(&mut out, snapshot);
    reports(&mut out, snapshot);
    out.push_str("</body></html>\n");
    out
}

/// The routes, those retaining the most first (then those with the most reports, then the most
/// tasks alive); those with reports in bold. Retaining is not leaking (a bounded cache retains):
/// the reports column is the detector's verdict.
fn routes_table(out: &mut String, snapshot: &Snapshot) {
    // Counted by the detector: every active report, however many the snapshot lists.
    let mut routes: Vec<(&RouteStats, u64)> = snapshot
        .stats
        .routes
        .iter()
        .map(|r| (r, r.active_reports))
        .collect();
    routes.sort_by(|(a, ra), (b, rb)| {
        (b.retained_bytes.unwrap_or(0), rb, b.tracked_tasks)
            .cmp(&(a.retained_bytes.unwrap_or(0), ra, a.tracked_tasks))
            .then_with(|| a.route.cmp(&b.route))
    });
    out.push_str(
        "<h2>Routes</h2>\n<table id=\"routes\"><thead><tr><th>route</th><th>in flight</th>\
        <th>finished</th><th>live bytes</th><th>retained bytes</th><th>tasks alive</th>\
        <th>reports</th></tr></thead><tbody>\n",
    );
    for (route, reports) in routes {
        let bytes = |b: Option<u64>| b.map_or_else(|| "–".to_owned(), human_bytes);
        let _ = writeln!(
            out,
            "<tr{class}><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td{bad}>{reports}</td></tr>",
            route.requests_in_flight,
            route.finished_requests,
            bytes(route.live_bytes),
            bytes(route.retained_bytes),
            route.tracked_tasks,
            class = if reports > 0 { " class=\"leaks\"" } else { "" },
            name = escape(&route.label()),
            bad = if reports > 0 { " class=\"bad\"" } else { "" },
        );
    }
    out.push_str("</tbody></table>\n");
}

/// The active reports grouped by route, kind and place, every one counted; then the first
/// reports themselves, with their await traces.
fn reports(out: &mut String, snapshot: &Snapshot) {
    let groups = &snapshot.report_groups;
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let _ = writeln!(
        out,
        "<h2>Active reports ({total}, in {} groups)</h2>",
        groups.len() + snapshot.report_groups_omitted
    );
    if !groups.is_empty() {
        out.push_str(
            "<table id=\"groups\"><thead><tr><th>route</th><th>kind</th><th>where</th>\
             <th>reports</th><th>confirmed</th><th>first seen</th><th>last seen</th>\
             <th>example</th></tr></thead><tbody>\n",
        );
        for group in groups {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&group.route),
                group.kind,
                escape(group.place.as_deref().map_or("–", super::short_place)),
                group.count,
                group.confirmed,
                time_of_day(group.first_detected),
                time_of_day(group.last_detected),
                escape(&group.example.detail),
            );
        }
        out.push_str("</tbody></table>\n");
    }
    if snapshot.report_groups_omitted > 0 {
        let _ = writeln!(
            out,
            "<p class=\"meta\">… and {} smaller groups: filter with ?route= or ?kind=.</p>",
            snapshot.report_groups_omitted
        );
    }
    let examples = snapshot.reports.len().min(MAX_REPORTS);
    if examples == 0 {
        return;
    }
    let _ = writeln!(out, "<h3>The first {examples} reports</h3>");
    for report in snapshot.reports.iter().take(MAX_REPORTS) {
        let _ = write!(
            out,
            "<div class=\"report\"><div>{}</div>",
            escape(&report.to_string())
        );
        if let Some(trace) = &report.await_trace {
            let _ = write!(out, "<pre>{}</pre>", escape(trace));
        }
        out.push_str("</div>\n");
    }
}

/// The UTC time of day of `at` (`22:37:36`): the date is the page's, in its header.
fn time_of_day(at: std::time::SystemTime) -> String {
    let utc = crate::util::clock::utc(at); // "2026-12-06 22:37:36 UTC"
    utc.split(' ').nth(1).unwrap_or(&utc).to_owned()
}

/// The trend window as a small SVG chart: live heap bytes and tasks alive, each scaled to its
/// own maximum, one point per sample.
fn trend_chart(out: &mut String, series: &[TrendSample]) {
    out.push_str("<h2>Trend</h2>\n");
    if series.len() < 2 {
        out.push_str("<p class=\"meta\">Not enough samples yet.</p>\n");
        return;
    }
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 120.0;
    const PAD: f64 = 6.0;
    let _ = write!(
        out,
        "<svg id=\"trend\" width=\"{WIDTH}\" height=\"{}\" viewBox=\"0 0 {WIDTH} {}\" \
         role=\"img\" aria-label=\"heap and tasks over the trend window\">",
        HEIGHT + 20.0,
        HEIGHT + 20.0
    );
    let lines: [(&str, &str, Vec<Option<u64>>); 2] = [
        (
            "heap",
            "#0b57d0",
            series.iter().map(|s| s.heap_bytes).collect(),
        ),
        (
            "tasks",
            "#b3261e",
            series.iter().map(|s| s.runtime_tasks).collect(),
        ),
    ];
    let step = (WIDTH - 2.0 * PAD) / (series.len() - 1) as f64;
    let mut legend_x = PAD;
    for (name, colour, values) in lines {
        let known: Vec<u64> = values.iter().flatten().copied().collect();
        let (Some(&max), Some(&last)) = (known.iter().max(), known.last()) else {
            continue;
        };
        let min = known.iter().copied().min().unwrap_or(0);
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let v = (*v)?;
                let y = if max == 0 {
                    HEIGHT - PAD
                } else {
                    HEIGHT - PAD - (v as f64 / max as f64) * (HEIGHT - 2.0 * PAD)
                };
                Some(format!("{:.1},{y:.1}", PAD + i as f64 * step))
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let shown = |v: u64| {
            if name == "heap" {
                human_bytes(v)
            } else {
                v.to_string()
            }
        };
        let _ = write!(
            out,
            "<text x=\"{legend_x}\" y=\"{}\" fill=\"{colour}\">{name}: {} (min {}, max {})</text>",
            HEIGHT + 15.0,
            shown(last),
            shown(min),
            shown(max)
        );
        legend_x += WIDTH / 2.0;
    }
    out.push_str("</svg>\n");
}

/// `bytes` with a binary unit.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `text` safe inside HTML text and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `segment` with every byte but unreserved ones percent-encoded.
fn percent_encoded(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("/x/<script>alert('1')</script>&\""),
            "/x/&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn links_are_relative_to_the_page() {
        assert_eq!(Links::for_path("/debug/leaks").to("heap"), "leaks/heap");
        assert_eq!(Links::for_path("/debug/leaks/").to("heap"), "heap");
        assert_eq!(Links::for_path("/").to("tasks"), "tasks");
        assert_eq!(
            Links::for_path("/a/<b\">").to("heap"),
            "%3Cb%22%3E/heap",
            "nothing of the path is markup"
        );
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn an_empty_detector_has_a_page() {
        let detector = crate::LeakDetector::builder().build().unwrap();
        let page = page(&detector.snapshot(), &Links::for_path("/debug/leaks"));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("Not enough samples yet"));
        assert!(page.contains("href=\"leaks/heap\""));
        assert!(
            !page.contains("<script") && !page.contains("http"),
            "self-contained"
        );
    }
}
