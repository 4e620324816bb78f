//! `AuthorizationPolicy`: who may call a service, on what, under which
//! conditions (Istio's shape). Every pattern is parsed when the policy is
//! read, so a bad wildcard or CIDR is a located load error and the
//! evaluator (`crate::authz`) never sees a string it must check again.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::datapath::Cidr;
use crate::parsed::{HeaderName, Method};

/// One authorization policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// What the policy protects.
    pub selector: PolicySelector,
    pub action: AuthzAction,
    /// A request the policy applies to matches one of them.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// The service (and optionally one workload of it) whose inbound side enforces the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

impl PolicySelector {
    /// Whether the policy applies in front of `service`, served by `workload`
    /// when the proxy knows which (a sidecar does; a gateway does not, and
    /// then a policy naming a workload does not apply).
    pub fn selects(&self, service: &str, workload: Option<&str>) -> bool {
        let service_ok = self.service.as_deref().is_none_or(|s| s == service);
        let workload_ok = match (&self.workload, workload) {
            (None, _) => true,
            (Some(w), Some(ours)) => w == ours,
            (Some(_), None) => false,
        };
        (self.service.is_some() || self.workload.is_some()) && service_ok && workload_ok
    }
}

/// What a matching request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    /// Let it through; a service with any allow policy refuses what none allows.
    Allow,
    /// Refuse it (403), whatever allows it.
    Deny,
    /// Let it through and record that it matched.
    Audit,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "allow",
            AuthzAction::Deny => "deny",
            AuthzAction::Audit => "audit",
        }
    }
}

/// `from` AND `to` AND `when`; a part left out matches every request. Within
/// a list, one entry must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<AuthzSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<AuthzOperation>>,
    /// Every condition must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Vec<AuthzCondition>>,
}

/// Who calls: each list given must match (one of its entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    /// The peer's SPIFFE id, as its verified client certificate says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Principal>,
    /// The `ns` segment of the peer's SPIFFE id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Glob>,
    /// The address the connection comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<Cidr>,
}

impl AuthzSource {
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty() && self.namespaces.is_empty() && self.ip_blocks.is_empty()
    }
}

/// What is called: each list given must match (one of its entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// The port the request arrived on at the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The request's host (`:authority` or `Host`, without the port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Glob>,
}

impl AuthzOperation {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.paths.is_empty() && self.ports.is_empty() && self.hosts.is_empty()
    }
}

/// One condition: a header with one of `values`, or a TLS server name in `sni`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Glob>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<Glob>,
}

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PatternError(String);

/// A SPIFFE id pattern: `*` alone is any verified identity; otherwise a
/// `spiffe://` id whose path segments may each be `*`, matching one whole
/// segment (`spiffe://trefoil.local/ns/*/sa/web`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    text: String,
}

impl Principal {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the verified identity `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        if self.text == "*" {
            return !id.is_empty();
        }
        let mut want = self.text.split('/');
        let mut got = id.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some("*"), Some(seg)) if !seg.is_empty() => {}
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    }
}

impl FromStr for Principal {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        if s == "*" {
            return Ok(Principal { text: s.to_string() });
        }
        let Some(rest) = s.strip_prefix("spiffe://") else {
            return Err(PatternError(format!(
                "{s:?} is not a principal: write a SPIFFE id (`spiffe://trust-domain/ns/NS/sa/NAME`) or `*`"
            )));
        };
        let mut segments = rest.split('/');
        let domain = segments.next().unwrap_or_default();
        if domain.is_empty() || domain.contains('*') {
            return Err(PatternError(format!("{s:?}: the trust domain must be written out, without `*`")));
        }
        for segment in segments {
            if segment.is_empty() {
                return Err(PatternError(format!("{s:?} has an empty path segment")));
            }
            if segment.contains('*') && segment != "*" {
                return Err(PatternError(format!(
                    "{s:?}: a wildcard `*` must be a whole path segment (it matches one segment), not part of {segment:?}"
                )));
            }
        }
        Ok(Principal { text: s.to_string() })
    }
}

/// Istio's string match: `exact`, `prefix*`, `*suffix`, or `*` (any value).
/// Hosts and server names compare without regard to case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
}

impl Glob {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches, comparing case-sensitively.
    pub fn matches(&self, value: &str) -> bool {
        let t = self.text.as_str();
        if t == "*" {
            true
        } else if let Some(suffix) = t.strip_prefix('*') {
            value.ends_with(suffix)
        } else if let Some(prefix) = t.strip_suffix('*') {
            value.starts_with(prefix)
        } else {
            value == t
        }
    }

