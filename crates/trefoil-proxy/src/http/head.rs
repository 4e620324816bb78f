//! The first phase of every request: checking its head before anything is
//! decided by it. A route, a CNF `when` and an upstream must all see the
//! same host and the same path, or a client can pick a route with one
//! spelling and reach the upstream with another (a security probe found both:
//! two `Host` headers, and `/x/../admin` past a `prefix: /admin` rule).
//!
//! - the host: HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); an
//!   absolute-form target or HTTP/2's `:authority` wins over it, and the
//!   upstream is sent the authority the request was routed by;
//! - the path: dot segments removed, unreserved characters decoded, slashes
//!   merged, escaped slashes kept, refused or decoded (per listener, like
//!   Envoy's `normalize_path`, `merge_slashes` and escaped-slash action).

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri, Version};
use trefoil_model::spec::{EscapedSlashes, PathNormalization};

use crate::http::local_reply::LocalReply;

/// A request refused by its head: why, and the reply's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub flag: LocalReply,
    pub text: &'static str,
}

const fn refused(flag: LocalReply, text: &'static str) -> Refused {
    Refused { flag, text }
}

const fn refused_plainly(flag: LocalReply) -> Refused {
    refused(flag, flag.text())
}

/// Checks the request's host and method and normalises its path in place.
pub(crate) fn check(parts: &mut http::request::Parts, paths: &PathNormalization) -> Result<(), Refused> {
    if parts.method == Method::CONNECT {
        return Err(refused_plainly(LocalReply::ConnectUnsupported));
    }
    settle_host(parts)?;
    normalize_uri(&mut parts.uri, paths)
}

/// Leaves exactly the `Host` the request is routed by, or none for an
/// HTTP/1.0 request that named no host.
fn settle_host(parts: &mut http::request::Parts) -> Result<(), Refused> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    let authority = parts.uri.authority().map(|a| a.as_str());
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => {
            // RFC 9113 §8.3.1: a Host that names another entity than `:authority` is malformed.
            if let (Some(authority), Some(host)) = (authority, first) {
                if second.is_some() || !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) {
                    return Err(refused(LocalReply::InvalidHost, "the Host header contradicts :authority\n"));
                }
            }
        }
        _ => {
            if second.is_some() {
                return Err(refused(LocalReply::InvalidHost, "a request may have one Host header only\n"));
            }
            if first.is_none() && authority.is_none() && parts.version == Version::HTTP_11 {
                return Err(refused_plainly(LocalReply::MissingHost));
            }
        }
    }
    // An absolute-form target (RFC 9112 §3.2.2) or `:authority` replaces the Host.
    if let Some(authority) = authority {
        let value = HeaderValue::from_str(authority)
            .map_err(|_| refused(LocalReply::InvalidHost, "the request's authority is not a valid host\n"))?;
        parts.headers.insert(header::HOST, value);
    }
    Ok(())
}

fn normalize_uri(uri: &mut Uri, options: &PathNormalization) -> Result<(), Refused> {
    let Some(pq) = uri.path_and_query() else { return Ok(()) };
    let path = pq.path();
    if !path.starts_with('/') {
        // `*` (OPTIONS) has nothing to normalise.
        return Ok(());
    }
    let Some(normal) = normalize_path(path, options)? else { return Ok(()) };
    let text = match pq.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let pq = PathAndQuery::from_maybe_shared(text).map_err(|_| refused_plainly(LocalReply::InvalidPath))?;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    *uri = Uri::from_parts(parts).map_err(|_| refused_plainly(LocalReply::InvalidPath))?;
    Ok(())
}

/// The normal form of `path` when it differs, by `options`.
pub(crate) fn normalize_path(path: &str, options: &PathNormalization) -> Result<Option<String>, Refused> {
    let bytes = path.as_bytes();
    // Most paths have nothing to normalise: one pass tells.
    let escapes = bytes.contains(&b'%');
    let dots = options.normalize && (bytes.windows(2).any(|w| w == b"/.") || bytes == b".");
    let slashes = options.merge_slashes && bytes.windows(2).any(|w| w == b"//");
    if !escapes && !dots && !slashes {
        return Ok(None);
    }
    let decoded = if escapes { decode_escapes(path, options)? } else { path.to_string() };
    let merged = if options.merge_slashes { merge_slashes(&decoded) } else { decoded };
    let normal = if options.normalize { remove_dot_segments(&merged) } else { merged };
    Ok((normal != path).then_some(normal))
}

/// Decodes escapes of unreserved characters (RFC 3986 §6.2.2.2), upper-cases
/// the others, and applies the escaped-slash action to `%2F` and `%5C`.
fn decode_escapes(path: &str, options: &PathNormalization) -> Result<String, Refused> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let byte = match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
            (Some(hi), Some(lo)) => hi << 4 | lo,
            _ => return Err(refused(LocalReply::InvalidPath, "the request path has an invalid percent-encoding\n")),
        };
        i += 3;
        let slash = byte == b'/' || byte == b'\\';
        if slash {
            match options.escaped_slashes {
                EscapedSlashes::Reject => return Err(refused_plainly(LocalReply::EscapedSlash)),
                EscapedSlashes::Unescape => {
                    out.push(byte);
                    continue;
                }
                EscapedSlashes::Keep => {}
            }
        } else if options.normalize && (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')) {
            out.push(byte);
            continue;
        }
        out.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
    // Only ASCII was decoded, so the text stays UTF-8 wherever it was.
    String::from_utf8(out).map_err(|_| refused_plainly(LocalReply::InvalidPath))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4, on an absolute path: `.` segments go, `..` removes the
