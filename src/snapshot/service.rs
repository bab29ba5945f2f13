//! [`SnapshotService`]: a detector's [`Snapshot`](super::Snapshot) over HTTP.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower_service::Service;

use crate::engine::Engine;
use crate::report::LeakKind;

/// Answers `GET` with the detector's [`Snapshot`](super::Snapshot) — as JSON, text or a page —
/// and its heap and task profiles. From [`LeakDetector::snapshot_service`](crate::LeakDetector::snapshot_service).
///
/// What it answers depends on the last segment of the path, so that it works mounted with
/// axum's `nest_service("/debug/leaks", …)` (which hands it `/`, `/heap`, `/tasks`) as well as
/// with the whole path:
///
/// | path | answer |
/// |---|---|
/// | `…/heap` | the live tracked heap as a gzipped pprof profile, by allocation site, `route` and `held_by` (`finished`, `in_flight`) labels; `?route=` and `?held_by=` filter (feature `pprof`) |
/// | `…/tasks` | the tracked tasks alive, as a gzipped pprof profile, or as text with `?debug=1` like Go's `goroutine?debug=1`; `?route=` and `?held_by=` filter (feature `pprof`) |
/// | anything else | the snapshot: JSON by default, a table for a terminal with `?format=text`, one self-contained HTML page for a browser (sent `Accept: text/html`) or with `?format=html`; `?route=` and `?kind=` (`OrphanTask`, …) narrow it to one route template or kind of report |
///
/// Any other method gets `405 Method Not Allowed`; any other `format`, `kind` or `held_by`, `400 Bad
/// Request`; a heap profile where memory or allocation sites are not tracked, `404 Not Found`
/// saying how to turn them on. The request's body is never read, and nothing of the request
/// (its path, query or headers) appears in the answer. Responses carry `cache-control:
/// no-store`.
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

    fn respond<B>(&self, request: &Request<B>) -> Response<SnapshotBody> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are supported\n".to_owned(),
            );
            let allow = HeaderValue::from_static("GET, HEAD");
            response.headers_mut().insert(header::ALLOW, allow);
            return response;
        }
        let query = match Query::parse(request.uri().query()) {
            Ok(query) => query,
            Err(message) => return plain(StatusCode::BAD_REQUEST, message.to_owned()),
        };
        match request.uri().path().rsplit('/').next() {
            Some("heap") => self.heap(&query),
            Some("tasks") => self.tasks(&query),
            _ => self.snapshot(&query, request),
        }
    }

    fn snapshot<B>(&self, query: &Query, request: &Request<B>) -> Response<SnapshotBody> {
        let browser = || {
            request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .any(|accept| accept.to_str().is_ok_and(|a| a.contains("text/html")))
        };
        let format = match query.format.as_deref() {
            None if browser() => Some("html"),
            format => format,
        };
        match format {
            Some("html") => {
                let links = super::html::Links::for_path(page_path(request));
                let page = super::html::page(&super::take(&self.engine, &query.only), &links);
                with_type(StatusCode::OK, page.into(), "text/html; charset=utf-8")
            }
            None | Some("json") => match serde_json::to_string_pretty(&super::take(&self.engine, &query.only)) {
                Ok(json) => with_type(StatusCode::OK, json.into(), "application/json"),
                Err(error) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the snapshot could not be serialised: {error}\n"),
                ),
            },
            Some("text") => plain(StatusCode::OK, super::take(&self.engine, &query.only).to_string()),
            Some(_) => plain(
                StatusCode::BAD_REQUEST,
                "unknown format: use format=json (the default), format=text or format=html\n"
                    .to_owned(),
            ),
        }
    }

    #[cfg(feature = "pprof")]
    fn heap(&self, query: &Query) -> Response<SnapshotBody> {
        let engine = &self.engine;
        match crate::request::current::outside(|| super::pprof::heap::heap(engine, &query.filter)) {
            Ok(profile) => pprof(profile, "attachment; filename=\"heap.pb.gz\""),
            Err(reason) => plain(StatusCode::NOT_FOUND, reason.to_owned()),
        }
    }

    #[cfg(feature = "pprof")]
    fn tasks(&self, query: &Query) -> Response<SnapshotBody> {
        let engine = &self.engine;
        crate::request::current::outside(|| {
            if query.debug {
                plain(StatusCode::OK, super::pprof::tasks::text(engine, &query.filter))
            } else {
                pprof(super::pprof::tasks::pprof(engine, &query.filter), "attachment; filename=\"tasks.pb.gz\"")
            }
        })
    }

    #[cfg(not(feature = "pprof"))]
    fn heap(&self, _query: &Query) -> Response<SnapshotBody> {
        without_pprof()
    }

    #[cfg(not(feature = "pprof"))]
    fn tasks(&self, _query: &Query) -> Response<SnapshotBody> {
        without_pprof()
    }
}

/// The path the client asked for: under axum's `nest_service`, the whole of it (the service
/// itself sees what follows the prefix).
fn page_path<B>(request: &Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = request.extensions().get::<axum::extract::OriginalUri>() {
        return original.path();
    }
    request.uri().path()
}