    /// Whether `value` matches, ignoring ASCII case (host names).
    pub fn matches_ignoring_case(&self, value: &str) -> bool {
        self.lowered().matches(&value.to_ascii_lowercase())
    }

    fn lowered(&self) -> Glob {
        Glob { text: self.text.to_ascii_lowercase() }
    }
}

impl FromStr for Glob {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() {
            return Err(PatternError("an empty pattern matches nothing; write `*` for any value".to_string()));
        }
        let stars = s.matches('*').count();
        let inner = stars == 1 && !s.starts_with('*') && !s.ends_with('*');
        if stars > 1 || inner {
            return Err(PatternError(format!("{s:?}: one `*` at most, at the start (`*suffix`) or the end (`prefix*`)")));
        }
        Ok(Glob { text: s.to_string() })
    }
}

/// A request path: `/exact`, `/prefix*` (any path starting so), or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
}

impl PathPattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the request path (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.text,
        }
    }
}

impl FromStr for PathPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        if s == "*" {
            return Ok(PathPattern { text: s.to_string() });
        }
        if !s.starts_with('/') {
            return Err(PatternError(format!("{s:?} is not a path: paths start with `/` (or write `*` for any)")));
        }
        if s.strip_suffix('*').unwrap_or(s).contains('*') {
            return Err(PatternError(format!("{s:?}: `*` may only end a path (`/api/*` is a prefix)")));
        }
        if s.contains('?') {
            return Err(PatternError(format!("{s:?}: a path pattern matches the path without its query")));
        }
        Ok(PathPattern { text: s.to_string() })
    }
}

macro_rules! text_form {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

text_form!(Principal, Glob, PathPattern);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Policies arrive in API bodies: no text makes a parser panic, and
        /// what parses reads back as written and matches itself when it has no `*`.
        #[test]
        fn patterns_never_panic_and_round_trip(text in "[a-zA-Z0-9:/*.\\-é?]{0,24}") {
            if let Ok(p) = text.parse::<Principal>() {
                prop_assert_eq!(p.to_string(), text.clone());
                prop_assert!(text.contains('*') || p.matches(&text));
            }
            if let Ok(g) = text.parse::<Glob>() {
                prop_assert_eq!(g.to_string(), text.clone());
                prop_assert!(g.matches(&text.replace('*', "")) || text.contains('*') && text.len() == 1);
            }
            if let Ok(p) = text.parse::<PathPattern>() {
                prop_assert_eq!(p.to_string(), text.clone());
                prop_assert!(p.matches(text.trim_end_matches('*')) || text == "*");
            }
        }
    }

    #[test]
    fn principal_wildcards_match_one_segment() {
        let p: Principal = "spiffe://trefoil.local/ns/*/sa/web".parse().unwrap();
        assert!(p.matches("spiffe://trefoil.local/ns/prod/sa/web"));
        assert!(!p.matches("spiffe://trefoil.local/ns/prod/sa/api"));
        assert!(!p.matches("spiffe://trefoil.local/ns/a/b/sa/web"), "one segment only");
        assert!(!p.matches("spiffe://trefoil.local/ns//sa/web"));
        assert!(!p.matches("spiffe://other.local/ns/prod/sa/web"));
        let any: Principal = "*".parse().unwrap();
        assert!(any.matches("spiffe://x/y") && !any.matches(""));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!("web".parse::<Principal>().unwrap_err().to_string().contains("not a principal"));
        assert!("spiffe://t/ns/we*b/sa/x".parse::<Principal>().unwrap_err().to_string().contains("whole path segment"));
        assert!("spiffe://*/ns/a".parse::<Principal>().is_err());
        assert!("a*b".parse::<Glob>().unwrap_err().to_string().contains("one `*` at most"));
        assert!("**".parse::<Glob>().is_err());
        assert!("/a*/b".parse::<PathPattern>().unwrap_err().to_string().contains("may only end"));
        assert!("api".parse::<PathPattern>().is_err());
    }

    #[test]
    fn globs_and_paths() {
        let g = |s: &str| s.parse::<Glob>().unwrap();
        assert!(g("*.trefoil.local").matches_ignoring_case("Web.trefoil.local"));
        assert!(g("pre*").matches("prefix") && !g("pre*").matches("xpre"));
        assert!(g("*").matches(""));
        let p = |s: &str| s.parse::<PathPattern>().unwrap();
        assert!(p("/admin").matches("/admin") && !p("/admin").matches("/admin/x"));
        assert!(p("/api/*").matches("/api/v1") && !p("/api/*").matches("/api"));
        assert!(p("*").matches("/anything"));
    }
}
