//! Request ids: an incoming `x-request-id` when it is well formed, a generated one otherwise.
//!
//! A header value is accepted only when it is 1 to 128 characters of `[A-Za-z0-9._:-]`. Anything
//! else (too long, spaces, quotes, control characters, non-ASCII) is replaced by a generated id and
//! never copied into a report or a log line.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// The header read for an incoming request id.
pub(crate) const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// W3C trace context's header, named once (not parsed from a string on every request).
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// What a scope reads from its request's headers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Found<'a> {
    /// The first `x-request-id` value.
    pub(crate) request_id: Option<&'a http::HeaderValue>,
    /// A `traceparent` header is present.
    pub(crate) traceparent: bool,
}

/// Looks for both headers a scope reads in one pass over the distinct names — a plain walk
/// of a short list, cheaper than hashing two names for two lookups — then fetches the value of
/// the one found, if any.
pub(crate) fn scan(headers: &http::HeaderMap) -> Found<'_> {
    let (mut request_id, mut traceparent) = (false, false);
    for name in headers.keys() {
        request_id |= *name == HEADER;
        traceparent |= *name == TRACEPARENT;
    }
    Found {
        request_id: request_id.then(|| headers.get(&HEADER)).flatten(),
        traceparent,
    }
}

/// The longest incoming request id that is kept.
pub(crate) const MAX_LEN: usize = 128;

/// A request's id, as shown in reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequestId {
    /// A well-formed incoming `x-request-id`.
    Given(Box<str>),
    /// Generated: the detector's random prefix and the scope's number (no allocation).
    Generated { prefix: u32, number: u64 },
}

impl RequestId {
    /// Takes the request id from the `x-request-id` value when it is well formed, else
    /// generates one.
    pub(crate) fn from_header(value: Option<&http::HeaderValue>, prefix: u32, number: u64) -> Self {
        match value {
            Some(value) if is_well_formed(value.as_bytes()) => {
                // The bytes are checked ASCII, so this conversion cannot fail.
                match std::str::from_utf8(value.as_bytes()) {
                    Ok(s) => RequestId::Given(s.into()),
                    Err(_) => RequestId::Generated { prefix, number },
                }
            }
            _ => RequestId::Generated { prefix, number },
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Given(id) => f.write_str(id),
            RequestId::Generated { prefix, number } => write!(f, "lw-{prefix:08x}-{number}"),
        }
    }
}

/// `true` when `id` is 1 to [`MAX_LEN`] bytes of `[A-Za-z0-9._:-]`.
pub(crate) fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A random prefix for one detector's generated ids, so that two processes (or two detectors)
/// do not hand out the same ids.
pub(crate) fn random_prefix() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn id_for(value: &[u8]) -> RequestId {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        RequestId::from_header(scan(&headers).request_id, 0xabcd, 9)
    }

    #[test]
    fn one_scan_finds_both_headers_in_small_and_large_maps() {
        for extra in [0, 3, 40] {
            let mut headers = http::HeaderMap::new();
            for i in 0..extra {
                headers.insert(
                    http::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    http::HeaderValue::from_static("v"),
                );
            }
            headers.insert(http::header::HOST, http::HeaderValue::from_static("h"));
            let found = scan(&headers);
            assert!(found.request_id.is_none() && !found.traceparent);
            headers.append(&HEADER, http::HeaderValue::from_static("first"));
            headers.append(&HEADER, http::HeaderValue::from_static("second"));
            assert_eq!(scan(&headers).request_id.unwrap(), "first", "{extra}");
            assert!(!scan(&headers).traceparent);
            headers.insert(TRACEPARENT, http::HeaderValue::from_static("00-x"));
            assert!(scan(&headers).traceparent);
        }
    }

    #[test]
    fn well_formed_ids_are_kept() {
        for id in ["abc", "req-1", "A.b_c:d-9", &"x".repeat(MAX_LEN)] {
            assert_eq!(id_for(id.as_bytes()).to_string(), id);
        }
    }

    #[test]
    fn malformed_ids_are_replaced() {
        let too_long = "x".repeat(MAX_LEN + 1);
        for bad in [
            too_long.as_bytes(),
            b"has space",
            b"quote\"d",
            b"semi;colon",
            b"<script>",
            b"caf\xc3\xa9",
            b"tab\there",
            b"slash/es",
        ] {
            let id = id_for(bad);
            assert_eq!(
                id,
                RequestId::Generated {
                    prefix: 0xabcd,
                    number: 9
                },
                "{:?} should have been replaced",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(id.to_string(), "lw-0000abcd-9");
        }
    }

    #[test]
    fn missing_header_generates_an_id() {
        let id = RequestId::from_header(scan(&HeaderMap::new()).request_id, 1, 2);
        assert_eq!(id.to_string(), "lw-00000001-2");
    }

    #[test]
    fn empty_id_is_malformed() {
        assert!(!is_well_formed(b""));
    }

    #[test]
    fn prefixes_differ_between_detectors() {
        let prefixes: std::collections::HashSet<u32> = (0..16).map(|_| random_prefix()).collect();
        assert!(prefixes.len() > 1);
    }
}
