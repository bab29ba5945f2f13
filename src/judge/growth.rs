//! Small leaks: a route's retained bytes judged against its number of requests.
//!
//! Witnesses (see [`memory`](super::memory)) catch requests that each keep at least
//! `memory_threshold` bytes. A route whose every request keeps a few bytes for good — a key
//! added to a global set, a small struct pushed onto a list, a buffer leaked with
//! `mem::forget` — keeps too little per request to make witnesses, yet grows without bound. So
//! the route's *retained* bytes (what its judged requests still hold: its live bytes less what
//! its requests in flight or in their grace period hold) are read after every window of
//! `memory_window` judged requests, and compared with the number of requests:
//!
//! - a leak grows in every window, by at least a byte per request;
//! - a bounded cache, a pool, thread-local buffers and one-time initialisation grow for a while
//!   (the first window is a warm-up and never counts) and then stop, or go up and down as
//!   entries of different sizes come and go.
//!
//! A route is leaking when each of its last [`GROWTH_WINDOWS`] windows grew by at least one byte
//! per request *and* by more than twice the largest fall of its last [`NOISE_WINDOWS`] windows:
//! memory that goes up and down — a cache of entries of varying size — does not grow steadily
//! past its own swings. A fall is read at every sweep (from a level two sweeps in a row saw),
//! not only between window boundaries: a buffer that fills and drains with a period near the
//! window (a batch exporter's queue) looks the same at every boundary, but its drain shows as a
//! fall from the window's peak, so its memory never grows past its swings.
//!
//! A list of small structs kept by value grows differently: its buffer doubles now and then, so
//! most windows see no growth at all. So the retained bytes are also read at doubling request
//! counts (the end of the warm-up, then each time the route has been judged twice as many
//! times), and a route is leaking too when each of the last [`GROWTH_WINDOWS`] − 1 of those
//! spans grew the same way (at least a byte per request, past the swings): a buffer that
//! doubles as requests double grows in every span, a plateau or a few late steps do not.
//!
//! Like the witnesses, this counts requests, not seconds; a window can only close at a sweep,
//! so a burst of requests between two sweeps is one window however many requests it holds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Windows in a row that must grow for a route to be leaking.
pub(crate) const GROWTH_WINDOWS: usize = 4;

/// Windows whose drops set the noise a leak's growth must exceed.
pub(crate) const NOISE_WINDOWS: usize = 16;

/// One route's retained bytes, window by window.
#[derive(Debug, Default)]
pub(crate) struct RetainedGrowth {
    /// The judged count and retained bytes at the last window boundary, and when it was
    /// crossed; `None` during the first window (the warm-up).
    boundary: Option<(u64, i64, Instant)>,
    /// The highest level the retained bytes held since the last boundary, and the largest fall
    /// from such a peak. A level counts once two sweeps in a row saw it (a peak is the lower of
    /// two readings, a trough the higher): a request that moves between the reads of one sweep
    /// makes a one-sweep blip, not a swing.
    peak: i64,
    fall: i64,
    /// The previous reading, and the level the last two saw (the lower).
    last: Option<i64>,
    level: i64,
    /// The last windows, oldest first ([`NOISE_WINDOWS`] at most).
    windows: VecDeque<Window>,
    /// The windows that grew in a row up to the last one closed (each by a byte per request
    /// and past the swings as they were when it closed): when the first opened, and their
    /// total.
    streak: Option<(Instant, Steady)>,
    /// The judged count and retained bytes at doubling judged counts, oldest first
    /// ([`GROWTH_WINDOWS`] at most).
    doublings: VecDeque<(u64, i64)>,
    /// The judged count last observed, how many observations saw it change, and how many in a
    /// row since the last change did not.
    last_judged: u64,
    changes: u32,
    unchanged: u32,
}

/// One closed window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    /// Requests judged in it.
    requests: u64,
    /// What the retained bytes grew by, boundary to boundary.
    growth: i64,
    /// The largest fall of the retained bytes from a peak within it, sweep by sweep.
    fall: i64,
    /// When it opened.
    opened: Instant,
}

