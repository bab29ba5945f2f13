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
//! per request *and* by more than twice the largest drop of its last [`NOISE_WINDOWS`] windows:
//! memory that goes up and down — a cache of entries of varying size — does not grow steadily
//! past its own swings.
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

/// Windows in a row that must grow for a route to be leaking.
pub(crate) const GROWTH_WINDOWS: usize = 4;

/// Windows whose drops set the noise a leak's growth must exceed.
pub(crate) const NOISE_WINDOWS: usize = 16;

/// One route's retained bytes, window by window.
#[derive(Debug, Default)]
pub(crate) struct RetainedGrowth {
    /// The judged count and retained bytes at the last window boundary; `None` during the
    /// first window (the warm-up).
    boundary: Option<(u64, i64)>,
    /// Requests and growth of the last windows, oldest first ([`NOISE_WINDOWS`] at most).
    windows: VecDeque<(u64, i64)>,
    /// The judged count and retained bytes at doubling judged counts, oldest first
    /// ([`GROWTH_WINDOWS`] at most).
    doublings: VecDeque<(u64, i64)>,
    /// The judged count last observed, and how many observations saw it change.
    last_judged: u64,
    changes: u32,
}

/// Observations with new requests after which a route's traffic counts as steady: it comes
/// spread over sweeps, so its windows will close, rather than in one burst between two.
pub(crate) const STEADY_AFTER: u32 = 3;

/// Growth that looks like a leak: over the last [`GROWTH_WINDOWS`] windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Steady {
    /// Bytes the route's retained memory grew by.
    pub(crate) bytes: i64,
    /// Requests judged meanwhile.
    pub(crate) requests: u64,
}

impl RetainedGrowth {
    /// Records the route's `retained` bytes once `judged` requests of it have been judged,
    /// closing a window when `window` requests have been judged since the last one closed.
    pub(crate) fn observe(&mut self, judged: u64, retained: i64, window: u64) {
        if judged != self.last_judged {
            self.last_judged = judged;
            self.changes = self.changes.saturating_add(1);
        }
        match self.boundary {
            None if judged >= window => self.boundary = Some((judged, retained)),
            None => return,
            Some((at, bytes)) if judged.saturating_sub(at) >= window => {
                if self.windows.len() == NOISE_WINDOWS {
                    self.windows.pop_front();
                }
                self.windows.push_back((judged - at, retained - bytes));
                self.boundary = Some((judged, retained));
            }
            Some(_) => return,
        }
        let doubled = self
            .doublings
            .back()
            .is_none_or(|&(at, _)| judged >= 2 * at);
        if doubled {
            if self.doublings.len() == GROWTH_WINDOWS {
                self.doublings.pop_front();
            }
            self.doublings.push_back((judged, retained));
        }
    }

    /// Whether the route's requests came spread over [`STEADY_AFTER`] sweeps or more, so that
    /// its growth can be read window by window.
    pub(crate) fn is_steady(&self) -> bool {
        self.changes >= STEADY_AFTER
    }

    /// Whether the route's retained bytes grew lately by at least `per_request` bytes per
    /// request (one at least): over the window closed last, by more than twice the largest drop
    /// of the recent windows; or, before any window closed, since the warm-up ended, once a
    /// quarter of a window of requests has been judged since. `retained` is what the route's
    /// judged requests hold now, once `judged` of them have been.
    pub(crate) fn grew_lately(
        &self,
        judged: u64,
        retained: i64,
        window: u64,
        per_request: u64,
    ) -> bool {
        let per_request = per_request.max(1);
        if let Some(&(requests, growth)) = self.windows.back() {
            let noise = 2 * self
                .windows
                .iter()
                .map(|&(_, g)| (-g).max(0))
                .max()
                .unwrap_or(0);
            return growth >= (requests * per_request) as i64 && growth > noise;
        }
        match self.boundary {
            Some((at, bytes)) if judged.saturating_sub(at) >= (window / 4).max(1) => {
                retained - bytes >= ((judged - at) * per_request) as i64
            }
            _ => false,
        }
    }

