//! The crate's one conversion from the monotonic clock to wall-clock time.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Converts a monotonic instant to wall-clock time, through one pair of readings taken the
/// first time it is called (a detector calls it when it is built, before any request).
///
/// A request then costs one clock read, not two, and every timestamp of a report — a request's
/// open and close, a detection, a trend alert — is on one time line. The price is that a
/// wall-clock step (NTP) after start-up is not reflected in report timestamps.
pub(crate) fn wall(at: Instant) -> SystemTime {
    static EPOCH: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (epoch, epoch_wall) = *EPOCH.get_or_init(|| (Instant::now(), SystemTime::now()));
    match at.checked_duration_since(epoch) {
        Some(after) => epoch_wall + after,
        None => epoch_wall - epoch.duration_since(at),
    }
}

/// `at` as `YYYY-MM-DD HH:MM:SS UTC` (the proleptic Gregorian calendar; times before 1970 as
/// 1970).
#[cfg(feature = "serde")]
pub(crate) fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[cfg(feature = "serde")]
    #[test]
    fn utc_dates_are_calendar_dates() {
        let at = |secs: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_516_536), "2026-12-06 00:22:16 UTC");
        assert_eq!(at(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn instants_keep_their_distance_on_the_wall_clock() {
        let now = Instant::now();
        let later = now + Duration::from_millis(250);
        let gap = wall(later).duration_since(wall(now)).unwrap();
        assert_eq!(gap, Duration::from_millis(250));
        let wall_now = wall(now);
        let real = SystemTime::now();
        let skew = real
            .duration_since(wall_now)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "{skew:?}");
    }
}