/// Observations with new requests after which a route's traffic counts as steady: it comes
/// spread over sweeps, so its windows will close, rather than in one burst between two.
pub(crate) const STEADY_AFTER: u32 = 3;

/// Growth that looks like a leak: over the last [`GROWTH_WINDOWS`] windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Steady {
    /// Bytes the route's retained memory grew by.
    pub(crate) bytes: i64,
    /// Requests judged meanwhile.
    pub(crate) requests: u64,
}

impl RetainedGrowth {
    /// Records the route's `retained` bytes once `judged` requests of it have been judged,
    /// at `now`, closing a window when `window` requests have been judged since the last one
    /// closed.
    pub(crate) fn observe(&mut self, judged: u64, retained: i64, window: u64, now: Instant) {
        if judged != self.last_judged {
            self.last_judged = judged;
            self.changes = self.changes.saturating_add(1);
            self.unchanged = 0;
        } else {
            self.unchanged = self.unchanged.saturating_add(1);
        }
        // The level two sweeps in a row saw: what boundaries and peaks are read from.
        let level = match self.last.replace(retained) {
            Some(last) => {
                self.peak = self.peak.max(last.min(retained));
                self.fall = self.fall.max(self.peak.saturating_sub(last.max(retained)));
                last.min(retained)
            }
            None => retained,
        };
        self.level = level;
        match self.boundary {
            None if judged >= window => {}
            None => return,
            Some((at, bytes, opened)) if judged.saturating_sub(at) >= window => {
                if self.windows.len() == NOISE_WINDOWS {
                    self.windows.pop_front();
                }
                let closed = Window {
                    requests: judged - at,
                    growth: level - bytes,
                    fall: self.fall,
                    opened,
                };
                self.windows.push_back(closed);
                let grew = closed.growth >= closed.requests as i64 && closed.growth > self.noise();
                self.streak = grew.then(|| {
                    let (since, before) = self.streak.unwrap_or((opened, Steady::default()));
                    let total = Steady {
                        bytes: before.bytes + closed.growth,
                        requests: before.requests + closed.requests,
                    };
                    (since, total)
                });
            }
            Some(_) => return,
        }
        self.boundary = Some((judged, level, now));
        // The next window's peak is a level two of its own sweeps see.
        (self.peak, self.fall) = (i64::MIN, 0);
        let doubled = self
            .doublings
            .back()
            .is_none_or(|&(at, _)| judged >= 2 * at);
        if doubled {
            if self.doublings.len() == GROWTH_WINDOWS {
                self.doublings.pop_front();
            }
            self.doublings.push_back((judged, level));
        }
    }

    /// Twice the largest fall of the retained bytes over the recent windows and the one still
    /// open, boundary to boundary or from a peak between them: what growth must exceed to be
    /// more than the route's own swings.
    fn noise(&self) -> i64 {
        let falls = self.windows.iter().map(|w| w.fall.max(-w.growth));
        2 * falls.chain([self.fall]).max().unwrap_or(0).max(0)
    }

    /// Whether the route's requests came spread over [`STEADY_AFTER`] sweeps or more, so that
    /// its growth can be read window by window.
    pub(crate) fn is_steady(&self) -> bool {
        self.changes >= STEADY_AFTER
    }

    /// Whether the route's traffic has stopped: [`STEADY_AFTER`] observations in a row saw no
    /// new request judged. Growth that has no window to be read in will get none: its total
    /// must do, as for a burst.
    pub(crate) fn is_quiet(&self) -> bool {
        self.unchanged >= STEADY_AFTER
    }

