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
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::util::sync::lock;

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

/// What a detector knows of one route template, worked out once when the template is first
/// seen, so that a request looks nothing up in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    /// The route's number among its interner's routes ([`RouteInfo::NO_INDEX`] for a name no
    /// request has, such as [`CLIENT`]); requests finished are counted by it.
    pub(crate) index: u32,
    /// The allocator's route slot (0 when memory is not tracked).
    pub(crate) slot: u32,
    /// The route is [ignored](crate::LeakDetectorBuilder::ignore_route).
    pub(crate) ignored: bool,
    /// The route [streams](crate::LeakDetectorBuilder::streaming_route): its requests may stay
    /// open past `max_request_age`.
    pub(crate) streaming: bool,
    /// The name is a unit of work's ([`LeakDetector::scope`](crate::LeakDetector::scope)), not
    /// an HTTP route's: decided when the name is first seen.
    pub(crate) unit: bool,
}

impl RouteInfo {
    /// The index of a name that is not a request's route.
    pub(crate) const NO_INDEX: u32 = u32::MAX;

    /// A name that no request has ([`CLIENT`]): not counted, no memory slot.
    pub(crate) const NONE: RouteInfo = RouteInfo {
        index: Self::NO_INDEX,
        slot: 0,
        ignored: false,
        streaming: false,
        unit: false,
    };
}

/// Which routes the configuration ignores or lets stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoutePolicy {
    pub(crate) ignored: Vec<Box<str>>,
    pub(crate) streaming: Vec<Box<str>>,
}

impl RoutePolicy {
    /// What is known of `template`, numbered `index`, with allocator slot `slot`.
    fn info(&self, template: &str, index: u32, slot: u32, unit: bool) -> RouteInfo {
        let listed = |list: &[Box<str>]| list.iter().any(|r| &**r == template);
        RouteInfo {
            index,
            slot,
            ignored: listed(&self.ignored),
            streaming: listed(&self.streaming),
            unit,
        }
    }
}

/// Interns route templates so that a request costs a lookup, not an allocation, and numbers
/// them: each route gets an index, its allocator slot when memory is tracked, and the
/// configuration's verdict on it.
pub(crate) struct Interner {
    routes: DashMap<Arc<str>, RouteInfo>,
    /// The template of each index handed out, in order.
    by_index: Mutex<Vec<Arc<str>>>,
    /// The template of each route slot handed out.
    names: DashMap<u32, Arc<str>>,
    memory: bool,
    policy: RoutePolicy,
    /// [`OVERFLOW`], interned up front: it has an index however many templates came before.
    overflow: (Route, RouteInfo),
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
/// A template this thread resolved recently, keyed by the address of axum's string.
struct Recent {
    interner: u64,
    /// axum's own string, kept alive by this clone: while it is cached its address cannot be
    /// reused for another template, so the address alone identifies it.
    matched: axum::extract::MatchedPath,
    route: Arc<str>,
    info: RouteInfo,
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
    pub(crate) fn new(memory: bool, policy: RoutePolicy) -> Self {
        // `OVERFLOW` is index 0, without a memory slot.
        let overflow = (Route::Static(OVERFLOW), policy.info(OVERFLOW, 0, 0, false));
        Interner {
            routes: DashMap::new(),
            by_index: Mutex::new(vec![Arc::from(OVERFLOW)]),
            names: DashMap::new(),
            memory,
            policy,
            overflow,
            #[cfg(feature = "axum")]
            id: NEXT_INTERNER.fetch_add(1, Ordering::Relaxed),
        }
    }

    #[cfg(feature = "axum")]
    /// As [`intern`](Self::intern) for axum's `MatchedPath`, first asking this thread's cache
    /// of recent templates. A hit needs the same interner and the same string, which the cache
    /// keeps alive.
    pub(crate) fn intern_matched(
        &self,
        matched: &axum::extract::MatchedPath,
    ) -> (Route, RouteInfo) {
        let address = matched.as_str().as_ptr() as usize;
        let index = (address >> 4) % RECENT_SLOTS;
        let hit = RECENT
            .try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                let entry = recent[index].as_ref()?;
                let same = entry.interner == self.id
                    && entry.matched.as_str().as_ptr() as usize == address
                    && entry.matched.as_str().len() == matched.as_str().len();
                same.then(|| (Route::Interned(entry.route.clone()), entry.info))
            })
            .ok()
            .flatten();
        if let Some(hit) = hit {
            return hit;
        }
        let (route, info) = self.intern(matched.as_str());
        if let Route::Interned(shared) = &route {
            let _ = RECENT.try_with(|recent| {
                if let Ok(mut recent) = recent.try_borrow_mut() {
                    recent[index] = Some(Recent {
                        interner: self.id,
                        matched: matched.clone(),
                        route: shared.clone(),
                        info,
                    });
                }
            });
        }
        (route, info)
    }

    /// The shared name of a template and what is known of it.
    pub(crate) fn intern(&self, template: &str) -> (Route, RouteInfo) {
        self.intern_as(template, false)
    }

    /// The shared name of a unit of work and what is known of it. Units and routes share one
    /// table of names: a name first seen as a route stays one.
    pub(crate) fn intern_unit(&self, name: &str) -> (Route, RouteInfo) {
        self.intern_as(name, true)
    }

    fn intern_as(&self, template: &str, unit: bool) -> (Route, RouteInfo) {
        if let Some(entry) = self.routes.get(template) {
            return (Route::Interned(entry.key().clone()), *entry.value());
        }
        if self.routes.len() >= MAX_ROUTES {
            return self.overflow.clone();
        }
        let shared: Arc<str> = Arc::from(template);
        // Numbered under the entry's lock, so that a template racing in on two threads gets one
        // index and one slot.
        let entry = self.routes.entry(shared.clone()).or_insert_with(|| {
            let slot = if self.memory {
                crate::alloc::new_route_slot()
            } else {
                0
            };
            let index = self.push_name(shared);
            self.policy.info(template, index, slot, unit)
        });
        let (shared, info) = (entry.key().clone(), *entry.value());
        drop(entry);
        if info.slot != 0 {
            self.names
                .entry(info.slot)
                .or_insert_with(|| shared.clone());
        }
        (Route::Interned(shared), info)
    }

    fn push_name(&self, name: Arc<str>) -> u32 {
        let mut names = lock(&self.by_index);
        names.push(name);
        (names.len() - 1) as u32
    }

    /// Whether `name` is a unit of work's rather than a route's.
    pub(crate) fn is_unit(&self, name: &str) -> bool {
        self.routes.get(name).is_some_and(|entry| entry.unit)
    }

    /// The template numbered `index`.
    pub(crate) fn name_at(&self, index: u32) -> Option<Arc<str>> {
        lock(&self.by_index).get(index as usize).cloned()
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
}