#[cfg(not(feature = "pprof"))]
fn without_pprof() -> Response<SnapshotBody> {
    plain(
        StatusCode::NOT_FOUND,
        "profiles need leakwatch's `pprof` feature\n".to_owned(),
    )
}

impl<B> Service<Request<B>> for SnapshotService {
    type Response = Response<SnapshotBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<SnapshotBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&request)))
    }
}

/// What a request's query asks for; any other parameter is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// `format=`: the snapshot's form.
    format: Option<String>,
    /// `debug=1`: the task profile as text.
    debug: bool,
    /// `route=` and `kind=`: what the snapshot is narrowed to.
    only: super::Only,
    /// `route=` and `held_by=`: which samples the profiles keep.
    #[cfg(feature = "pprof")]
    filter: super::pprof::Filter,
}

impl Query {
    /// Parses a query; when a parameter appears twice, the last one counts. The error never
    /// repeats what the query said.
    fn parse(query: Option<&str>) -> Result<Query, &'static str> {
        let mut parsed = Query::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decoded(value);
            match key {
                "format" => parsed.format = Some(value),
                "debug" => parsed.debug = value != "0",
                "route" => {
                    #[cfg(feature = "pprof")]
                    {
                        parsed.filter.route = Some(value.clone());
                    }
                    parsed.only.route = Some(value);
                }
                "kind" => {
                    let kind = LeakKind::ALL.iter().find(|k| k.as_str() == value);
                    parsed.only.kind = Some(*kind.ok_or(
                        "unknown kind: use kind=OrphanTask, RetainedMemory, RetainedBody, \
                         UnconsumedBody, WatchedObject, StuckRequest, HeapGrowth or TaskGrowth\n",
                    )?);
                }
                #[cfg(feature = "pprof")]
                "held_by" => {
                    parsed.filter.held_by = Some(
                        super::pprof::HeldBy::parse(&value).ok_or(
                            "unknown held_by: use held_by=finished or held_by=in_flight\n",
                        )?,
                    );
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// `text` with `%XX` escapes decoded and `+` read as a space (as forms send them); a malformed
/// escape is kept as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                let digit = |at: usize| bytes.get(at).and_then(|&b| hex(b));
                if let (Some(high), Some(low)) = (digit(i + 1), digit(i + 2)) {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn plain(status: StatusCode, body: String) -> Response<SnapshotBody> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

#[cfg(feature = "pprof")]
/// A gzipped profile, offered for saving under the name `disposition` gives.
fn pprof(profile: Vec<u8>, disposition: &'static str) -> Response<SnapshotBody> {
    let mut response = with_type(StatusCode::OK, profile.into(), "application/octet-stream");
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(disposition),
    );
    response
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<SnapshotBody> {
    let mut response = Response::new(SnapshotBody::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body of [`SnapshotService`]'s responses: the whole answer, in one frame.
#[derive(Debug, Default)]
pub struct SnapshotBody {
    data: Option<Bytes>,
}

impl SnapshotBody {
    fn new(data: Bytes) -> Self {
        SnapshotBody {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// The bytes not yet read (for tests and for callers outside an HTTP server).
    pub fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }
}

impl http_body::Body for SnapshotBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes().len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_query() {
        let format = |query| Query::parse(query).unwrap().format;
        assert_eq!(format(None), None);
        assert_eq!(format(Some("")), None);
        assert_eq!(format(Some("format=json")).as_deref(), Some("json"));
        assert_eq!(format(Some("a=1&format=text")).as_deref(), Some("text"));
        assert_eq!(format(Some("format=json&format=text")).as_deref(), Some("text"));
        assert!(Query::parse(Some("debug=1")).unwrap().debug);
        assert!(!Query::parse(Some("debug=0")).unwrap().debug);
    }

    fn detector() -> crate::LeakDetector {
        crate::LeakDetector::builder().build().unwrap()
    }

    fn call(method: Method, uri: &str) -> Response<String> {
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        let response = detector().snapshot_service().respond(&request);
        response.map(|body| String::from_utf8(body.bytes().to_vec()).unwrap())
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
        let held_by = call(Method::GET, "/debug/leaks/heap?held_by=%3Cscript%3E");
        assert_eq!(held_by.status(), StatusCode::BAD_REQUEST);
        assert!(!held_by.body().contains("script"), "the query is not echoed");
    }

    #[test]
    fn queries_are_percent_decoded() {
        assert_eq!(percent_decoded("/users/%7Bid%7D"), "/users/{id}");
        assert_eq!(percent_decoded("a+b%2"), "a b%2");
        assert_eq!(percent_decoded("%zz%"), "%zz%");
        assert_eq!(percent_decoded("%E2%9C%93"), "\u{2713}");
    }

    #[test]
    fn the_body_is_one_frame() {
        use http_body::Body as _;
        let mut body = SnapshotBody::new(Bytes::from_static(b"abc"));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let frame = Pin::new(&mut body).poll_frame(&mut cx);
        let Poll::Ready(Some(Ok(frame))) = frame else {
            panic!("one frame");
        };
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(None)));
        assert!(SnapshotBody::new(Bytes::new()).is_end_stream());
    }
}