    /// Whether the route's retained bytes grew lately by at least `per_request` bytes per
    /// request (one at least) and past its swings: over the window closed last; or, before any
    /// window closed, since the warm-up ended, once a quarter of a window of requests has been
    /// judged since. `None` before that: nothing to read yet. Read from the level the last two
    /// observations saw, once `judged` requests have been judged.
    pub(crate) fn grew_lately(&self, judged: u64, window: u64, per_request: u64) -> Option<bool> {
        let per_request = per_request.max(1);
        if let Some(last) = self.windows.back() {
            let grew = last.growth >= (last.requests * per_request) as i64;
            return Some(grew && last.growth > self.noise());
        }
        match self.boundary {
            Some((at, bytes, _)) if judged.saturating_sub(at) >= (window / 4).max(1) => {
                let growth = self.level - bytes;
                let grew = growth >= ((judged - at) * per_request) as i64;
                Some(grew && growth > self.noise())
            }
            _ => None,
        }
    }

    /// The growth over the last [`GROWTH_WINDOWS`] windows, when each of them grew by at least
    /// one byte per request and past the route's swings; else over the last doubling spans,
    /// when each of those did.
    pub(crate) fn steady(&self) -> Option<Steady> {
        let noise = self.noise();
        let windows = self.windows.iter().rev().take(GROWTH_WINDOWS);
        let spans = self
            .doublings
            .iter()
            .zip(self.doublings.iter().skip(1))
            .map(|(&(a, ra), &(b, rb))| (b - a, rb - ra));
        let full_spans = self.doublings.len() == GROWTH_WINDOWS;
        (self.windows.len() >= GROWTH_WINDOWS)
            .then(|| all_grew(windows.map(|w| (w.requests, w.growth)), noise))
            .flatten()
            .or_else(|| full_spans.then(|| all_grew(spans, noise)).flatten())
    }

    /// The growth over the windows that grew in a row up to the last one closed, each by at
    /// least one byte per request and past the route's swings (as they were when it closed),
    /// and for how long: from the first one's opening to `now`. `None` unless the last window
    /// grew and past the swings as they are now. What memory reclaimed on a timer (an upkeep,
    /// a flush) must outlast.
    pub(crate) fn growing_for(&self, now: Instant) -> Option<(Steady, Duration)> {
        let (since, steady) = self.streak?;
        let last = self.windows.back()?;
        (last.growth > self.noise()).then(|| (steady, now.saturating_duration_since(since)))
    }
}

