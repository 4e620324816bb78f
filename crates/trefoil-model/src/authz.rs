//! The authorization evaluator: which policy and rule decide a request,
//! shared by the proxy (which enforces the answer) and `trefoil authz
//! explain` (which prints it), so the two cannot disagree.
//!
//! Order, as Istio's: a matching deny rule refuses; audit rules that match
//! are recorded; then, if any allow policy applies, a matching allow rule
//! lets the request through and none refuses it (default deny); with no
//! allow policy the request passes.

use std::net::IpAddr;

use serde::Serialize;

use crate::spec::{AuthorizationPolicySpec, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource};
use crate::{Resource, Spec};

/// What the evaluator knows of one request. The principal is the peer's
/// identity as the proxy established it (a verified client certificate),
/// never anything the client wrote in a header.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub principal: Option<&'a str>,
    pub source: Option<IpAddr>,
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// The port the request arrived on.
    pub port: Option<u16>,
    /// The host without its port.
    pub host: &'a str,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// A policy with its name.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedPolicy {
    pub name: String,
    pub spec: AuthorizationPolicySpec,
}

/// The policies in front of one service, deny first, then audit, then allow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
    has_allow: bool,
}

/// One rule of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub action: AuthzAction,
    /// Index in the policy's `rules`.
    pub rule: usize,
}

/// Why a request is let through or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// A deny rule matched.
    Denied,
    /// An allow rule matched.
    Allowed,
    /// Allow policies apply and none of their rules matched.
    DefaultDeny,
    /// No allow or deny policy applies.
    NoPolicy,
}

/// The evaluator's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// The rule that decided, for `Denied` and `Allowed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// Audit rules that matched (the request is logged, nothing more).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audited: Vec<RuleRef>,
}

impl Decision {
    /// The `policy` and `rule` labels of `trefoil_authz_denied_total`; a
    /// default denial has no policy and the rule `default-deny`.
    pub fn labels(&self) -> (String, String) {
        match &self.rule {
            Some(r) => (r.policy.clone(), r.rule.to_string()),
            None => (String::new(), "default-deny".to_string()),
        }
    }
}

impl PolicySet {
    /// The policies among `resources` that select `service` (served by
    /// `workload`, when known).
    pub fn selecting<'a>(resources: impl IntoIterator<Item = &'a Resource>, service: &str, workload: Option<&str>) -> PolicySet {
        PolicySet::new(resources.into_iter().filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(p) if p.selector.selects(service, workload) => {
                Some(NamedPolicy { name: r.name().to_string(), spec: p.clone() })
            }
            _ => None,
        }))
    }

    pub fn new(policies: impl IntoIterator<Item = NamedPolicy>) -> PolicySet {
        let mut policies: Vec<NamedPolicy> = policies.into_iter().collect();
        let rank = |a: AuthzAction| match a {
            AuthzAction::Deny => 0,
            AuthzAction::Audit => 1,
            AuthzAction::Allow => 2,
        };
        policies.sort_by(|a, b| (rank(a.spec.action), &a.name).cmp(&(rank(b.spec.action), &b.name)));
        let has_allow = policies.iter().any(|p| p.spec.action == AuthzAction::Allow);
        PolicySet { policies, has_allow }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies, in the order they are evaluated.
    pub fn policies(&self) -> &[NamedPolicy] {
        &self.policies
    }

    /// Decides `req`.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        self.decide(req, Seen::Request)
    }

    /// Decides a TCP connection, of which the proxy knows the peer, the
    /// source, the port and the SNI but no method, path, host or header
    /// (`req` carries them empty). As Istio does: an allow or audit rule
    /// that needs one of those never matches a connection, and a deny rule
    /// ignores them, so a policy written for HTTP refuses more on TCP, never
    /// less.
    pub fn evaluate_connection(&self, req: &Request<'_>) -> Decision {
        self.decide(req, Seen::Connection)
    }

    fn decide(&self, req: &Request<'_>, seen: Seen) -> Decision {
        let mut audited = Vec::new();
        for p in &self.policies {
            let deny = p.spec.action == AuthzAction::Deny;
            let Some(i) = p.spec.rules.iter().position(|r| rule_matches(r, req, seen, deny)) else { continue };
            let hit = RuleRef { policy: p.name.clone(), action: p.spec.action, rule: i };
            match p.spec.action {
                AuthzAction::Deny => return Decision { allowed: false, reason: Reason::Denied, rule: Some(hit), audited },
                AuthzAction::Audit => audited.push(hit),
                AuthzAction::Allow => return Decision { allowed: true, reason: Reason::Allowed, rule: Some(hit), audited },
            }
        }
        if self.has_allow {
            Decision { allowed: false, reason: Reason::DefaultDeny, rule: None, audited }
        } else {
            Decision { allowed: true, reason: Reason::NoPolicy, rule: None, audited }
        }
    }

    /// The rule `at` as written, for explanations.
    pub fn rule(&self, at: &RuleRef) -> Option<&AuthzRule> {
        self.policies.iter().find(|p| p.name == at.policy).and_then(|p| p.spec.rules.get(at.rule))
    }

    /// What in `req` matched each part of the rule `at`, one line per part.
    pub fn why(&self, at: &RuleRef, req: &Request<'_>) -> Vec<String> {
        let Some(rule) = self.rule(at) else { return Vec::new() };
        let mut out = Vec::new();
        match &rule.from {
            None => out.push("from: any source".to_string()),
            Some(from) => {
                if let Some(s) = from.iter().find(|s| source_matches(s, req)) {
                    let p = req.principal.unwrap_or("(none)");
                    if let Some(m) = s.principals.iter().find(|m| req.principal.is_some_and(|id| m.matches(id))) {
                        out.push(format!("from: principal {p} matches {m}"));
                    }
                    if let Some(m) = s.namespaces.iter().find(|m| namespace(req.principal).is_some_and(|n| m.matches(n))) {
                        out.push(format!("from: namespace of {p} matches {m}"));
                    }
                    if let (Some(m), Some(ip)) = (s.ip_blocks.iter().find(|b| req.source.is_some_and(|ip| b.contains(ip))), req.source) {
                        out.push(format!("from: address {ip} is in {m}"));
                    }
                }
            }
        }
        match &rule.to {
            None => out.push("to: any operation".to_string()),
            Some(to) => {
                if let Some(o) = to.iter().find(|o| operation_matches(o, req, Seen::Request, false)) {
                    if !o.methods.is_empty() {
                        out.push(format!("to: method {} is listed", req.method));
                    }
                    if let Some(m) = o.paths.iter().find(|m| m.matches(req.path)) {
                        out.push(format!("to: path {} matches {m}", req.path));
                    }
                    if !o.ports.is_empty() {
                        out.push(format!("to: port {} is listed", req.port.map(|p| p.to_string()).unwrap_or_default()));
                    }
                    if let Some(m) = o.hosts.iter().find(|m| m.matches_ignoring_case(req.host)) {
                        out.push(format!("to: host {} matches {m}", req.host));
                    }
                }
            }
        }
        if let Some(when) = &rule.when {
            for c in when {
                match &c.header {
                    Some(h) => out.push(format!("when: header {h} matches one of its values")),
                    None => out.push(format!("when: server name {} matches", req.sni.unwrap_or_default())),
                }
            }
        }
        out
    }
}