/// segment before it, and nothing climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    // A path ending in `.` or `..` keeps its trailing slash: `/a/b/..` is `/a/`.
    let mut trailing = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing = last,
            ".." => {
                segments.pop();
                trailing = last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(escaped_slashes: EscapedSlashes) -> PathNormalization {
        PathNormalization { escaped_slashes, ..PathNormalization::default() }
    }

    fn normal(path: &str) -> String {
        normalize_path(path, &PathNormalization::default()).unwrap().unwrap_or_else(|| path.to_string())
    }

    #[test]
    fn every_spelling_of_admin_is_admin() {
        for path in [
            "/x/../admin",
            "/./admin",
            "//admin",
            "/%61dmin",
            "/%2e%2e/admin",
            "/%2E/admin",
            "/x/y/../../admin",
            "/../admin",
            "/.%2e/admin",
        ] {
            assert_eq!(normal(path), "/admin", "{path}");
        }
        assert_eq!(normal("/admin/./x//y/"), "/admin/x/y/");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/."), "/a/");
        assert_eq!(normal("/.."), "/");
    }

    #[test]
    fn ordinary_paths_are_left_alone() {
        for path in ["/", "/api/v1/items", "/a.b/c..d/.e", "/files/report%20final.pdf"] {
            assert_eq!(normalize_path(path, &PathNormalization::default()).unwrap(), None, "{path}");
        }
        // Reserved characters stay escaped; hex digits are upper-cased.
        assert_eq!(normal("/a%3fb%3Fc%20"), "/a%3Fb%3Fc%20");
    }

    #[test]
    fn escaped_slashes_follow_the_listener() {
        let refused = normalize_path("/x/..%2fadmin", &options(EscapedSlashes::Reject)).unwrap_err();
        assert_eq!(refused.flag, LocalReply::EscapedSlash);
        assert!(normalize_path("/a%5cb", &options(EscapedSlashes::Reject)).is_err());
        assert_eq!(normalize_path("/x/..%2fadmin", &options(EscapedSlashes::Unescape)).unwrap().unwrap(), "/admin");
        assert_eq!(normalize_path("/x/..%2fadmin", &options(EscapedSlashes::Keep)).unwrap().unwrap(), "/x/..%2Fadmin");
    }

    #[test]
    fn options_turn_steps_off() {
        let off = PathNormalization { normalize: false, merge_slashes: false, escaped_slashes: EscapedSlashes::Keep };
        for path in ["/x/../admin", "//admin", "/%61dmin"] {
            assert_eq!(normalize_path(path, &off).unwrap(), None, "{path}");
        }
        let merge_only = PathNormalization { normalize: false, ..off };
        assert_eq!(normalize_path("//a//b", &PathNormalization { merge_slashes: true, ..merge_only }).unwrap().unwrap(), "/a/b");
    }

    #[test]
    fn bad_escapes_are_refused() {
        for path in ["/a%", "/a%2", "/a%zz"] {
            assert_eq!(normalize_path(path, &PathNormalization::default()).unwrap_err().flag, LocalReply::InvalidPath, "{path}");
        }
    }

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut req = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            req = req.header("host", *h);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn hosts(parts: &http::request::Parts) -> Vec<&str> {
        parts.headers.get_all("host").iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn one_host_and_the_one_routed_by() {
        let paths = PathNormalization::default();
        let mut two = parts(Version::HTTP_11, "/", &["a.example", "b.example"]);
        assert_eq!(check(&mut two, &paths).unwrap_err().flag, LocalReply::InvalidHost);
        let mut none = parts(Version::HTTP_11, "/", &[]);
        assert_eq!(check(&mut none, &paths).unwrap_err().flag, LocalReply::MissingHost);
        let mut old = parts(Version::HTTP_10, "/", &[]);
        assert!(check(&mut old, &paths).is_ok());
        assert!(hosts(&old).is_empty());
        // The absolute-form target wins over the Host header.
        let mut absolute = parts(Version::HTTP_11, "http://a.example:8080/x", &["b.example"]);
        check(&mut absolute, &paths).unwrap();
        assert_eq!(hosts(&absolute), ["a.example:8080"]);
        let mut h2 = parts(Version::HTTP_2, "http://a.example/x", &[]);
        check(&mut h2, &paths).unwrap();
        assert_eq!(hosts(&h2), ["a.example"]);
        let mut h2_other = parts(Version::HTTP_2, "http://a.example/x", &["b.example"]);
        assert_eq!(check(&mut h2_other, &paths).unwrap_err().flag, LocalReply::InvalidHost);
        let mut connect = parts(Version::HTTP_11, "a.example:443", &["a.example:443"]);
        connect.method = Method::CONNECT;
        assert_eq!(check(&mut connect, &paths).unwrap_err().flag, LocalReply::ConnectUnsupported);
    }

    #[test]
    fn the_query_survives_normalisation() {
        let mut p = parts(Version::HTTP_11, "/a/../b?x=/../y", &["h"]);
        check(&mut p, &PathNormalization::default()).unwrap();
        assert_eq!(p.uri.to_string(), "/b?x=/../y");
    }
}
