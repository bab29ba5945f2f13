//! [`SnapshotService`]: a detector's [`Snapshot`](super::Snapshot) over HTTP.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower_service::Service;

use crate::engine::Engine;

/// Answers `GET` with the detector's [`Snapshot`](super::Snapshot): JSON by default, a table
/// for a terminal with `?format=text`. From
/// [`LeakDetector::snapshot_service`](crate::LeakDetector::snapshot_service).
///
/// Any other method gets `405 Method Not Allowed`; any other `format`, `400 Bad Request`. The
/// request's body is never read, and nothing of the request (its path, query or headers)
/// appears in the answer. Responses carry `cache-control: no-store`.
///
/// A snapshot shows the service's routes, request ids and source locations: mount it where only
/// operators can reach it (an admin listener, or behind authentication).
#[derive(Clone)]
pub struct SnapshotService {
    engine: Arc<Engine>,
}

impl fmt::Debug for SnapshotService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotService").finish_non_exhaustive()
    }
}

impl SnapshotService {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        SnapshotService { engine }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<String> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are supported\n".to_owned(),
            );
            let allow = HeaderValue::from_static("GET, HEAD");
            response.headers_mut().insert(header::ALLOW, allow);
            return response;
        }
        match Format::of(request.uri().query()) {
            Some(Format::Json) => match serde_json::to_string_pretty(&super::take(&self.engine)) {
                Ok(json) => with_type(StatusCode::OK, json, "application/json"),
                Err(error) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the snapshot could not be serialised: {error}\n"),
                ),
            },
            Some(Format::Text) => plain(StatusCode::OK, super::take(&self.engine).to_string()),
            None => plain(
                StatusCode::BAD_REQUEST,
                "unknown format: use format=json (the default) or format=text\n".to_owned(),
            ),
        }
    }
}

impl<B> Service<Request<B>> for SnapshotService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&request)))
    }
}

/// The answer's form, from the query's `format` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Text,
}

impl Format {
    /// `None` for a `format` other than `json` or `text`; other parameters are ignored.
    fn of(query: Option<&str>) -> Option<Format> {
        let format = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.strip_prefix("format="))
            .next_back();
        match format {
            None | Some("json") => Some(Format::Json),
            Some("text") => Some(Format::Text),
            Some(_) => None,
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response<String> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: String, content_type: &'static str) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_query() {
        assert_eq!(Format::of(None), Some(Format::Json));
        assert_eq!(Format::of(Some("")), Some(Format::Json));
        assert_eq!(Format::of(Some("format=json")), Some(Format::Json));
        assert_eq!(Format::of(Some("a=1&format=text")), Some(Format::Text));
        assert_eq!(Format::of(Some("format=xml")), None);
        assert_eq!(Format::of(Some("format=json&format=text")), Some(Format::Text));
    }

    fn detector() -> crate::LeakDetector {
        crate::LeakDetector::builder().build().unwrap()
    }

    fn call(method: Method, uri: &str) -> Response<String> {
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        detector().snapshot_service().respond(&request)
    }

    #[test]
    fn get_answers_json_or_text() {
        let json = call(Method::GET, "/debug/leaks");
        assert_eq!(json.status(), StatusCode::OK);
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(json.headers()[header::CACHE_CONTROL], "no-store");
        let value: serde_json::Value = serde_json::from_str(json.body()).unwrap();
        assert!(value["stats"]["registry_capacity"].as_u64().unwrap() > 0);
        assert!(value["reports"].as_array().unwrap().is_empty());

        let text = call(Method::GET, "/debug/leaks?format=text");
        assert_eq!(text.status(), StatusCode::OK);
        assert!(text.body().starts_with("leakwatch snapshot at "));
    }

    #[test]
    fn other_methods_and_formats_are_refused() {
        let post = call(Method::POST, "/debug/leaks");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let xml = call(Method::GET, "/debug/leaks?format=%3Cscript%3E");
        assert_eq!(xml.status(), StatusCode::BAD_REQUEST);
        assert!(!xml.body().contains("script"), "the query is not echoed");
    }
}