/// The `ns` segment of a SPIFFE id (`spiffe://td/ns/NS/sa/NAME`).
fn namespace(principal: Option<&str>) -> Option<&str> {
    let path = principal?.strip_prefix("spiffe://")?;
    let mut segments = path.split('/').skip(1);
    while let Some(s) = segments.next() {
        if s == "ns" {
            return segments.next().filter(|n| !n.is_empty());
        }
    }
    None
}

/// What the request being decided shows of itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// An HTTP request: everything.
    Request,
    /// A TCP connection: no method, path, host or header.
    Connection,
}

/// Whether `rule` matches. On a connection, a field only HTTP has makes an
/// allow or audit rule fail and is ignored by a deny rule (`deny`).
fn rule_matches(rule: &AuthzRule, req: &Request<'_>, seen: Seen, deny: bool) -> bool {
    rule.from.as_ref().is_none_or(|f| f.iter().any(|s| source_matches(s, req)))
        && rule.to.as_ref().is_none_or(|t| t.iter().any(|o| operation_matches(o, req, seen, deny)))
        && rule.when.as_ref().is_none_or(|w| w.iter().all(|c| condition_holds(c, req, seen, deny)))
}

fn source_matches(s: &AuthzSource, req: &Request<'_>) -> bool {
    let principal = req.principal.filter(|p| !p.is_empty());
    (s.principals.is_empty() || principal.is_some_and(|id| s.principals.iter().any(|m| m.matches(id))))
        && (s.namespaces.is_empty() || namespace(principal).is_some_and(|n| s.namespaces.iter().any(|m| m.matches(n))))
        && (s.ip_blocks.is_empty() || req.source.is_some_and(|ip| s.ip_blocks.iter().any(|b| b.contains(ip))))
}

fn operation_matches(o: &AuthzOperation, req: &Request<'_>, seen: Seen, deny: bool) -> bool {
    let ports = o.ports.is_empty() || req.port.is_some_and(|p| o.ports.contains(&p));
    if seen == Seen::Connection {
        let http_only = !o.methods.is_empty() || !o.paths.is_empty() || !o.hosts.is_empty();
        return ports && (deny || !http_only);
    }
    (o.methods.is_empty() || o.methods.iter().any(|m| m.as_http().as_str() == req.method))
        && (o.paths.is_empty() || o.paths.iter().any(|m| m.matches(req.path)))
        && ports
        && (o.hosts.is_empty() || o.hosts.iter().any(|m| m.matches_ignoring_case(req.host)))
}

fn condition_holds(c: &AuthzCondition, req: &Request<'_>, seen: Seen, deny: bool) -> bool {
    match &c.header {
        Some(_) if seen == Seen::Connection => deny,
        Some(name) => {
            req.headers.get_all(name.as_http()).iter().filter_map(|v| v.to_str().ok()).any(|v| c.values.iter().any(|m| m.matches(v)))
        }
        None => req.sni.is_some_and(|sni| c.sni.iter().any(|m| m.matches_ignoring_case(sni))),
    }
}

#[cfg(test)]
mod tests;
