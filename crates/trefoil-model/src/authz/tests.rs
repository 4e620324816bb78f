use std::sync::Arc;

use super::*;
use crate::load_str;

const WEB: &str = "spiffe://trefoil.local/ns/prod/sa/web";

/// The policies of `yaml` that select service `api`.
fn policies(yaml: &str) -> PolicySet {
    let loaded = load_str(&Arc::from("p.yaml"), yaml).unwrap();
    crate::validate_each(&loaded).unwrap();
    PolicySet::selecting(loaded.iter().map(|s| &s.resource), "api", None)
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!("---\napiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{service: api}}\n  action: {action}\n  rules:\n{rules}")
}

struct Req {
    principal: Option<&'static str>,
    source: IpAddr,
    method: &'static str,
    path: &'static str,
    headers: http::HeaderMap,
}

fn req(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Req {
    Req { principal, source: "10.0.0.7".parse().unwrap(), method, path, headers: http::HeaderMap::new() }
}

fn decide(set: &PolicySet, r: &Req) -> Decision {
    set.evaluate(&Request {
        principal: r.principal,
        source: Some(r.source),
        method: r.method,
        path: r.path,
        port: Some(8080),
        host: "api.trefoil.local",
        sni: Some("api.trefoil.local"),
        headers: &r.headers,
    })
}

#[test]
fn no_policy_lets_everything_through() {
    let d = decide(&PolicySet::default(), &req(None, "GET", "/"));
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoPolicy);
}

#[test]
fn principal_wildcards_and_default_deny() {
    let set = policies(&policy("web-only", "allow", "  - from: [{principals: ['spiffe://trefoil.local/ns/*/sa/web']}]\n"));
    let d = decide(&set, &req(Some(WEB), "GET", "/"));
    assert!(d.allowed);
    assert_eq!(d.rule, Some(RuleRef { policy: "web-only".into(), action: AuthzAction::Allow, rule: 0 }));
    let other = decide(&set, &req(Some("spiffe://trefoil.local/ns/prod/sa/batch"), "GET", "/"));
    assert_eq!((other.allowed, other.reason), (false, Reason::DefaultDeny));
    assert_eq!(other.labels(), (String::new(), "default-deny".to_string()));
    let anonymous = decide(&set, &req(None, "GET", "/"));
    assert!(!anonymous.allowed, "no verified identity matches no principal");
}

#[test]
fn deny_overrides_allow() {
    let yaml = policy("all", "allow", "  - {}\n")
        + &policy("no-admin", "deny", "  - to: [{paths: ['/admin/*']}]\n  - to: [{methods: [DELETE]}]\n");
    let set = policies(&yaml);
    assert!(decide(&set, &req(Some(WEB), "GET", "/items")).allowed);
    let d = decide(&set, &req(Some(WEB), "GET", "/admin/users"));
    assert_eq!((d.allowed, d.reason), (false, Reason::Denied));
    assert_eq!(d.labels(), ("no-admin".to_string(), "0".to_string()));
    let d = decide(&set, &req(Some(WEB), "DELETE", "/items"));
    assert_eq!(d.labels(), ("no-admin".to_string(), "1".to_string()));
}

#[test]
fn audit_only_records() {
    let set = policies(&policy("watch", "audit", "  - to: [{methods: [POST]}]\n"));
    let d = decide(&set, &req(None, "POST", "/"));
    assert!(d.allowed, "audit never refuses");
    assert_eq!(d.reason, Reason::NoPolicy);
    assert_eq!(d.audited, [RuleRef { policy: "watch".into(), action: AuthzAction::Audit, rule: 0 }]);
    assert!(decide(&set, &req(None, "GET", "/")).audited.is_empty());
}

#[test]
fn ip_blocks_v4_and_v6() {
    let set = policies(&policy("nets", "allow", "  - from: [{ipBlocks: [10.0.0.0/8, 'fd00::/16']}]\n"));
    let mut r = req(None, "GET", "/");
    assert!(decide(&set, &r).allowed);
    r.source = "192.168.1.1".parse().unwrap();
    assert!(!decide(&set, &r).allowed);
    r.source = "fd00:1::5".parse().unwrap();
    assert!(decide(&set, &r).allowed);
    r.source = "fe80::1".parse().unwrap();
    assert!(!decide(&set, &r).allowed);
    r.source = "::ffff:10.1.2.3".parse().unwrap();
    assert!(decide(&set, &r).allowed, "an IPv4-mapped address counts as IPv4");
}

