//! Route names, and the names reports use where there is no route template.
//!
//! A request's route is axum's `MatchedPath` template, else what the builder's
//! [`route_fn`](crate::LeakDetectorBuilder::route_fn) returns, else [`UNMATCHED`]. The raw path
//! is never used: it carries ids and personal data, and as a metric label its cardinality is
//! unbounded. Four names stand in for a template, and can appear in reports, stats and metric
//! labels:
//!
//! | name | when |
//! |---|---|
//! | [`UNMATCHED`] `"<unmatched>"` | no template is known for the request |
//! | [`OVERFLOW`] `"<other>"` | the detector already knows [`MAX_ROUTES`] templates |
//! | [`PROCESS`] `"<process>"` | a report about the whole process ([`HeapGrowth`](crate::LeakKind::HeapGrowth), [`TaskGrowth`](crate::LeakKind::TaskGrowth)) |
//! | [`CLIENT`] `"<client>"` | a report about an outgoing call made outside any request |

#[cfg(feature = "axum")]
use std::cell::RefCell;
use std::fmt;
#[cfg(feature = "axum")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// The route name of a request whose route template is unknown.
pub const UNMATCHED: &str = "<unmatched>";

/// The route name of a request once its detector knows [`MAX_ROUTES`] other templates.
pub const OVERFLOW: &str = "<other>";

/// The route name of reports about the whole process rather than one request.
pub const PROCESS: &str = "<process>";

/// The route name of reports about an outgoing call made outside any request (through
/// [`LeakDetector::client_layer`](crate::LeakDetector::client_layer)).
pub const CLIENT: &str = "<client>";

/// The most distinct route templates one detector tells apart.
pub const MAX_ROUTES: usize = 4096;

/// Maps a request's method and URI to a route template, for services without a router.
///
/// Returning `&'static str` keeps route names a fixed set: a raw path (with its ids and personal
/// data) cannot end up in a report or a metric label by accident.
pub(crate) type RouteFn = dyn Fn(&http::Method, &http::Uri) -> Option<&'static str> + Send + Sync;

/// A route template, shared by a scope and everything it tracks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Static(&'static str),
    Interned(Arc<str>),
}

impl Route {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Route::Static(s) => s,
            Route::Interned(s) => s,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Interns route templates so that a request costs a lookup, not an allocation, and gives each
/// route its slot in the allocator's route table when memory is tracked.
pub(crate) struct Interner {
    routes: DashMap<Arc<str>, u32>,
    /// The template of each route slot handed out.
    names: DashMap<u32, Arc<str>>,
    memory: bool,
    /// Tells this interner's entries apart in the per-thread [`RECENT`] cache.
    #[cfg(feature = "axum")]
    id: u64,
}

#[cfg(feature = "axum")]
/// Source of [`Interner::id`].
static NEXT_INTERNER: AtomicU64 = AtomicU64::new(1);

#[cfg(feature = "axum")]
/// Slots in each thread's cache of recently resolved templates.
const RECENT_SLOTS: usize = 8;

#[cfg(feature = "axum")]
/// A template this thread resolved recently, keyed by the address of the caller's string.
struct Recent {
    interner: u64,
    address: usize,
    route: Arc<str>,
    slot: u32,
}

#[cfg(feature = "axum")]
thread_local! {
    /// axum's `MatchedPath` hands out the same string for every request to a route, so its
    /// address finds the interned route without hashing the template or locking a shard.
    static RECENT: RefCell<[Option<Recent>; RECENT_SLOTS]> = const {
        RefCell::new([const { None }; RECENT_SLOTS])
    };
}

impl Interner {
    /// An interner; with `memory`, each new route also gets an allocator route slot.
    pub(crate) fn new(memory: bool) -> Self {
        Interner {
            routes: DashMap::new(),
            names: DashMap::new(),
            memory,
            #[cfg(feature = "axum")]
            id: NEXT_INTERNER.fetch_add(1, Ordering::Relaxed),
        }
    }