    /// The growth over the last [`GROWTH_WINDOWS`] windows, when each of them grew by at least
    /// one byte per request and by more than twice the largest drop of the recent windows; else
    /// over the last doubling spans, when each of those did.
    pub(crate) fn steady(&self) -> Option<Steady> {
        let largest_drop = self.windows.iter().map(|&(_, g)| (-g).max(0)).max();
        let noise = 2 * largest_drop.unwrap_or(0);
        let windows = self.windows.iter().rev().take(GROWTH_WINDOWS).copied();
        let spans = self
            .doublings
            .iter()
            .zip(self.doublings.iter().skip(1))
            .map(|(&(a, ra), &(b, rb))| (b - a, rb - ra));
        let full_spans = self.doublings.len() == GROWTH_WINDOWS;
        (self.windows.len() >= GROWTH_WINDOWS)
            .then(|| all_grew(windows, noise))
            .flatten()
            .or_else(|| full_spans.then(|| all_grew(spans, noise)).flatten())
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

    /// Feeds `retained(i)` after every `step` requests, `n` times, with a window of 100.
    fn feed(n: u64, step: u64, retained: impl Fn(u64) -> i64) -> RetainedGrowth {
        let mut growth = RetainedGrowth::default();
        for i in 1..=n {
            growth.observe(i * step, retained(i * step), 100);
        }
        growth
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
        assert!(growth.windows.iter().any(|&(_, g)| g == 0));
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
        // 48 bytes per request on top of swings of up to 12 KB: 4.8 KB per window is not
        // enough to tell, window by window; spans of 200 to 800 requests are.
        let noisy = |judged: u64| judged as i64 * 48 + ((judged * 7919) % 13) as i64 * 1_000;
        assert_eq!(feed(70, 10, noisy).steady(), None);
        let steady = feed(200, 10, noisy).steady().unwrap();
        assert_eq!(steady.requests, 1400, "found over doubling spans");
        // 480 bytes per request shows window by window.
        let strong = |judged: u64| judged as i64 * 480 + ((judged * 7919) % 13) as i64 * 1_000;
        assert_eq!(feed(200, 10, strong).steady().unwrap().requests, 400);
    }

    #[test]
    fn lately_growing_by_what_each_request_keeps() {
        // 2 KiB per request for good, read every 10 requests with a window of 100.
        let keep = |judged: u64| judged as i64 * 2048;
        let leak = feed(50, 10, keep);
        assert!(leak.grew_lately(500, keep(500), 100, 1024));
        assert!(
            !leak.grew_lately(500, keep(500), 100, 4096),
            "not by more than it keeps"
        );
        // Before a window closed: the span since the warm-up, once a quarter window long.
        let early = feed(13, 10, keep);
        assert!(early.windows.is_empty());
        assert!(
            early.grew_lately(130, keep(130), 100, 1024),
            "30 past the warm-up"
        );
        assert!(
            !feed(12, 10, keep).grew_lately(120, keep(120), 100, 1024),
            "20 past it: too soon"
        );
        // A cache's own bookkeeping growing by 300 bytes per request is not 1 KiB per request.
        let slow = |judged: u64| 200_000 + judged as i64 * 300;
        assert!(!feed(50, 10, slow).grew_lately(500, slow(500), 100, 1024));
        // A plateau does not grow at all.
        let plateau = |judged: u64| judged.min(100) as i64 * 2048;
        assert!(!feed(50, 10, plateau).grew_lately(500, plateau(500), 100, 1));
        // Traffic counts as steady once it came over a few sweeps.
        assert!(feed(3, 10, keep).is_steady());
        assert!(!feed(1, 400, keep).is_steady());
    }

    #[test]
    fn windows_close_on_requests_not_calls() {
        let mut growth = RetainedGrowth::default();
        growth.observe(99, 0, 100);
        assert_eq!(growth.boundary, None, "still warming up");
        growth.observe(100, 10, 100);
        assert_eq!(growth.boundary, Some((100, 10)));
        growth.observe(150, 20, 100);
        assert!(growth.windows.is_empty());
        // A burst: one window, however many requests.
        growth.observe(1_000, 1_000, 100);
        assert_eq!(growth.windows, [(900, 990)]);
    }
}