#[test]
fn paths_prefix_and_exact_methods_and_namespaces() {
    let set = policies(&policy(
        "reads",
        "allow",
        "  - from: [{namespaces: [prod]}]\n    to: [{methods: [GET, HEAD], paths: ['/status', '/api/*']}]\n",
    ));
    assert!(decide(&set, &req(Some(WEB), "GET", "/status")).allowed);
    assert!(decide(&set, &req(Some(WEB), "HEAD", "/api/v1/x")).allowed);
    assert!(!decide(&set, &req(Some(WEB), "GET", "/status/x")).allowed, "exact");
    assert!(!decide(&set, &req(Some(WEB), "GET", "/apix")).allowed, "prefix is `/api/`");
    assert!(!decide(&set, &req(Some(WEB), "POST", "/status")).allowed, "method");
    assert!(!decide(&set, &req(Some("spiffe://trefoil.local/ns/dev/sa/web"), "GET", "/status")).allowed, "namespace");
}

#[test]
fn when_headers_and_sni() {
    let set = policies(&policy("canary", "allow", "  - when: [{header: x-env, values: ['stag*']}, {sni: ['*.trefoil.local']}]\n"));
    let mut r = req(None, "GET", "/");
    assert!(!decide(&set, &r).allowed);
    r.headers.insert("x-env", http::HeaderValue::from_static("staging"));
    assert!(decide(&set, &r).allowed);
}

#[test]
fn the_selector_picks_service_and_workload() {
    let yaml = policy("a", "allow", "  - {}\n")
        + "---\napiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  selector: {service: api, workload: api-v2}\n  action: deny\n  rules: [{}]\n";
    let loaded = load_str(&Arc::from("p.yaml"), &yaml).unwrap();
    let names = |w: Option<&str>| {
        PolicySet::selecting(loaded.iter().map(|s| &s.resource), "api", w).policies().iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(None), ["a"]);
    assert_eq!(names(Some("api-v1")), ["a"]);
    assert_eq!(names(Some("api-v2")), ["b", "a"], "deny first");
    assert!(PolicySet::selecting(loaded.iter().map(|s| &s.resource), "web", None).is_empty());
}

#[test]
fn why_names_what_matched() {
    let set = policies(&policy(
        "web-only",
        "allow",
        "  - from: [{principals: ['spiffe://trefoil.local/ns/*/sa/web']}]\n    to: [{paths: ['/api/*']}]\n",
    ));
    let r = req(Some(WEB), "GET", "/api/x");
    let d = decide(&set, &r);
    let request = Request {
        principal: r.principal,
        source: Some(r.source),
        method: "GET",
        path: "/api/x",
        port: None,
        host: "",
        sni: None,
        headers: &r.headers,
    };
    let why = set.why(d.rule.as_ref().unwrap(), &request);
    assert_eq!(
        why,
        [format!("from: principal {WEB} matches spiffe://trefoil.local/ns/*/sa/web"), "to: path /api/x matches /api/*".to_string()]
    );
}

/// A TCP connection from `principal`: no method, path, host or header.
fn decide_connection(set: &PolicySet, principal: Option<&'static str>, port: u16) -> Decision {
    set.evaluate_connection(&Request {
        principal,
        source: Some("10.0.0.7".parse().unwrap()),
        method: "",
        path: "",
        port: Some(port),
        host: "",
        sni: None,
        headers: &http::HeaderMap::new(),
    })
}

#[test]
fn a_connection_is_decided_by_what_tcp_shows() {
    // Allow rules that need HTTP never match a connection: web's GET-only
    // grant does not open the port to raw bytes; batch's port grant does.
    let yaml =
        policy("web-get", "allow", "  - from: [{principals: ['spiffe://trefoil.local/ns/prod/sa/web']}]\n    to: [{methods: [GET]}]\n")
            + &policy(
                "batch-port",
                "allow",
                "  - from: [{principals: ['spiffe://trefoil.local/ns/prod/sa/batch']}]\n    to: [{ports: [5432]}]\n",
            );
    let set = policies(&yaml);
    let d = decide_connection(&set, Some(WEB), 5432);
    assert_eq!((d.allowed, d.reason), (false, Reason::DefaultDeny));
    assert!(decide(&set, &req(Some(WEB), "GET", "/")).allowed, "the same rule still grants the HTTP request");
    let batch = Some("spiffe://trefoil.local/ns/prod/sa/batch");
    assert!(decide_connection(&set, batch, 5432).allowed);
    assert!(!decide_connection(&set, batch, 5433).allowed, "another port is not granted");

    // Deny rules ignore what only HTTP has: denying web's DELETEs denies
    // web's connections, which could carry any method.
    let yaml = policy("all", "allow", "  - {}\n")
        + &policy("no-web-delete", "deny", "  - from: [{principals: ['spiffe://trefoil.local/ns/prod/sa/web']}]\n    to: [{methods: [DELETE]}]\n    when: [{header: x-debug, values: ['1']}]\n");
    let set = policies(&yaml);
    let d = decide_connection(&set, Some(WEB), 5432);
    assert_eq!((d.allowed, d.reason), (false, Reason::Denied));
    assert!(decide_connection(&set, batch, 5432).allowed);
    assert!(decide(&set, &req(Some(WEB), "GET", "/")).allowed, "HTTP still sees the method");
}