/// The total of `spans` (requests, growth) when each grew by at least a byte per request and by
/// more than `noise`.
fn all_grew(spans: impl Iterator<Item = (u64, i64)>, noise: i64) -> Option<Steady> {
    let mut steady = Steady {
        bytes: 0,
        requests: 0,
    };
    for (requests, growth) in spans {
        if growth < requests as i64 || growth <= noise {
            return None;
        }
        steady.bytes += growth;
        steady.requests += requests;
    }
    Some(steady)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `retained(i)` after every `step` requests, `n` times, a second apart, with a
    /// window of 100.
    fn feed(n: u64, step: u64, retained: impl Fn(u64) -> i64) -> RetainedGrowth {
        let mut growth = RetainedGrowth::default();
        for i in 1..=n {
            growth.observe(i * step, retained(i * step), 100, at(i));
        }
        growth
    }

    /// `i` seconds after a fixed start.
    fn at(i: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_secs(i)
    }

    #[test]
    fn a_byte_per_request_for_good_is_a_leak() {
        let growth = feed(60, 10, |judged| 5_000 + judged as i64 * 48);
        let steady = growth.steady().unwrap();
        assert_eq!(steady.requests, 400);
        assert_eq!(steady.bytes, 400 * 48);
        assert!(feed(60, 10, |judged| judged as i64).steady().is_some());
    }

    #[test]
    fn a_buffer_doubling_as_requests_double_is_a_leak() {
        // A `Vec` of 24-byte structs: capacity doubles when full.
        let list = |judged: u64| (judged.next_power_of_two() * 24) as i64;
        let growth = feed(100, 10, list);
        let steady = growth.steady().unwrap();
        // Read at 100 (the warm-up's end), 200, 400 and 800 requests.
        assert_eq!(steady.requests, 700);
        assert_eq!(steady.bytes, (1024 - 128) * 24);
        // Its windows alone do not all grow.
        assert!(growth.windows.iter().any(|w| w.growth == 0));
    }

    #[test]
    fn plateaus_steps_and_swings_are_not() {
        // A cache filling up to 300 entries of 64 bytes, then full.
        let cache = |judged: u64| judged.min(300) as i64 * 64;
        assert_eq!(feed(100, 10, cache).steady(), None);
        // One-time initialisation and thread-local buffers: steps at the start.
        let steps = |judged: u64| if judged > 5 { 1 << 20 } else { 0 };
        assert_eq!(feed(100, 10, steps).steady(), None);
        // Entries of different sizes coming and going around a plateau.
        let swings = |judged: u64| 100_000 + ((judged * 7919) % 13) as i64 * 1_000;
        assert_eq!(feed(200, 10, swings).steady(), None);
        // Under a byte per request.
        assert_eq!(feed(100, 10, |judged| judged as i64 / 2).steady(), None);
    }

    #[test]
    fn a_leak_must_outgrow_the_swings_around_it() {
        // 48 bytes per request on top of swings of up to 12 KB, each level held for 50 requests
        // (5 sweeps): 4.8 KB per window is not enough to tell, window by window, nor are spans
        // of 200 to 800 requests (9.6 KB at first); spans of 800 to 3200 requests are.
        let swing = |judged: u64| ((judged / 50 * 7919) % 13) as i64 * 1_000;
        let noisy = |judged: u64| judged as i64 * 48 + swing(judged);
        assert_eq!(feed(70, 10, noisy).steady(), None);
        assert_eq!(feed(300, 10, noisy).steady(), None);
        let steady = feed(640, 10, noisy).steady().unwrap();
        assert_eq!(steady.requests, 5600, "found over doubling spans");
        // 480 bytes per request shows window by window.
        let strong = |judged: u64| judged as i64 * 480 + swing(judged);
        assert_eq!(feed(200, 10, strong).steady().unwrap().requests, 400);
    }

    #[test]
    fn lately_growing_by_what_each_request_keeps() {
        // 2 KiB per request for good, read every 10 requests with a window of 100.
        let keep = |judged: u64| judged as i64 * 2048;
        let leak = feed(50, 10, keep);
        assert_eq!(leak.grew_lately(500, 100, 1024), Some(true));
        assert!(
            leak.grew_lately(500, 100, 4096) == Some(false),
            "not by more than it keeps"
        );
        // Before a window closed: the span since the warm-up, once a quarter window long.
        let early = feed(13, 10, keep);
        assert!(early.windows.is_empty());
        assert!(
            early.grew_lately(130, 100, 1024) == Some(true),
            "30 past the warm-up"
        );
        assert!(
            feed(12, 10, keep).grew_lately(120, 100, 1024).is_none(),
            "20 past it: too soon"
        );
        // A cache's own bookkeeping growing by 300 bytes per request is not 1 KiB per request.
        let slow = |judged: u64| 200_000 + judged as i64 * 300;
        assert_eq!(feed(50, 10, slow).grew_lately(500, 100, 1024), Some(false));
        // A plateau does not grow at all.
        let plateau = |judged: u64| judged.min(100) as i64 * 2048;
        assert_eq!(feed(50, 10, plateau).grew_lately(500, 100, 1), Some(false));
        // Traffic counts as steady once it came over a few sweeps, and as stopped once a few
        // sweeps saw no new request.
        assert!(feed(3, 10, keep).is_steady());
        assert!(!feed(1, 400, keep).is_steady());
        let mut stopped = feed(15, 10, keep);
        assert!(!stopped.is_quiet());
        for i in 0..3 {
            stopped.observe(150, keep(150), 100, at(16 + i));
        }
        assert!(stopped.is_quiet());
    }

    #[test]
    fn a_buffer_that_fills_and_drains_near_the_window_is_not_growth() {
        // A batch exporter's queue: 300 bytes per request, drained every 256 requests, read
        // every 10 requests with a window of 100 — and with a window of 256, where every
        // boundary falls at the same point of the cycle and sees the same level.
        for window in [100, 256] {
            let mut growth = RetainedGrowth::default();
            let mut lately = false;
            for i in 1..=600u64 {
                let judged = i * 10;
                let retained = (judged % 256) as i64 * 300;
                growth.observe(judged, retained, window, at(i));
                // Once it has drained once, its filling never reads as growth.
                if judged > 512 {
                    lately |= growth.grew_lately(judged, window, 150) == Some(true);
                }
            }
            assert_eq!(growth.steady(), None, "window {window}");
            assert_eq!(growth.growing_for(at(600)), None, "window {window}");
            assert!(!lately, "never grew past its swings, window {window}");
        }
        // The same buffer beside a leak of 2 KiB per request: the leak outgrows the swings.
        let both = |judged: u64| (judged % 256) as i64 * 300 + judged as i64 * 2048;
        assert!(feed(100, 10, both).steady().is_some());
    }

    #[test]
    fn a_one_sweep_blip_is_not_a_swing() {
        // 4 KiB per request, read every 4 requests; every seventh reading is off by 64 KiB
        // (requests that moved between the reads of one sweep), up or down.
        let blips = |up: bool| {
            let mut growth = RetainedGrowth::default();
            for i in 1..=400u64 {
                let off = if i % 7 == 0 { 64 << 10 } else { 0 };
                let retained = (i * 4) as i64 * 4096 + if up { off } else { -off };
                growth.observe(i * 4, retained, 64, at(i));
            }
            growth
        };
        for up in [true, false] {
            let growth = blips(up);
            assert_eq!(growth.noise(), 0, "up: {up}");
            assert!(growth.steady().is_some());
        }
        // A plateau with buffers in flight at some sweeps (a file server's 64 KiB reads), at a
        // window boundary too: never growth.
        let mut growth = RetainedGrowth::default();
        for i in 1..=400u64 {
            // The first at a window boundary (every 16 sweeps), before any fall was seen.
            let in_flight = if i == 48 || i % 23 == 0 { 200_000 } else { 0 };
            growth.observe(i * 4, 100_000 + in_flight, 64, at(i));
            assert_ne!(growth.grew_lately(i * 4, 64, 68), Some(true), "sweep {i}");
        }
        assert_eq!(growth.steady(), None);
    }

    #[test]
    fn growth_is_timed_from_the_first_window_of_its_streak() {
        // Flat for 20 windows, then 64 bytes per request: the streak starts with the first
        // window that grew.
        let late = |judged: u64| judged.saturating_sub(2_000) as i64 * 64;
        let growth = feed(400, 10, late);
        let (steady, lasted) = growth.growing_for(at(400)).unwrap();
        // Longer than the windows kept for the swings (16); read from levels two observations
        // saw, a step (10 requests) behind.
        assert_eq!(steady.requests, 2_000);
        assert_eq!(steady.bytes, 1_990 * 64);
        // A second per 10 requests: the streak's first window opened at 2 000 requests.
        assert_eq!(lasted, Duration::from_secs(200));
        // Memory reclaimed every 1 000 requests never makes a streak: its falls are its swings.
        let reclaimed = |judged: u64| (judged % 1_000) as i64 * 64;
        assert_eq!(feed(350, 10, reclaimed).growing_for(at(350)), None);
    }

    #[test]
    fn windows_close_on_requests_not_calls() {
        let mut growth = RetainedGrowth::default();
        growth.observe(99, 0, 100, at(1));
        assert_eq!(growth.boundary, None, "still warming up");
        growth.observe(100, 10, 100, at(2));
        // Levels are what two observations in a row saw: the lower.
        assert_eq!(growth.boundary, Some((100, 0, at(2))));
        growth.observe(150, 20, 100, at(3));
        assert!(growth.windows.is_empty());
        // A burst: one window, however many requests; its growth shows from the next
        // observation on, once a second one sees it.
        growth.observe(1_000, 1_000, 100, at(4));
        let window = (growth.windows[0].requests, growth.windows[0].growth);
        assert_eq!((growth.windows.len(), window), (1, (900, 20)));
        growth.observe(1_100, 1_000, 100, at(5));
        assert_eq!(growth.windows[1].growth, 980);
    }
}
