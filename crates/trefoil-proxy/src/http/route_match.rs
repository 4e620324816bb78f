//! Matching a request against the conditions of route rules.

use http::request::Parts;
use http::{HeaderName, Method};
use trefoil_model::parsed::Regex;
use trefoil_model::spec::{PathMatch, RouteMatch, ValueMatch};

/// One `matches[]` entry over the values the model parsed: all its
/// conditions must hold. Building one cannot fail, so no condition is
/// ever dropped.
#[derive(Debug)]
pub(crate) struct RequestMatcher {
    path: Option<PathMatcher>,
    headers: Vec<ValueMatcher<HeaderName>>,
    query: Vec<ValueMatcher<String>>,
    method: Option<Method>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Segment-aware: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    /// Matches the whole path (the model anchors it).
    Regex(Regex),
}

#[derive(Debug)]
struct ValueMatcher<N> {
    name: N,
    test: ValueTest,
    invert: bool,
}

#[derive(Debug)]
enum ValueTest {
    Present,
    Exact(String),
    Regex(Regex),
}

impl<N> ValueMatcher<N> {
    fn new<M>(m: &ValueMatch<M>, name: N) -> Self {
        let test = match (&m.value, &m.regex) {
            (_, Some(re)) => ValueTest::Regex(re.clone()),
            (Some(v), None) => ValueTest::Exact(v.clone()),
            (None, None) => ValueTest::Present,
        };
        ValueMatcher { name, test, invert: m.invert }
    }

    fn matches<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        let hit = values.any(|v| match &self.test {
            ValueTest::Present => true,
            ValueTest::Exact(want) => v == want,
            ValueTest::Regex(re) => re.is_match(v),
        });
        hit != self.invert
    }
}

impl RequestMatcher {
    pub(crate) fn compile(m: &RouteMatch) -> Self {
        let path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(PathMatcher::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => Some(PathMatcher::Prefix(p.trim_end_matches('/').to_string())),
            Some(PathMatch::Regex(re)) => Some(PathMatcher::Regex(re.clone())),
        };
        RequestMatcher {
            path,
            headers: m.headers.iter().map(|h| ValueMatcher::new(h, h.name.as_http().clone())).collect(),
            // Query parameter names are case-sensitive: matched as written.
            query: m.query_params.iter().map(|q| ValueMatcher::new(q, q.name.clone())).collect(),
            method: m.method.as_ref().map(|m| m.as_http().clone()),
        }
    }

    pub(crate) fn matches(&self, req: &Parts) -> bool {
        if let Some(method) = &self.method {
            if req.method != method {
                return false;
            }
        }
        let path = req.uri.path();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatcher::Exact(p)) => path == p,
            Some(PathMatcher::Prefix(p)) => path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')),
            Some(PathMatcher::Regex(re)) => re.is_match(path),
        };
        if !path_ok {
            return false;
        }
        let headers_ok = self.headers.iter().all(|h| h.matches(req.headers.get_all(&h.name).iter().filter_map(|v| v.to_str().ok())));
        if !headers_ok {
            return false;
        }
        let query = req.uri.query().unwrap_or("");
        self.query.iter().all(|q| {
            q.matches(query.split('&').filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == q.name).then_some(v)
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn matcher(yaml: serde_json::Value) -> RequestMatcher {
        RequestMatcher::compile(&serde_json::from_value(yaml).unwrap())
    }

    #[test]
    fn prefix_is_segment_aware() {
        let m = matcher(serde_json::json!({"path": {"prefix": "/api"}}));
        assert!(m.matches(&parts("GET", "/api", &[])));
        assert!(m.matches(&parts("GET", "/api/v1?x=1", &[])));
        assert!(!m.matches(&parts("GET", "/apix", &[])));
        let root = matcher(serde_json::json!({"path": {"prefix": "/"}}));
        assert!(root.matches(&parts("GET", "/anything", &[])));
    }

    #[test]
    fn exact_regex_method_headers_query() {
        let m = matcher(serde_json::json!({
            "path": {"regex": "/users/[0-9]+"},
            "method": "POST",
            "headers": [{"name": "X-User", "value": "alice"}, {"name": "x-debug", "invert": true}],
            "queryParams": [{"name": "v", "regex": "2|3"}]
        }));
        assert!(m.matches(&parts("POST", "/users/42?v=2", &[("x-user", "alice")])));
        assert!(!m.matches(&parts("GET", "/users/42?v=2", &[("x-user", "alice")])));
        assert!(!m.matches(&parts("POST", "/users/42/x?v=2", &[("x-user", "alice")])), "regex is anchored");
        assert!(!m.matches(&parts("POST", "/users/42?v=4", &[("x-user", "alice")])));
        assert!(!m.matches(&parts("POST", "/users/42?v=2", &[("x-user", "bob")])));
        assert!(!m.matches(&parts("POST", "/users/42?v=2", &[("x-user", "alice"), ("x-debug", "1")])));
        let exact = matcher(serde_json::json!({"path": {"exact": "/a"}}));
        assert!(exact.matches(&parts("GET", "/a", &[])) && !exact.matches(&parts("GET", "/a/", &[])));
    }

    proptest! {
        #[test]
        fn prefix_agrees_with_segment_definition(prefix in "(/[a-c]{1,2}){1,3}", path in "(/[a-c]{1,2}){0,4}") {
            let m = matcher(serde_json::json!({"path": {"prefix": prefix}}));
            let uri = if path.is_empty() { "/".to_string() } else { path };
            let segments = |s: &str| s.split('/').filter(|x| !x.is_empty()).map(str::to_string).collect::<Vec<_>>();
            let (ps, us) = (segments(&prefix), segments(&uri));
            let expected = us.len() >= ps.len() && us[..ps.len()] == ps[..];
            prop_assert_eq!(m.matches(&parts("GET", &uri, &[])), expected);
        }
    }
}