    #[cfg(feature = "axum")]
    /// As [`intern`](Self::intern), first asking this thread's cache of recent templates. A
    /// hit needs the same interner, the same string address and the same text, so a string
    /// freed and another allocated at its address can never be taken for it.
    pub(crate) fn intern_cached(&self, template: &str) -> (Route, u32) {
        let address = template.as_ptr() as usize;
        let index = (address >> 4) % RECENT_SLOTS;
        let hit = RECENT
            .try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                let entry = recent[index].as_ref()?;
                (entry.interner == self.id && entry.address == address && *entry.route == *template)
                    .then(|| (Route::Interned(entry.route.clone()), entry.slot))
            })
            .ok()
            .flatten();
        if let Some(hit) = hit {
            return hit;
        }
        let (route, slot) = self.intern(template);
        if let Route::Interned(shared) = &route {
            let _ = RECENT.try_with(|recent| {
                if let Ok(mut recent) = recent.try_borrow_mut() {
                    recent[index] = Some(Recent {
                        interner: self.id,
                        address,
                        route: shared.clone(),
                        slot,
                    });
                }
            });
        }
        (route, slot)
    }

    /// The shared name of a template and its route slot (0 when memory is not tracked).
    pub(crate) fn intern(&self, template: &str) -> (Route, u32) {
        if let Some(entry) = self.routes.get(template) {
            return (Route::Interned(entry.key().clone()), *entry.value());
        }
        if self.routes.len() >= MAX_ROUTES {
            return (Route::Static(OVERFLOW), 0);
        }
        let slot = if self.memory {
            crate::alloc::new_route_slot()
        } else {
            0
        };
        let shared: Arc<str> = Arc::from(template);
        let entry = self.routes.entry(shared.clone()).or_insert(slot);
        let (shared, slot) = (entry.key().clone(), *entry.value());
        drop(entry);
        if slot != 0 {
            self.names.entry(slot).or_insert_with(|| shared.clone());
        }
        (Route::Interned(shared), slot)
    }

    /// The template that has route slot `slot`.
    pub(crate) fn name_of(&self, slot: u32) -> Option<Arc<str>> {
        self.names.get(&slot).map(|name| name.value().clone())
    }

    /// Every route slot handed out, with its template.
    pub(crate) fn slots(&self) -> Vec<(u32, Arc<str>)> {
        let names = self.names.iter();
        names.map(|e| (*e.key(), e.value().clone())).collect()
    }

    /// A `'static` name needs interning only for its route slot.
    fn name(&self, name: &'static str) -> (Route, u32) {
        if self.memory {
            self.intern(name)
        } else {
            (Route::Static(name), 0)
        }
    }
}

/// Names the route of a request; returns it with its allocator route slot.
pub(crate) fn resolve<B>(
    request: &http::Request<B>,
    route_fn: Option<&RouteFn>,
    interner: &Interner,
) -> (Route, u32) {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return interner.intern_cached(matched.as_str());
    }
    if let Some(route_fn) = route_fn {
        if let Some(route) = route_fn(request.method(), request.uri()) {
            return interner.name(route);
        }
    }
    interner.name(UNMATCHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_returns_the_same_allocation() {
        let interner = Interner::new(false);
        let (a, _) = interner.intern("/users/{id}");
        let (b, _) = interner.intern("/users/{id}");
        match (a, b) {
            (Route::Interned(a), Route::Interned(b)) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("expected interned routes, got {other:?}"),
        }
    }

    #[cfg(feature = "axum")]
    #[test]
    fn the_cache_answers_only_for_the_same_interner_and_text() {
        let memory = Interner::new(true);
        let other = Interner::new(true);
        let template = String::from("/users/{id}");
        let (a, slot_a) = memory.intern_cached(&template);
        let (b, slot_b) = memory.intern_cached(&template);
        assert_eq!((a.as_str(), slot_a), (b.as_str(), slot_b));
        // Another detector's interner has its own slots, even for the same string.
        let (_, slot_other) = other.intern_cached(&template);
        assert_eq!(other.intern("/users/{id}").1, slot_other);
        // A different text at the same address (the string rewritten in place) is not a hit.
        let mut reused = template;
        reused.replace_range(1..6, "posts");
        let (c, _) = memory.intern_cached(&reused);
        assert_eq!(c.as_str(), "/posts/{id}");
    }

    #[test]
    fn route_slots_name_their_templates() {
        let interner = Interner::new(true);
        let (_, slot) = interner.intern("/users/{id}");
        assert_ne!(slot, 0);
        assert_eq!(
            interner.intern("/users/{id}").1,
            slot,
            "one slot per template"
        );
        assert_eq!(interner.name_of(slot).as_deref(), Some("/users/{id}"));
        assert_eq!(interner.name_of(0), None);
    }

    #[test]
    fn interner_is_bounded() {
        let interner = Interner::new(false);
        for i in 0..MAX_ROUTES {
            interner.intern(&format!("/r/{i}"));
        }
        assert_eq!(interner.intern("/one/more").0.as_str(), OVERFLOW);
        assert_eq!(interner.intern("/r/7").0.as_str(), "/r/7");
    }
}
