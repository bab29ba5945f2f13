//! Route names: axum's `MatchedPath` template, else the user's `route_fn`, else `"<unmatched>"`.
//!
//! The raw path is never used: it carries ids and personal data, and as a metric label its
//! cardinality is unbounded.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

use crate::config::Config;

/// The route name of a request whose route is unknown.
pub const UNMATCHED: &str = "<unmatched>";

/// The route name used once [`MAX_ROUTES`] distinct templates have been seen.
pub(crate) const OVERFLOW: &str = "<other>";

/// The most distinct route templates one detector interns.
pub(crate) const MAX_ROUTES: usize = 4096;

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
    memory: bool,
}

impl Interner {
    /// An interner; with `memory`, each new route also gets an allocator route slot.
    pub(crate) fn new(memory: bool) -> Self {
        Interner {
            routes: DashMap::new(),
            memory,
        }
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
        let slot = *self.routes.entry(shared.clone()).or_insert(slot);
        (Route::Interned(shared), slot)
    }

    /// The template that has route slot `slot`.
    pub(crate) fn name_of(&self, slot: u32) -> Option<String> {
        self.routes
            .iter()
            .find(|e| *e.value() == slot)
            .map(|e| e.key().to_string())
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
    config: &Config,
    interner: &Interner,
) -> (Route, u32) {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return interner.intern(matched.as_str());
    }
    if let Some(route_fn) = &config.route_fn {
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
