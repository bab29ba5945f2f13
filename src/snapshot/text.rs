//! A snapshot as text for a terminal: a summary line, then one table per section.

use std::fmt::{self, Display};
use std::time::{Duration, UNIX_EPOCH};

use super::{Snapshot, TrendSample};
use crate::report::{render_list, LeakKind};
use crate::stats::MemoryAccounting;
use crate::util::table::{self, or_dash, Align};

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let taken = self.taken_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let stats = &self.stats;
        write!(
            f,
            "leakwatch snapshot at {} ms since the Unix epoch; memory: {}",
            taken.as_millis(),
            stats.memory.as_str()
        )?;
        if stats.memory != MemoryAccounting::Untracked {
            write!(
                f,
                " ({} requests counted now, {} uncounted since start-up)",
                stats.memory_slots_in_use, stats.uncounted.requests
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "registry: {} of {} entries, {} uncounted; in flight: {}; sweeps: {}; \
             active reports: {}",
            stats.registry_entries,
            stats.registry_capacity,
            stats.uncounted.registry_entries,
            stats.requests_in_flight,
            stats.sweeps,
            stats.active.total()
        )?;
        self.routes_table(f)?;
        self.tasks_table(f)?;
        self.groups_table(f)?;
        writeln!(
            f,
            "\nreports ({})",
            self.reports.len() + self.reports_omitted
        )?;
        f.write_str(&render_list(&self.reports))?;
        if self.reports_omitted > 0 {
            writeln!(f, "  … and {} more", self.reports_omitted)?;
        }
        self.sites_list(f)?;
        self.trend_line(f)
    }
}

impl Snapshot {
    fn routes_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nroutes")?;
        let rows: Vec<Vec<String>> = self
            .stats
            .routes
            .iter()
            .map(|r| {
                vec![
                    r.label(),
                    r.requests_in_flight.to_string(),
                    or_dash(r.oldest_in_flight.map(millis)),
                    r.finished_requests.to_string(),
                    or_dash(r.live_bytes),
                    or_dash(r.retained_bytes),
                    or_dash(r.live_blocks),
                    r.witnesses.to_string(),
                    r.tracked_tasks.to_string(),
                    r.active_reports.to_string(),
                ]
            })
            .collect();
        use Align::{Left, Right};
        table::write(
            f,
            &[
                ("ROUTE", Left),
                ("IN FLIGHT", Right),
                ("OLDEST", Right),
                ("FINISHED", Right),
                ("LIVE BYTES", Right),
                ("RETAINED", Right),
                ("BLOCKS", Right),
                ("WITNESSES", Right),
                ("TASKS", Right),
                ("REPORTS", Right),
            ],
            &rows,
        )?;
        Ok(())
    }

    /// Every active report, counted by route, kind and place.
    fn groups_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: u64 = self.report_groups.iter().map(|g| g.count).sum();
        writeln!(f, "\nreports by route, kind and place ({total})")?;
        let rows: Vec<Vec<String>> = self
            .report_groups
            .iter()
            .map(|g| {
                vec![
                    g.count.to_string(),
                    g.confirmed.to_string(),
                    g.kind.to_string(),
                    g.route.clone(),
                    or_dash(g.place.as_deref().map(super::short_place)),
                    g.example.request_id.clone(),
                ]
            })
            .collect();
        use Align::{Left, Right};
        table::write(
            f,
            &[
                ("REPORTS", Right),
                ("CONFIRMED", Right),
                ("KIND", Left),
                ("ROUTE", Left),
                ("WHERE", Left),
                ("EXAMPLE REQUEST", Left),
            ],
            &rows,
        )?;
        if self.report_groups_omitted > 0 {
            writeln!(f, "  … and {} smaller groups", self.report_groups_omitted)?;
        }
        Ok(())
    }

    fn tasks_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\ntasks alive")?;
        let rows: Vec<Vec<String>> = self
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.route.clone(),
                    or_dash(t.location),
                    t.alive.to_string(),
                    t.after_request.to_string(),
                    millis(t.oldest),
                ]
            })
            .collect();
        use Align::{Left, Right};
        table::write(
            f,
            &[
                ("ROUTE", Left),
                ("SPAWNED AT", Left),
                ("ALIVE", Right),
                ("AFTER REQUEST", Right),
                ("OLDEST", Right),
            ],
            &rows,
        )?;
        if self.task_groups_omitted > 0 {
            writeln!(f, "  … and {} more groups", self.task_groups_omitted)?;
        }
        Ok(())
    }

    fn sites_list(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sites.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "\nallocation sites ({} bytes)",
            self.sites_accounting.as_str()
        )?;
        for route in &self.sites {
            writeln!(f, "  {}", route.route)?;
            for site in &route.sites {
                writeln!(f, "    {site}, {} blocks", site.blocks)?;
            }
        }
        Ok(())
    }

    fn trend_line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trend = &self.trend;
        write!(
            f,
            "\ntrend: {} samples over {}",
            trend.samples,
            millis(trend.span)
        )?;
        if let (Some(first), Some(latest)) = (trend.first, trend.latest) {
            let change = |of: fn(&TrendSample) -> Option<u64>| {
                format!("{} → {}", or_dash(of(&first)), or_dash(of(&latest)))
            };
            write!(
                f,
                "; heap bytes {}; alive tasks {}; in flight {}",
                change(|s| s.heap_bytes),
                change(|s| s.runtime_tasks),
                latest.in_flight
            )?;
        }
        let alerts = [
            (LeakKind::HeapGrowth, trend.heap_growth),
            (LeakKind::TaskGrowth, trend.task_growth),
        ];
        let raised: Vec<String> = alerts
            .iter()
            .filter_map(|(kind, state)| state.map(|s| format!("{kind} {s}")))
            .collect();
        if raised.is_empty() {
            writeln!(f, "; no growth alert")
        } else {
            writeln!(f, "; {}", raised.join(", "))
        }
    }
}
