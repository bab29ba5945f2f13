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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