/// Names the route of a request; returns it with what the interner knows of it.
pub(crate) fn resolve<B>(
    request: &http::Request<B>,
    route_fn: Option<&RouteFn>,
    interner: &Interner,
) -> (Route, RouteInfo) {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return interner.intern_matched(matched);
    }
    if let Some(route_fn) = route_fn {
        if let Some(route) = route_fn(request.method(), request.uri()) {
            return interner.intern(route);
        }
    }
    interner.intern(UNMATCHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_returns_the_same_allocation() {
        let interner = Interner::new(false, RoutePolicy::default());
        let (a, _) = interner.intern("/users/{id}");
        let (b, _) = interner.intern("/users/{id}");
        match (a, b) {
            (Route::Interned(a), Route::Interned(b)) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("expected interned routes, got {other:?}"),
        }
    }

    #[cfg(feature = "axum")]
    #[test]
    fn the_cache_answers_only_for_the_same_interner_and_string() {
        use axum::extract::MatchedPath;
        use axum::routing::get;
        use tower::ServiceExt;

        // A real `MatchedPath`, as axum's router hands it to a layer.
        let (sender, receiver) = std::sync::mpsc::channel::<MatchedPath>();
        let app = axum::Router::new()
            .route("/users/{id}", get(|| async { "" }))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let sender = sender.clone();
                    async move {
                        let matched = request.extensions().get::<MatchedPath>().cloned();
                        sender.send(matched.unwrap()).unwrap();
                        next.run(request).await
                    }
                },
            ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let request = || http::Request::get("/users/7").body(axum::body::Body::empty());
        runtime
            .block_on(app.clone().oneshot(request().unwrap()))
            .unwrap();
        let matched = receiver.recv().unwrap();

        let memory = Interner::new(true, RoutePolicy::default());
        let other = Interner::new(true, RoutePolicy::default());
        let (a, info_a) = memory.intern_matched(&matched);
        let (b, info_b) = memory.intern_matched(&matched);
        assert_eq!((a.as_str(), info_a), (b.as_str(), info_b));
        assert_eq!(a.as_str(), "/users/{id}");
        // Another detector's interner has its own slots, even for the same string.
        let (_, info_other) = other.intern_matched(&matched);
        assert_eq!(other.intern("/users/{id}").1, info_other);
        assert_ne!(info_other.slot, info_a.slot);
    }

    #[test]
    fn the_policy_is_worked_out_once_per_route() {
        let policy = RoutePolicy {
            ignored: vec!["/health".into()],
            streaming: vec!["/events".into()],
        };
        let interner = Interner::new(false, policy);
        let (_, health) = interner.intern("/health");
        let (_, events) = interner.intern("/events");
        let (_, users) = interner.intern("/users");
        assert!(health.ignored && !health.streaming);
        assert!(events.streaming && !events.ignored);
        assert!(!users.ignored && !users.streaming);
        let indexes = [health.index, events.index, users.index];
        for index in indexes {
            assert_ne!(index, RouteInfo::NO_INDEX);
        }
        assert_eq!(interner.name_at(users.index).as_deref(), Some("/users"));
        assert_eq!(
            interner.intern("/users").1,
            users,
            "the same route, the same info"
        );
    }

    #[test]
    fn route_slots_name_their_templates() {
        let interner = Interner::new(true, RoutePolicy::default());
        let (_, info) = interner.intern("/users/{id}");
        let slot = info.slot;
        assert_ne!(slot, 0);
        assert_eq!(
            interner.intern("/users/{id}").1.slot,
            slot,
            "one slot per template"
        );
        assert_eq!(interner.name_of(slot).as_deref(), Some("/users/{id}"));
        assert_eq!(interner.name_of(0), None);
    }

    #[test]
    fn interner_is_bounded() {
        let interner = Interner::new(false, RoutePolicy::default());
        for i in 0..MAX_ROUTES {
            interner.intern(&format!("/r/{i}"));
        }
        let (overflow, info) = interner.intern("/one/more");
        assert_eq!(overflow.as_str(), OVERFLOW);
        assert_eq!(interner.name_at(info.index).as_deref(), Some(OVERFLOW));
        assert_eq!(interner.intern("/r/7").0.as_str(), "/r/7");
    }
}
