//! Route names: axum's `MatchedPath` template, else the user's `route_fn`, else `"<unmatched>"`.
//!
//! The raw path is never used: it carries ids and personal data, and as a metric label its
//! cardinality is unbounded.

// Without axum, templates only come from `route_fn` as `&'static str` and nothing is interned.
#![cfg_attr(not(feature = "axum"), allow(dead_code))]

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

/// Interns route templates so that a request costs a lookup, not an allocation.
#[derive(Default)]
pub(crate) struct Interner {
    routes: DashMap<Arc<str>, ()>,
}

impl Interner {
    pub(crate) fn intern(&self, template: &str) -> Route {
        if let Some(entry) = self.routes.get(template) {
            return Route::Interned(entry.key().clone());
        }
        if self.routes.len() >= MAX_ROUTES {
            return Route::Static(OVERFLOW);
        }
        let shared: Arc<str> = Arc::from(template);
        self.routes.entry(shared.clone()).or_insert(());
        Route::Interned(shared)
    }
}

/// Names the route of a request.
pub(crate) fn resolve<B>(
    request: &http::Request<B>,
    config: &Config,
    interner: &Interner,
) -> Route {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return interner.intern(matched.as_str());
    }
    #[cfg(not(feature = "axum"))]
    let _ = interner;
    if let Some(route_fn) = &config.route_fn {
        if let Some(route) = route_fn(request.method(), request.uri()) {
            return Route::Static(route);
        }
    }
    Route::Static(UNMATCHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_returns_the_same_allocation() {
        let interner = Interner::default();
        let a = interner.intern("/users/{id}");
        let b = interner.intern("/users/{id}");
        match (a, b) {
            (Route::Interned(a), Route::Interned(b)) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("expected interned routes, got {other:?}"),
        }
    }

    #[test]
    fn interner_is_bounded() {
        let interner = Interner::default();
        for i in 0..MAX_ROUTES {
            interner.intern(&format!("/r/{i}"));
        }
        assert_eq!(interner.intern("/one/more").as_str(), OVERFLOW);
        assert_eq!(interner.intern("/r/7").as_str(), "/r/7");
    }
}
