//! Checks that hold across fields and resources, beyond what the types say.

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::load::SourcedResource;
use crate::spec::*;
use crate::{Resource, Spec};

/// Validates a whole configuration, references between resources included;
/// returns every problem found.
pub fn validate(resources: &[SourcedResource]) -> Result<(), Diagnostics> {
    check(resources, &[], References::Required)
}

/// Validates resources one by one, without requiring what they refer to
/// to exist: a control plane accepts a Route before its Service.
pub fn validate_each(resources: &[SourcedResource]) -> Result<(), Diagnostics> {
    check(resources, &[], References::Ignored)
}

/// Most services one Workload may declare it calls: a sidecar's snapshot
/// grows with them, and a longer list is a mesh that wants no scoping.
const MAX_CALLS: usize = 1024;

/// Validates resources about to be written next to `stored` (what a
/// control plane holds; those the new ones replace are left out): each by
/// itself, and against the stored resources it names or that name it, where
/// both are there. What it names may still come later, so a missing
/// reference is no problem; a conflict with what is there is, since every
/// proxy would refuse the snapshot holding both.
pub fn validate_against(resources: &[SourcedResource], stored: &[Resource]) -> Result<(), Diagnostics> {
    let replaced = |r: &&Resource| resources.iter().any(|n| n.resource.kind() == r.kind() && n.resource.name() == r.name());
    let stored: Vec<&Resource> = stored.iter().filter(|r| !replaced(r)).collect();
    check(resources, &stored, References::IfPresent)
}

/// The kinds whose stored resources [`validate_against`] needs to check a
/// resource of `kind`: those a rule between resources relates it to.
pub fn related_kinds(kind: &str) -> &'static [&'static str] {
    match kind {
        // extAuthz needs a Service that speaks HTTP/2.
        "NetworkFunction" => &["Service", "Workload", "Endpoints"],
        "Service" => &["NetworkFunction"],
        // One TrafficPolicy per Service.
        "TrafficPolicy" => &["TrafficPolicy"],
        _ => &[],
    }
}

/// How references between resources are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum References {
    /// What a resource names must be there: a whole configuration.
    Required,
    /// Only against what is there: a write next to stored resources.
    IfPresent,
    /// Not at all: each resource by itself.
    Ignored,
}

fn check(resources: &[SourcedResource], stored: &[&Resource], references: References) -> Result<(), Diagnostics> {
    let mut v = Validator {
        problems: Vec::new(),
        services: BTreeMap::new(),
        http2: BTreeMap::new(),
        ext_authz: BTreeMap::new(),
        functions: BTreeMap::new(),
        cnfs: BTreeSet::new(),
        routes: BTreeMap::new(),
        original_destination: BTreeSet::new(),
        check_references: references == References::Required,
        against_stored: references == References::IfPresent,
    };
    // A service's versions come from its static endpoints, the workloads that
    // serve it and the endpoints the runtime discovered.
    for r in resources.iter().map(|r| &r.resource).chain(stored.iter().copied()) {
        let name = r.name().to_string();
        match &r.spec {
            Spec::Service(s) => {
                if s.original_destination {
                    v.original_destination.insert(name.clone());
                }
                v.http2.insert(name.clone(), s.ports.first().is_some_and(|p| p.protocol.is_http2()));
                v.services.entry(name).or_default().extend(s.endpoints.iter().map(|e| e.version.clone()))
            }
            // A service only workloads or discovered endpoints declare speaks HTTP/1.
            Spec::Workload(w) => {
                v.http2.entry(w.service.clone()).or_insert(false);
                v.services.entry(w.service.clone()).or_default().extend([w.version.clone()])
            }
            Spec::Endpoints(e) => {
                v.http2.entry(name.clone()).or_insert(false);
                v.services.entry(name).or_default().extend(e.endpoints.iter().map(|e| e.version.clone()))
            }
            Spec::NetworkFunction(f) => {
                if f.api == FunctionApi::ExtAuthz {
                    v.ext_authz.entry(f.service.clone()).or_default().push(name.clone());
                }
                v.functions.insert(name, f.events.iter().cloned().collect());
            }
            Spec::Cnf(_) => {
                v.cnfs.insert(name);
            }
            Spec::Route(route) => {
                v.routes.insert(name, route.rules.iter().flat_map(|rule| rule.backends.iter().map(|b| b.service.clone())).collect());
            }
            _ => {}
        }
    }
    // A mesh (workloads, or listeners that name their proxy) has many proxies;
    // a standalone proxy's config has at most one.
    let mesh = resources.iter().any(|r| match &r.resource.spec {
        Spec::Workload(_) => true,
        Spec::Listener(l) => l.proxy.is_some(),
        Spec::Proxy(p) => p.sidecar.is_some(),
        _ => false,
    });
    let mut seen = BTreeSet::new();
    let mut policies: BTreeSet<String> = stored
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::TrafficPolicy(p) => Some(p.service.clone()),
            _ => None,
        })
        .collect();
    let mut proxies = 0;
    for r in resources {
        let name = r.resource.name();
        if !valid_name(name) {
            v.report(r, "metadata.name", format!("invalid name {name:?}: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"));
        }
        if !seen.insert((r.resource.kind(), name.to_string())) {
            v.report(r, "metadata.name", format!("duplicate {} named {name:?}", r.resource.kind()));
        }
        match &r.resource.spec {
            Spec::Proxy(p) => {
                proxies += 1;
                if proxies > 1 && !mesh {
                    v.report(r, "kind", "only one Proxy resource may configure a proxy");
                }
                v.proxy(r, p);
            }
            Spec::Listener(l) => v.listener(r, l),
            Spec::Service(s) => v.service(r, s),
            Spec::Route(route) => v.route(r, route),
            Spec::TrafficPolicy(p) => {
                if !policies.insert(p.service.clone()) {
                    v.report(
                        r,
                        "spec.service",
                        format!("another TrafficPolicy already applies to Service {:?}; merge them into one", p.service),
                    );
                }
                v.traffic_policy(r, p)
            }
            Spec::Workload(w) => v.workload(r, w),
            // Each address was parsed when read; the runtime writes one per replica.
            Spec::Endpoints(_) => {}
            Spec::NetworkFunction(f) => v.network_function(r, f),
            Spec::Cnf(c) => v.cnf(r, c),
            Spec::Rollout(rollout) => v.rollout(r, rollout),
            // Written by the control plane itself, from checked values.
            Spec::RolloutStatus(_) | Spec::Event(_) | Spec::DatapathRuleStatus(_) => {}
            Spec::DatapathRule(d) => v.datapath_rule(r, d, resources),
            Spec::AuthorizationPolicy(p) => v.authorization_policy(r, p),
        }
        if matches!(r.resource.spec, Spec::Workload(_) | Spec::NetworkFunction(_) | Spec::Cnf(_)) {
            v.target_labels(r, resources);
        }
    }
    if v.problems.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(v.problems))
    }
}

/// The most body a function may ask for: bodies are held in memory while it decides.
pub const MAX_SEND_BODY: u32 = 1024 * 1024;

/// Event names are written in handlers as identifiers (`inspect_done`), so
/// besides a resource name's characters they may use '_'.
pub fn valid_event(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_';
    !name.is_empty() && name.len() <= 253 && name.chars().all(ok_char) && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Whether `name` is a valid resource (and so Service) name: DNS-like,
/// lowercase, at most 253 characters.
pub fn valid_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

struct Validator {
    problems: Vec<Diagnostic>,
    /// What resources name must be there.
    check_references: bool,
    /// Checked against stored resources, where both ends are there.
    against_stored: bool,
    /// Service name -> versions of its static endpoints.
    services: BTreeMap<String, BTreeSet<String>>,
    /// Service name -> whether it speaks HTTP/2 (its first port's protocol).
    http2: BTreeMap<String, bool>,
    /// Service name -> the NetworkFunctions that call it with extAuthz.
    ext_authz: BTreeMap<String, Vec<String>>,
    /// NetworkFunction name -> the events it publishes.
    functions: BTreeMap<String, BTreeSet<String>>,
    cnfs: BTreeSet<String>,
    /// Route name -> the services its backends name.
    routes: BTreeMap<String, BTreeSet<String>>,
    /// Services with `originalDestination`: only a transparent listener's
    /// connections have one.
    original_destination: BTreeSet<String>,
}

impl Validator {
    fn report(&mut self, r: &SourcedResource, field: &str, message: impl Into<String>) {
        self.problems.push(r.diagnostic(field, message));
    }

    fn percent(&mut self, r: &SourcedResource, field: &str, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.report(r, field, format!("{value} is not a percentage between 0 and 100"));
        }
    }

    fn file(&mut self, r: &SourcedResource, field: &str, path: &str) {
        if let Err(e) = std::fs::metadata(path) {
            self.report(r, field, format!("cannot read {path:?}: {e}"));
        }
    }

    fn backend(&mut self, r: &SourcedResource, field: &str, service: &str, version: Option<&str>) {
        if !self.check_references {
            return;
        }
        match self.services.get(service) {
            None => self.report(r, &format!("{field}.service"), format!("no Service named {service:?}")),
            Some(versions) => {
                if let Some(version) = version {
                    if !versions.contains(version) {
                        let known: Vec<_> = versions.iter().filter(|v| !v.is_empty()).cloned().collect();
                        self.report(
                            r,
                            &format!("{field}.version"),
                            format!(
                                "Service {service:?} has no endpoints of version {version:?} (it has: {})",
                                if known.is_empty() { "none".into() } else { known.join(", ") }
                            ),
                        );
                    }
                }
            }
        }
    }

    fn proxy(&mut self, r: &SourcedResource, p: &ProxySpec) {
        if let Some(t) = &p.tracing {
            if !t.otlp_endpoint.starts_with("http://") && !t.otlp_endpoint.starts_with("https://") {
                self.report(r, "spec.tracing.otlpEndpoint", "must be an http:// or https:// URL");
            }
            self.percent(r, "spec.tracing.samplingPercent", t.sampling_percent);
        }
    }

    fn listener(&mut self, r: &SourcedResource, l: &ListenerSpec) {
        if let Some(tls) = &l.tls {
            self.file(r, "spec.tls.certificate", &tls.certificate);
            self.file(r, "spec.tls.key", &tls.key);
            if let Some(ca) = &tls.client_ca {
                self.file(r, "spec.tls.clientCa", ca);
            }
        }
        if l.mesh_tls.is_some() && l.tls.is_some() {
            self.report(r, "spec.meshTls", "a listener serves either the mesh's TLS or `tls` from files, not both");
        }
        if l.transparent {
            self.transparent_listener(r, l);
        } else {
            self.original_destination_routes(r, l);
        }
        match (&l.protocol, &l.tcp_backend) {
            // A transparent listener passes what is not HTTP to the original destination.
            (ListenerProtocol::Tcp | ListenerProtocol::Auto, None) if !l.transparent => {
                self.report(r, "spec.tcpBackend", "a tcp or auto listener needs `tcpBackend` for traffic that is not HTTP")
            }
            (_, Some(b)) if !l.transparent => {
                self.backend(r, "spec.tcpBackend", &b.service, b.version.as_deref());
                self.not_original_destination(r, "spec.tcpBackend.service", &b.service, "a transparent listener without `tcpBackend`");
            }
            _ => {}
        }
        if let Some(service) = &l.service {
            self.backend(r, "spec", service, None);
        }
        if self.check_references {
            for (i, wanted) in l.routes.iter().enumerate() {
                if !self.routes.contains_key(wanted) {
                    self.report(r, &format!("spec.routes[{i}]"), format!("no Route named {wanted:?}"));
                }
            }
        }
    }

    /// A transparent listener forwards to each connection's original
    /// destination, so it has no backend of its own; it must be bound to one
    /// address, the one datapath rules steer connections to.
    fn transparent_listener(&mut self, r: &SourcedResource, l: &ListenerSpec) {
        if l.tcp_backend.is_some() {
            self.report(
                r,
                "spec.tcpBackend",
                "a transparent listener forwards to each connection's original destination: remove `tcpBackend`",
            );
        }
        if l.tls.is_some() {
            self.report(r, "spec.tls", "a transparent listener cannot terminate TLS for every destination: remove `tls`");
        }
        if l.address.ip().is_unspecified() {
            self.report(
                r,
                "spec.address",
                format!("{}: a transparent listener needs one address, which datapath rules steer to (not the wildcard)", l.address),
            );
        }
    }

    /// A listener that is not transparent has no original destination: the
    /// routes it names may not send requests to one (the proxy would have
    /// nowhere to send them, or would connect to itself). An empty `routes`
    /// serves every Route the listener can serve, so it leaves those out.
    fn original_destination_routes(&mut self, r: &SourcedResource, l: &ListenerSpec) {
        let found: Vec<(String, String, String)> = l
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| {
                let services = self.routes.get(route)?;
                let service = services.iter().find(|s| self.original_destination.contains(*s))?;
                Some((format!("spec.routes[{i}]"), route.clone(), service.clone()))
            })
            .collect();
        for (field, route, service) in found {
            self.report(
                r,
                &field,
                format!(
                    "Route {route:?} sends requests to Service {service:?}, their original destination, which only a `transparent: true` listener has"
                ),
            );
        }
    }

    /// A reference at `field` that cannot be an `originalDestination` Service;
    /// `instead` says what to use for the same effect.
    fn not_original_destination(&mut self, r: &SourcedResource, field: &str, service: &str, instead: &str) {
        if self.original_destination.contains(service) {
            self.report(
                r,
                field,
                format!("Service {service:?} forwards to the original destination, which has no meaning here: use {instead}"),
            );
        }
    }

    /// A datapath rule: its own problems, its node's name, and (with the
    /// whole configuration at hand) that `to` selects something.
    fn datapath_rule(&mut self, r: &SourcedResource, d: &DatapathRuleSpec, all: &[SourcedResource]) {
        for (field, message) in d.problems() {
            self.report(r, &field, message);
        }
        if let Some(node) = d.node.as_ref().filter(|n| !valid_name(n)) {
            self.report(r, "spec.node", format!("invalid node name {node:?}"));
        }
        let selectable = |s: &SourcedResource| matches!(s.resource.spec, Spec::Workload(_) | Spec::NetworkFunction(_) | Spec::Cnf(_));
        if self.check_references && !d.to.is_empty() && !all.iter().any(|s| selectable(s) && d.to.matches(&s.resource.metadata.labels)) {
            self.report(r, "spec.to", format!("no Workload, NetworkFunction or CNF has the labels {}", d.to));
        }
    }

    /// An authorization policy: what it selects, and no list written empty
    /// (an empty list would silently match nothing, or everything).
    fn authorization_policy(&mut self, r: &SourcedResource, p: &AuthorizationPolicySpec) {
        let sel = &p.selector;
        if sel.service.is_none() && sel.workload.is_none() {
            self.report(r, "spec.selector", "give `service`, `workload` or both: the policy must select what it protects");
        }
        for (field, name) in [("service", &sel.service), ("workload", &sel.workload)] {
            if let Some(name) = name.as_ref().filter(|n| !valid_name(n)) {
                self.report(r, &format!("spec.selector.{field}"), format!("invalid {field} name {name:?}"));
            }
        }
        if let Some(service) = &sel.service {
            if self.check_references && !self.services.contains_key(service) {
                self.report(r, "spec.selector.service", format!("no Service named {service:?}"));
            }
        }
        if p.rules.is_empty() {
            self.report(r, "spec.rules", "no rules: a policy needs at least one (`rules: [{}]` matches every request)");
        }
        for (i, rule) in p.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            let lists = [
                ("from", rule.from.as_ref().map(Vec::len)),
                ("to", rule.to.as_ref().map(Vec::len)),
                ("when", rule.when.as_ref().map(Vec::len)),
            ];
            for (part, len) in lists {
                if len == Some(0) {
                    self.report(
                        r,
                        &format!("{at}.{part}"),
                        format!("an empty `{part}` matches nothing: leave it out to match every request"),
                    );
                }
            }
            for (j, s) in rule.from.iter().flatten().enumerate() {
                if s.is_empty() {
                    self.report(r, &format!("{at}.from[{j}]"), "says nothing: give principals, namespaces or ipBlocks");
                }
            }
            for (j, o) in rule.to.iter().flatten().enumerate() {
                if o.is_empty() {
                    self.report(r, &format!("{at}.to[{j}]"), "says nothing: give methods, paths, ports or hosts");
                }
                if let Some(k) = o.ports.iter().position(|p| *p == 0) {
                    self.report(r, &format!("{at}.to[{j}].ports[{k}]"), "port 0 is no port a request arrives on");
                }
            }
            for (j, c) in rule.when.iter().flatten().enumerate() {
                let field = format!("{at}.when[{j}]");
                match (&c.header, c.values.is_empty(), c.sni.is_empty()) {
                    (Some(_), false, true) | (None, true, false) => {}
                    (Some(_), _, false) | (None, false, false) => {
                        self.report(r, &field, "one condition per entry: a `header` with its `values`, or `sni`")
                    }
                    (Some(_), true, true) => {
                        self.report(r, &format!("{field}.values"), "a header condition needs `values` (`['*']` for any)")
                    }
                    (None, false, true) => self.report(r, &format!("{field}.header"), "`values` without the `header` they are for"),
                    (None, true, true) => self.report(r, &field, "says nothing: give `header` with `values`, or `sni`"),
                }
            }
        }
    }

    /// The labels that tell node agents where a function is reached
    /// (`datapath::targets`): a transparent Listener that exists, an
    /// interface name the kernel can have.
    fn target_labels(&mut self, r: &SourcedResource, all: &[SourcedResource]) {
        use crate::datapath::targets::{INTERFACE_LABEL, LISTENER_LABEL};
        let labels = &r.resource.metadata.labels;
        if let Some(name) = labels.get(LISTENER_LABEL).filter(|_| self.check_references) {
            let field = format!("metadata.labels.{LISTENER_LABEL}");
            let listener = all.iter().find_map(|s| match &s.resource.spec {
                Spec::Listener(l) if s.resource.name() == name => Some(l),
                _ => None,
            });
            match listener {
                None => self.report(r, &field, format!("no Listener named {name:?}: datapath rules redirect to a transparent Listener")),
                Some(l) if !l.transparent => self.report(
                    r,
                    &field,
                    format!("Listener {name:?} is not `transparent: true`: datapath rules redirect only to one that is"),
                ),
                Some(_) => {}
            }
        }
        // IFNAMSIZ is 16 with the NUL; '/' and whitespace are refused by the kernel.
        if let Some(interface) = labels.get(INTERFACE_LABEL) {
            if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\t', ':']) {
                self.report(r, &format!("metadata.labels.{INTERFACE_LABEL}"), format!("{interface:?} is not an interface name"));
            }
        }
    }

    /// `calls`: service names, each once, bounded; with references checked,
    /// each a Service (declared or implied by a Workload).
    fn calls(&mut self, r: &SourcedResource, w: &WorkloadSpec) {
        let Some(calls) = &w.calls else { return };
        if calls.len() > MAX_CALLS {
            self.report(r, "spec.calls", format!("{} services: at most {MAX_CALLS}", calls.len()));
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, service) in calls.iter().enumerate() {
            let field = format!("spec.calls[{i}]");
            if !valid_name(service) {
                self.report(r, &field, format!("invalid service name {service:?}"));
            } else if !seen.insert(service) {
                self.report(r, &field, format!("{service:?} is listed twice"));
            } else if *service == w.service {
                self.report(r, &field, format!("{service:?} is this workload's own service, which its sidecar always has"));
            } else if self.check_references && !self.services.contains_key(service) {
                self.report(r, &field, format!("no Service named {service:?}"));
            }
        }
    }

    fn workload(&mut self, r: &SourcedResource, w: &WorkloadSpec) {
        if !valid_name(&w.service) {
            self.report(r, "spec.service", format!("invalid service name {:?}", w.service));
        }
        if w.command.trim().is_empty() {
            self.report(r, "spec.command", "a Workload needs a command to run");
        }
        if !(1..=64).contains(&w.replicas) {
            self.report(r, "spec.replicas", format!("{} replicas: must be between 1 and 64", w.replicas));
        }
        match w.port {
            Some(0) => self.report(r, "spec.port", "port must be between 1 and 65535"),
            Some(_) if w.replicas > 1 => {
                self.report(r, "spec.port", "a fixed port allows one replica; leave `port` out and each replica gets its own in PORT")
            }
            _ => {}
        }
        for key in w.env.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.report(r, &format!("spec.env.{key}"), "environment variable names are letters, digits and '_'");
            }
        }
        self.calls(r, w);
        if let Some(h) = &w.health {
            match (&h.http, h.tcp) {
                (Some(path), false) if !path.starts_with('/') => {
                    self.report(r, "spec.health.http", format!("{path:?} is not a path starting with '/'"))
                }
                (Some(_), true) | (None, false) => self.report(r, "spec.health", "give exactly one of `http: /path` or `tcp: true`"),
                _ => {}
            }
        }
    }

    fn rollout(&mut self, r: &SourcedResource, ro: &RolloutSpec) {
        for (field, value) in [("service", &ro.service), ("route", &ro.route)] {
            if !valid_name(value) {
                self.report(r, &format!("spec.{field}"), format!("invalid name {value:?}"));
            }
        }
        for (field, value) in [("stable", &ro.stable), ("canary", &ro.canary)] {
            if value.trim().is_empty() {
                self.report(r, &format!("spec.{field}"), "a version is needed");
            }
        }
        if ro.stable == ro.canary {
            self.report(r, "spec.canary", format!("the canary must differ from the stable version {:?}", ro.stable));
        }
        self.backend(r, "spec", &ro.service, Some(&ro.stable));
        if self.check_references {
            match self.routes.get(&ro.route) {
                None => self.report(r, "spec.route", format!("no Route named {:?}", ro.route)),
                Some(services) if !services.contains(&ro.service) => {
                    self.report(r, "spec.route", format!("Route {:?} has no backend of service {:?} to shift", ro.route, ro.service))
                }
                Some(_) => {}
            }
        }
        let judged = |checks: u32, v: &mut Self, field: &str| {
            if checks == 0 {
                v.report(r, field, "must be at least 1");
            }
        };
        match &ro.strategy {
            Strategy::Canary(c) => {
                if c.steps.is_empty() {
                    self.report(r, "spec.strategy.canary.steps", "a canary needs at least one step (e.g. `- setWeight: 20`)");
                }
                let mut last = 0;
                for (i, step) in c.steps.iter().enumerate() {
                    let at = format!("spec.strategy.canary.steps[{i}]");
                    match step {
                        CanaryStep::SetWeight(w) if *w > 100 => {
                            self.report(r, &format!("{at}.setWeight"), format!("{w} is not a percentage between 0 and 100"))
                        }
                        CanaryStep::SetWeight(w) => last = *w,
                        CanaryStep::Pause(d) if d.get().is_zero() => self.report(r, &format!("{at}.pause"), "must be greater than 0"),
                        CanaryStep::Analysis(a) => {
                            judged(a.checks, self, &format!("{at}.analysis.checks"));
                            if ro.analysis.is_none() {
                                self.report(r, &at, "an analysis step needs `spec.analysis`");
                            }
                            if last == 0 {
                                self.report(r, &at, "an analysis step needs traffic on the canary: put a `setWeight` above 0 before it");
                            }
                        }
                        CanaryStep::Pause(_) => {}
                    }
                }
            }
            Strategy::AbTest(ab) => {
                match (&ab.header, &ab.cookie) {
                    (Some(_), None) => {}
                    (None, Some(c)) => {
                        if c.name.is_empty() || c.name.contains([';', '=', ' ']) {
                            self.report(r, "spec.strategy.abTest.cookie.name", format!("{:?} is not a cookie name", c.name));
                        }
                        if let Err(e) = c.cookie_condition() {
                            self.report(r, "spec.strategy.abTest.cookie", e.to_string());
                        }
                    }
                    _ => self.report(r, "spec.strategy.abTest", "give exactly one of `header` or `cookie`"),
                }
                judged(ab.checks, self, "spec.strategy.abTest.checks");
            }
            Strategy::Mirror(m) => {
                self.percent(r, "spec.strategy.mirror.percent", m.percent);
                judged(m.checks, self, "spec.strategy.mirror.checks");
            }
            Strategy::BlueGreen(b) => judged(b.checks, self, "spec.strategy.blueGreen.checks"),
        }
        let needs_analysis = !matches!(ro.strategy, Strategy::Canary(_));
        match &ro.analysis {
            None if needs_analysis => self.report(r, "spec.analysis", "this strategy promotes on passing checks, so it needs `analysis`"),
            None => {}
            Some(a) => {
                if a.interval.get().is_zero() {
                    self.report(r, "spec.analysis.interval", "must be greater than 0");
                }
                if a.threshold == 0 {
                    self.report(r, "spec.analysis.threshold", "must be at least 1");
                }
                if a.metrics.is_empty() {
                    self.report(r, "spec.analysis.metrics", "analysis needs at least one metric");
                }
                for (i, m) in a.metrics.iter().enumerate() {
                    let at = format!("spec.analysis.metrics[{i}]");
                    match m {
                        AnalysisMetric::SuccessRate(b) => self.percent(r, &format!("{at}.successRate.min"), b.min),
                        AnalysisMetric::LatencyP99(b) if b.max.get().is_zero() => {
                            self.report(r, &format!("{at}.latencyP99.max"), "must be greater than 0")
                        }
                        AnalysisMetric::LatencyP99(_) => {}
                        AnalysisMetric::LatencyVsStable(b) if !(b.alpha > 0.0 && b.alpha < 1.0) => self.report(
                            r,
                            &format!("{at}.latencyVsStable.alpha"),
                            format!("{} is not a significance level between 0 and 1 (e.g. 0.01)", b.alpha),
                        ),
                        AnalysisMetric::LatencyVsStable(_) => {}
                        AnalysisMetric::Prometheus(p) => {
                            if !p.address.starts_with("http://") {
                                self.report(r, &format!("{at}.prometheus.address"), "must be an http:// URL");
                            }
                            if p.query.trim().is_empty() {
                                self.report(r, &format!("{at}.prometheus.query"), "a PromQL query is needed");
                            }
                            match (p.min, p.max) {
                                (None, None) => self.report(r, &format!("{at}.prometheus"), "give `min`, `max` or both"),
                                (Some(min), Some(max)) if min > max => {
                                    self.report(r, &format!("{at}.prometheus.min"), format!("min {min} is above max {max}"))
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }

    fn service(&mut self, r: &SourcedResource, s: &ServiceSpec) {
        // The stored function is not written here: the Service is what changes it.
        let http2 = s.ports.first().is_some_and(|p| p.protocol.is_http2());
        if let Some(callers) = self.ext_authz.get(r.resource.name()).filter(|_| self.against_stored && !http2) {
            let message = format!(
                "NetworkFunction {:?} calls this service with extAuthz, which is gRPC: the first port needs protocol grpc or http2",
                callers[0]
            );
            let field = if s.ports.is_empty() { "spec" } else { "spec.ports[0].protocol" };
            self.report(r, field, message);
        }
        if s.original_destination && !s.endpoints.is_empty() {
            self.report(
                r,
                "spec.endpoints",
                "an `originalDestination` Service forwards to where each connection was addressed: remove `endpoints`",
            );
        }
        let mut addresses = BTreeSet::new();
        for (i, e) in s.endpoints.iter().enumerate() {
            if !addresses.insert(e.address) {
                self.report(r, &format!("spec.endpoints[{i}].address"), format!("endpoint {} is listed twice", e.address));
            }
        }
        for (i, p) in s.ports.iter().enumerate() {
            if p.port == 0 {
                self.report(r, &format!("spec.ports[{i}].port"), "port must be between 1 and 65535");
            }
        }
    }

    fn route(&mut self, r: &SourcedResource, route: &RouteSpec) {
        if route.hosts.is_empty() && route.service.is_none() {
            self.report(r, "spec", "a Route needs `hosts` or `service` to say which traffic it applies to");
        }
        if let Some(service) = route.service.as_ref().filter(|_| self.check_references) {
            if !self.services.contains_key(service) {
                self.report(r, "spec.service", format!("no Service named {service:?}"));
            }
        }
        for (i, host) in route.hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ' ']) || (host.contains('*') && !host.starts_with("*.") && host != "*") {
                self.report(r, &format!("spec.hosts[{i}]"), format!("{host:?} is not a host name (wildcards only as a leading `*.`)"));
            }
        }
        if route.rules.is_empty() {
            self.report(r, "spec.rules", "a Route needs at least one rule");
        }
        for (i, rule) in route.rules.iter().enumerate() {
            self.rule(r, &format!("spec.rules[{i}]"), rule);
        }
    }

    fn rule(&mut self, r: &SourcedResource, at: &str, rule: &RouteRule) {
        for (j, m) in rule.matches.iter().enumerate() {
            self.route_match(r, &format!("{at}.matches[{j}]"), m);
        }
        if let Some(cnf) = rule.chain.as_ref().filter(|_| self.check_references) {
            if !self.cnfs.contains(cnf) {
                self.report(r, &format!("{at}.chain"), format!("no CNF named {cnf:?}"));
            }
        }
        if rule.backends.is_empty() {
            self.report(r, &format!("{at}.backends"), "a rule needs at least one backend");
        } else if rule.backends.iter().all(|b| b.weight == 0) {
            self.report(r, &format!("{at}.backends"), "all backend weights are 0: no request could be served");
        }
        for (j, b) in rule.backends.iter().enumerate() {
            self.backend(r, &format!("{at}.backends[{j}]"), &b.service, b.version.as_deref());
        }
        let f = &rule.filters;
        if let Some(m) = &f.request_mirror {
            self.backend(r, &format!("{at}.filters.requestMirror.backend"), &m.backend.service, m.backend.version.as_deref());
            self.not_original_destination(
                r,
                &format!("{at}.filters.requestMirror.backend.service"),
                &m.backend.service,
                "a Service with endpoints (a copy sent where the request goes already would arrive twice)",
            );
            self.percent(r, &format!("{at}.filters.requestMirror.percent"), m.percent);
        }
        if let Some(fault) = &f.fault {
            if let Some(d) = &fault.delay {
                self.percent(r, &format!("{at}.filters.fault.delay.percent"), d.percent);
            }
            if let Some(a) = &fault.abort {
                self.percent(r, &format!("{at}.filters.fault.abort.percent"), a.percent);
                if !(200..=599).contains(&a.status) {
                    self.report(
                        r,
                        &format!("{at}.filters.fault.abort.status"),
                        format!("{} is not an HTTP status between 200 and 599", a.status),
                    );
                }
            }
            if fault.delay.is_none() && fault.abort.is_none() {
                self.report(r, &format!("{at}.filters.fault"), "a fault needs `delay`, `abort` or both");
            }
        }
        if let Some(rl) = &f.rate_limit {
            if !(rl.requests_per_second > 0.0 && rl.requests_per_second.is_finite()) {
                self.report(r, &format!("{at}.filters.rateLimit.requestsPerSecond"), "must be a positive number");
            }
            if !(400..=599).contains(&rl.status) {
                self.report(r, &format!("{at}.filters.rateLimit.status"), "must be an HTTP error status (400-599)");
            }
        }
        if let Some(retry) = &rule.retry {
            if retry.attempts > 10 {
                self.report(r, &format!("{at}.retry.attempts"), format!("{} retries is too many (at most 10)", retry.attempts));
            }
            if let (Some(per_try), Some(total)) = (retry.per_try_timeout, rule.effective_timeout()) {
                if per_try.get() > total {
                    let total = crate::Duration(total);
                    let by_default = if rule.timeout.is_none() { " (the default)" } else { "" };
                    self.report(
                        r,
                        &format!("{at}.retry.perTryTimeout"),
                        format!("perTryTimeout {per_try} exceeds the rule's timeout {total}{by_default}"),
                    );
                }
            }
            if retry.on.contains(&RetryOn::RetriableStatusCodes) && retry.status_codes.is_empty() {
                self.report(r, &format!("{at}.retry.statusCodes"), "`retriable-status-codes` needs `statusCodes`");
            }
            if let Some(b) = &retry.budget {
                self.percent(r, &format!("{at}.retry.budget.percent"), b.percent);
            }
        }
    }

    fn route_match(&mut self, r: &SourcedResource, at: &str, m: &RouteMatch) {
        match &m.path {
            Some(PathMatch::Exact(p)) | Some(PathMatch::Prefix(p)) if !p.starts_with('/') => {
                self.report(r, &format!("{at}.path"), format!("path {p:?} must start with '/'"))
            }
            _ => {}
        }
        for (k, h) in m.headers.iter().enumerate() {
            self.value_match(r, &format!("{at}.headers[{k}]"), h);
        }
        for (k, q) in m.query_params.iter().enumerate() {
            self.value_match(r, &format!("{at}.queryParams[{k}]"), q);
        }
    }

    fn network_function(&mut self, r: &SourcedResource, f: &NetworkFunctionSpec) {
        if self.check_references && !self.services.contains_key(&f.service) {
            self.report(r, "spec.service", format!("no Service named {:?}", f.service));
        }
        self.not_original_destination(r, "spec.service", &f.service, "the Service the function runs as");
        let speaks_http2 = self.http2.get(&f.service).copied().filter(|_| self.check_references || self.against_stored);
        if f.api == FunctionApi::ExtAuthz && speaks_http2 == Some(false) {
            self.report(r, "spec.api", format!("extAuthz is gRPC: Service {:?} needs a port with protocol grpc or http2", f.service));
        }
        if f.timeout.get().is_zero() {
            self.report(r, "spec.timeout", "must be greater than 0");
        }
        if let Some(b) = &f.send_body {
            if !(1..=MAX_SEND_BODY).contains(&b.max_bytes) {
                self.report(r, "spec.sendBody.maxBytes", format!("must be between 1 and {MAX_SEND_BODY}"));
            }
        }
        for (i, event) in f.events.iter().enumerate() {
            if !valid_event(event) {
                self.report(
                    r,
                    &format!("spec.events[{i}]"),
                    format!("invalid event name {event:?}: use lower-case letters, digits, '_', '-' and '.'"),
                );
            }
        }
    }

    fn cnf(&mut self, r: &SourcedResource, c: &CnfSpec) {
        if c.chain.is_empty() {
            self.report(r, "spec.chain", "a CNF needs at least one step");
        }
        for (i, step) in c.chain.iter().enumerate() {
            let at = format!("spec.chain[{i}]");
            if self.check_references && !self.functions.contains_key(&step.function) {
                self.report(r, &format!("{at}.function"), format!("no NetworkFunction named {:?}", step.function));
            }
            // An inline function is a hop: the response already comes back
            // through it, so a response-phase inline step would mean nothing.
            if step.mode == StepMode::Inline && step.phase == Phase::Response {
                self.report(r, &format!("{at}.mode"), "`inline` steps run on the request phase only (the response comes back through the function anyway): drop `phase: response` or use another mode");
            }
            if let Some(m) = &step.when {
                self.route_match(r, &format!("{at}.when"), m);
            }
        }
        if let Some(limits) = &c.handler_limits {
            self.handler_limits(r, limits);
        }
        for (event, script) in &c.handlers {
            if script.trim().is_empty() {
                self.report(r, &format!("spec.handlers.{event}"), "a handler needs a script");
            }
            let published = c.chain.iter().any(|s| self.functions.get(&s.function).is_some_and(|events| events.contains(event)));
            if self.check_references && !published {
                self.report(r, &format!("spec.handlers.{event}"), format!("no function of this chain publishes event {event:?}"));
            }
        }
    }

    fn handler_limits(&mut self, r: &SourcedResource, l: &HandlerLimits) {
        if let Some(n) = l.instructions.filter(|n| !HandlerLimits::INSTRUCTIONS.contains(n)) {
            let range = HandlerLimits::INSTRUCTIONS;
            self.report(r, "spec.handlerLimits.instructions", format!("{n} is outside {}..={}", range.start(), range.end()));
        }
        if let Some(n) = l.memory.filter(|n| !HandlerLimits::MEMORY.contains(n)) {
            let range = HandlerLimits::MEMORY;
            self.report(
                r,
                "spec.handlerLimits.memory",
                format!("{n} bytes is outside {}..={} (64 KiB..256 MiB)", range.start(), range.end()),
            );
        }
        if let Some(t) = l.timeout.filter(|t| t.get().is_zero() || *t > HandlerLimits::MAX_TIMEOUT) {
            self.report(r, "spec.handlerLimits.timeout", format!("{t} must be greater than 0 and at most {}", HandlerLimits::MAX_TIMEOUT));
        }
        if let Some(n) = l.runs_per_request.filter(|n| !HandlerLimits::RUNS_PER_REQUEST.contains(n)) {
            let range = HandlerLimits::RUNS_PER_REQUEST;
            self.report(r, "spec.handlerLimits.runsPerRequest", format!("{n} is outside {}..={}", range.start(), range.end()));
        }
    }

    fn value_match<N>(&mut self, r: &SourcedResource, at: &str, m: &ValueMatch<N>) {
        if m.value.is_some() && m.regex.is_some() {
            self.report(r, at, "give `value` or `regex`, not both");
        }
    }

    fn traffic_policy(&mut self, r: &SourcedResource, p: &TrafficPolicySpec) {
        if self.check_references && !self.services.contains_key(&p.service) {
            self.report(r, "spec.service", format!("no Service named {:?}", p.service));
        }
        if let Some(o) = &p.outlier_detection {
            self.percent(r, "spec.outlierDetection.maxEjectionPercent", o.max_ejection_percent);
        }
        if let Some(h) = &p.health_check {
            if h.http_path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                self.report(r, "spec.healthCheck.httpPath", "must start with '/'");
            }
            if h.interval.get().is_zero() {
                self.report(r, "spec.healthCheck.interval", "must be greater than 0");
            }
            for (field, n) in [("unhealthyThreshold", h.unhealthy_threshold), ("healthyThreshold", h.healthy_threshold)] {
                if n == 0 {
                    self.report(r, &format!("spec.healthCheck.{field}"), "must be at least 1");
                }
            }
        }
        if let Some(c) = &p.connection_pool {
            for (field, v) in
                [("maxConnections", c.max_connections), ("maxPendingRequests", c.max_pending_requests), ("maxRequests", c.max_requests)]
            {
                if v == 0 {
                    self.report(r, &format!("spec.connectionPool.{field}"), "must be at least 1");
                }
            }
        }
        if let Some(tls) = &p.tls {
            for (field, path) in [("ca", &tls.ca), ("certificate", &tls.certificate), ("key", &tls.key)] {
                if let Some(path) = path.as_ref().filter(|_| !tls.mode.is_mesh()) {
                    self.file(r, &format!("spec.tls.{field}"), path);
                }
            }
            if tls.mode == TlsMode::Mutual && (tls.certificate.is_none() || tls.key.is_none()) {
                self.report(r, "spec.tls", "mutual TLS needs `certificate` and `key`");
            }
            if tls.mode.is_mesh() {
                for (field, set) in [
                    ("ca", tls.ca.is_some()),
                    ("certificate", tls.certificate.is_some()),
                    ("key", tls.key.is_some()),
                    ("sni", tls.sni.is_some()),
                ] {
                    if set {
                        self.report(
                            r,
                            &format!("spec.tls.{field}"),
                            "the mesh's TLS uses the proxies' SVIDs: remove it, or say `mode: mutual` for TLS from files",
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::load_str;

    const SERVICE: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: 127.0.0.1:8081, version: v1}]\n---\n";

    fn check(text: &str) -> Result<(), Diagnostics> {
        validate(&load_str(&Arc::from("c.yaml"), &format!("{SERVICE}{text}")).unwrap())
    }

    #[test]
    fn a_good_route_passes() {
        check("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - backends: [{service: web, version: v1}]\n").unwrap();
    }

    #[test]
    fn unknown_backends_and_versions_are_reported_where_written() {
        let err = check("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - backends:\n    - {service: web, version: v9}\n    - {service: api}\n").unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert_eq!(err.0[0].field, "spec.rules[0].backends[0].version");
        assert_eq!(err.0[0].line, 14);
        assert_eq!(err.0[1].field, "spec.rules[0].backends[1].service");
        assert_eq!(err.0[1].line, 15);
    }

    #[test]
    fn target_labels_name_a_transparent_listener_and_an_interface() {
        let workload = |labels: &str| {
            format!("apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: fn\n  labels: {{{labels}}}\nspec: {{service: fn, command: x}}\n---\n")
        };
        let plain = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: plain}\nspec: {address: 127.0.0.1:8080}\n";
        let err = check(&(workload("trefoil.dev/listener: gone, trefoil.dev/interface: not/an/interface") + plain)).unwrap_err();
        let said: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.line, d.message.as_str())).collect();
        assert_eq!(
            said,
            [
                (
                    "metadata.labels.trefoil.dev/listener",
                    11,
                    "no Listener named \"gone\": datapath rules redirect to a transparent Listener"
                ),
                ("metadata.labels.trefoil.dev/interface", 11, "\"not/an/interface\" is not an interface name"),
            ]
        );
        let err = check(&(workload("trefoil.dev/listener: plain") + plain)).unwrap_err();
        assert_eq!(err.0[0].message, "Listener \"plain\" is not `transparent: true`: datapath rules redirect only to one that is");
        let transparent = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: t}\nspec: {address: 127.0.0.1:15001, protocol: tcp, transparent: true}\n";
        check(&(workload("trefoil.dev/listener: t, trefoil.dev/interface: veth-ids") + transparent)).unwrap();
    }

    #[test]
    fn mesh_tls_modes_take_no_files_and_bad_modes_are_located() {
        let policy = |tls: &str| {
            format!("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web}}\nspec:\n  service: web\n  tls:\n{tls}")
        };
        for mode in ["strict", "permissive", "disable"] {
            check(&policy(&format!("    mode: {mode}\n"))).unwrap();
        }
        let err = check(&policy("    mode: strict\n    ca: /etc/ssl/ca.pem\n")).unwrap_err();
        let said: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(said, [("spec.tls.ca", 14)], "{err}");
        assert!(err.0[0].message.contains("SVIDs"), "{err}");
        let bad = problems(&policy("    mode: sometimes\n"));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!((bad[0].line, bad[0].field.as_str()), (13, "spec.tls.mode"), "{bad:?}");
        assert!(bad[0].message.contains("strict"), "{bad:?}");
    }

    /// Every problem, those found reading included.
    fn problems(text: &str) -> Vec<Diagnostic> {
        crate::check_all(&crate::load_all_str(&Arc::from("c.yaml"), &format!("{SERVICE}{text}")), true)
    }

    #[test]
    fn bad_regex_and_percent() {
        let err = problems("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - matches: [{path: {regex: '(['}}]\n    filters: {fault: {abort: {status: 503, percent: 140}}}\n    backends: [{service: web}]\n");
        let fields: Vec<_> = err.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["spec.rules[0].matches[0].path.regex", "spec.rules[0].filters.fault.abort.percent"]);
    }

    #[test]
    fn duplicates_and_impossible_limits_are_reported() {
        let err = check("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec: {service: web}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: b}\nspec: {service: web, healthCheck: {unhealthyThreshold: 0}}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: r}\nspec:\n  service: nope\n  rules:\n  - filters: {rateLimit: {requestsPerSecond: 5, burst: 0}}\n    backends: [{service: web}]\n").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        // A burst of 0 is allowed: it refuses every request, as documented (a switch to close a rule).
        assert_eq!(fields, ["spec.service", "spec.healthCheck.unhealthyThreshold", "spec.service"]);
    }

    #[test]
    fn workloads_are_checked_and_their_versions_are_known_to_routes() {
        let w = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: api-v3}\nspec: {service: api, version: v3, command: ./api}\n---\n";
        check(&format!("{w}apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: api}}\nspec:\n  service: api\n  rules:\n  - backends: [{{service: api, version: v3}}]\n")).unwrap();
        let bad = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec:\n  service: w\n  command: \"\"\n  replicas: 2\n  port: 8080\n  health: {http: healthz}\n";
        let err = check(bad).unwrap_err().to_string();
        assert!(err.contains("c.yaml:12:3: spec.command"), "{err}");
        assert!(err.contains("spec.port: a fixed port allows one replica"), "{err}");
        assert!(err.contains("spec.health.http"), "{err}");
    }

    #[test]
    fn a_workloads_calls_name_other_services_once_each() {
        let api = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: api}\nspec: {service: api, command: ./api}\n---\n";
        check(&format!("{api}apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web}}\nspec: {{service: web, command: ./web, calls: [api]}}\n")).unwrap();
        let bad = format!("{api}apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web}}\nspec:\n  service: web\n  command: ./web\n  calls: [api, api, web, Bad_Name, nowhere]\n");
        let err = check(&bad).unwrap_err();
        let found: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
        assert_eq!(
            found,
            [
                ("spec.calls[1]", "\"api\" is listed twice"),
                ("spec.calls[2]", "\"web\" is this workload's own service, which its sidecar always has"),
                ("spec.calls[3]", "invalid service name \"Bad_Name\""),
                ("spec.calls[4]", "no Service named \"nowhere\""),
            ],
            "{err}"
        );
    }

    #[test]
    fn a_transparent_listener_passes_bytes_to_the_original_destination_only() {
        let good = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: t}\nspec: {address: 10.1.0.1:15001, protocol: tcp, transparent: true}\n";
        check(good).unwrap();
        let bad = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: t}\nspec:\n  address: 0.0.0.0:15001\n  transparent: true\n  tcpBackend: {service: web}\n";
        let err = check(bad).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["spec.tcpBackend", "spec.address"], "{err}");
        assert_eq!(err.0[0].line, 13, "{err}");
    }

    /// The original destination of a request is where its connection was
    /// addressed before a datapath rule redirected it: only a transparent
    /// listener's connections have one.
    const PASSTHROUGH: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: original}\nspec: {originalDestination: true}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: through}\nspec:\n  hosts: ['*']\n  rules: [{backends: [{service: original}]}]\n";

    #[test]
    fn an_original_destination_is_served_on_transparent_listeners_only() {
        let transparent = "---\napiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: t}\nspec: {address: 10.1.0.1:15001, protocol: auto, transparent: true}\n";
        check(&format!("{PASSTHROUGH}{transparent}")).unwrap();
        // A plain listener serving every route leaves that one out (a sidecar
        // next to a transparent gateway); one naming it is refused.
        let plain = "---\napiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: p}\nspec: {address: 127.0.0.1:8080}\n";
        check(&format!("{PASSTHROUGH}{transparent}{plain}")).unwrap();
        let naming = "---\napiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: q}\nspec: {address: 127.0.0.1:8081, routes: [through]}\n";
        let err = check(&format!("{PASSTHROUGH}{transparent}{plain}{naming}")).unwrap_err();
        let found: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(found, [("spec.routes[0]", 32)], "{err}");
        assert!(err.0[0].message.contains("Route \"through\" sends requests to Service \"original\""), "{err}");
    }

    #[test]
    fn an_original_destination_is_no_endpoint_mirror_or_function() {
        let misuse = "---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: both}\nspec:\n  originalDestination: true\n  endpoints: [{address: 127.0.0.1:1}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: copy}\nspec:\n  hosts: [web]\n  rules:\n  - backends: [{service: both}]\n    filters: {requestMirror: {backend: {service: original}}}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: f}\nspec: {service: original}\n";
        let fields: Vec<_> = problems(&format!("{PASSTHROUGH}{misuse}")).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["spec.endpoints", "spec.rules[0].filters.requestMirror.backend.service", "spec.service"]);
    }

    /// The Route the rollouts below drive, to append after them.
    const WEB_ROUTE: &str = "---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules: [{backends: [{service: web}]}]\n";
    const ROLLOUT: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  service: web\n  stable: v1\n  canary: v2\n  route: web\n";

    #[test]
    fn a_canary_rollout_loads_and_passes() {
        let text = format!("{ROLLOUT}  strategy:\n    canary:\n      steps:\n      - setWeight: 20\n      - analysis: {{checks: 2}}\n      - pause: 30s\n      - setWeight: 50\n  analysis:\n    interval: 1s\n    metrics:\n    - successRate: {{min: 99}}\n    - latencyP99: {{max: 250ms}}\n    - latencyVsStable: {{alpha: 0.01}}\n    - prometheus: {{address: 'http://127.0.0.1:9090', query: 'up', min: 1}}\n{WEB_ROUTE}");
        check(&text).unwrap();
        let r = load_str(&Arc::from("c.yaml"), &text).unwrap();
        let Spec::Rollout(ro) = &r[0].resource.spec else { panic!() };
        let Strategy::Canary(c) = &ro.strategy else { panic!() };
        assert_eq!(c.steps[0], CanaryStep::SetWeight(20));
        assert_eq!(c.steps[1], CanaryStep::Analysis(AnalysisStep { checks: 2 }));
        let a = ro.analysis.as_ref().unwrap();
        assert_eq!((a.threshold, a.min_requests), (2, 10), "defaults");
    }

    #[test]
    fn rollout_mistakes_are_located() {
        let text = format!("{ROLLOUT}  strategy:\n    canary:\n      steps:\n      - analysis: {{}}\n      - setWeight: 120\n  analysis:\n    interval: 0s\n    metrics:\n    - prometheus: {{address: '127.0.0.1:9090', query: up}}\n{WEB_ROUTE}");
        let err = check(&text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.strategy.canary.steps[0]",
                "spec.strategy.canary.steps[1].setWeight",
                "spec.analysis.interval",
                "spec.analysis.metrics[0].prometheus.address",
                "spec.analysis.metrics[0].prometheus"
            ]
        );
        assert_eq!(err.0[1].line, 19, "{err}");
        let ab =
            format!("{ROLLOUT}  strategy: {{abTest: {{header: {{name: x-user, value: a}}, cookie: {{name: c, value: d}}}}}}\n{WEB_ROUTE}");
        let fields: Vec<String> = check(&ab).unwrap_err().0.into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["spec.strategy.abTest", "spec.analysis"]);
        // A header name is read as one: a bad one is refused where it is written.
        let err = problems(&ab.replace("x-user", "'x user'"));
        let found: Vec<_> = err.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(found, [("spec.analysis", 10), ("spec.strategy.abTest.header.name", 15)], "{err:?}");
        let routed =
            format!("{ROLLOUT}  strategy: {{blueGreen: {{}}}}\n  analysis: {{metrics: [{{successRate: {{min: 99}}}}]}}\n{WEB_ROUTE}");
        check(&routed).unwrap();
        let err = check(&routed.replace("route: web", "route: api")).unwrap_err();
        assert_eq!((err.0[0].field.as_str(), err.0[0].message.as_str()), ("spec.route", "no Route named \"api\""));
        let same = ROLLOUT.replace("canary: v2", "canary: v1")
            + "  strategy: {blueGreen: {}}\n  analysis: {metrics: [{successRate: {min: 99}}]}\n";
        assert_eq!(check(&same).unwrap_err().0[0].field, "spec.canary");
    }

    #[test]
    fn chains_are_checked_where_written() {
        let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: web, api: http, events: [denied], timeout: 50ms}\n---\n";
        let cnf = "apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain:\n  - function: acl\n    when: {path: {prefix: /api}}\n  - {function: acl, mode: tap}\n  - {function: acl, mode: inline}\n  handlers: {denied: 'log(event)'}\n---\n";
        let route = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - backends: [{service: web}]\n    chain: edge\n";
        check(&format!("{nf}{cnf}{route}")).unwrap();
        let bad_nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: nope, api: extAuthz, timeout: 0s, sendBody: {maxBytes: 0}}\n---\n";
        let bad_cnf = "apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain:\n  - {function: missing, mode: inline, phase: response, when: {path: {exact: nope}}}\n  handlers: {denied: ''}\n---\n";
        let bad_route = route.replace("chain: edge", "chain: other");
        let err = check(&format!("{bad_nf}{bad_cnf}{bad_route}")).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.service",
                "spec.timeout",
                "spec.sendBody.maxBytes",
                "spec.chain[0].function",
                "spec.chain[0].mode",
                "spec.chain[0].when.path",
                "spec.handlers.denied",
                "spec.handlers.denied",
                "spec.rules[0].chain",
            ],
            "{err}"
        );
        assert_eq!(err.0[3].line, 17, "{err}");
        assert!(err.0[4].message.contains("request phase only"), "{err}");
    }

    #[test]
    fn handler_limits_are_bounded_where_written() {
        let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: web, api: http, events: [denied]}\n---\n";
        let cnf = |limits: &str| {
            format!("{nf}apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {{name: edge}}\nspec:\n  chain: [{{function: acl}}]\n  handlers: {{denied: 'trefoil.log(1)'}}\n  handlerLimits: {limits}\n")
        };
        check(&cnf("{instructions: 5000, memory: 65536, timeout: 30s, runsPerRequest: 256}")).unwrap();
        check(&cnf("{}")).unwrap();
        let text = cnf("{instructions: 999, memory: 1024, timeout: 31s, runsPerRequest: 0}");
        let err = check(&text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.handlerLimits.instructions",
                "spec.handlerLimits.memory",
                "spec.handlerLimits.timeout",
                "spec.handlerLimits.runsPerRequest"
            ],
            "{err}"
        );
        assert_eq!((err.0[0].line, err.0[0].column), (18, 19), "{err}");
        assert!(err.0[0].message.contains("1000..=1000000000"), "{err}");
        let err = check(&cnf("{instructions: 2000000000, memory: 268435457, timeout: 0s, runsPerRequest: 257}")).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        // A typo is refused, not ignored.
        assert!(load_str(&Arc::from("c.yaml"), &format!("{SERVICE}{}", cnf("{instruction: 5000}"))).is_err());
        let r = load_str(&Arc::from("c.yaml"), &cnf("{memory: 1048576}")).unwrap();
        let Spec::Cnf(c) = &r[1].resource.spec else { panic!() };
        let l = c.handler_limits.as_ref().unwrap();
        assert_eq!(
            (l.instructions(), l.memory(), l.timeout(), l.runs_per_request()),
            (1_000_000, 1 << 20, crate::Duration::from_secs(1), 16)
        );
    }

    /// What the proxy's compiler alone once found is found by validation.
    #[test]
    fn listener_routes_and_ext_authz_services_are_checked() {
        let listener = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec:\n  address: 127.0.0.1:8080\n  routes: [web, wbe]\n---\n";
        let route = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec: {hosts: [web], rules: [{backends: [{service: web}]}]}\n---\n";
        let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: authz}\nspec: {service: web, api: extAuthz}\n";
        let err = check(&format!("{listener}{route}{nf}")).unwrap_err();
        let found: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(found, [("spec.routes[1]", 12), ("spec.api", 22)], "{err}");
        assert!(err.0[1].message.contains("needs a port with protocol grpc or http2"), "{err}");
        // Each by itself, neither is a problem.
        validate_each(&load_str(&Arc::from("c.yaml"), &format!("{SERVICE}{listener}{route}{nf}")).unwrap()).unwrap();
    }

    /// At apply, a resource is checked against the stored ones it must agree
    /// with, where they are there; what it names may still come later.
    #[test]
    fn writes_are_checked_against_what_is_stored() {
        let stored =
            |text: &str| -> Vec<Resource> { load_str(&Arc::from("stored"), text).unwrap().into_iter().map(|s| s.resource).collect() };
        let new = |text: &str| load_str(&Arc::from("request body"), text).unwrap();
        let nf =
            new("apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: authz}\nspec: {service: web, api: extAuthz}\n");
        validate_against(&nf, &[]).unwrap();
        let err = validate_against(&nf, &stored(SERVICE)).unwrap_err();
        assert_eq!((err.0[0].field.as_str(), err.0[0].line), ("spec.api", 4), "{err}");
        let grpc = SERVICE.replace("spec:\n", "spec:\n  ports: [{port: 80, protocol: grpc}]\n");
        validate_against(&nf, &stored(&grpc)).unwrap();
        // The other way round: a Service that stops speaking gRPC under a stored extAuthz function.
        let stored_nf: Vec<Resource> = nf.iter().map(|s| s.resource.clone()).collect();
        let http = new(&grpc.replace("protocol: grpc", "protocol: http"));
        let err = validate_against(&http, &stored_nf).unwrap_err();
        assert_eq!(err.0[0].field, "spec.ports[0].protocol", "{err}");
        assert!(err.0[0].message.contains("NetworkFunction \"authz\""), "{err}");
        validate_against(&new(&grpc), &stored_nf).unwrap();
        // The Service it replaces is not held against it.
        validate_against(&new(&grpc), &[stored(SERVICE), stored_nf].concat()).unwrap();
        // One TrafficPolicy per service, stored ones counted.
        let policy = |name: &str| {
            format!("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec: {{service: web}}\n")
        };
        let err = validate_against(&new(&policy("b")), &stored(&policy("a"))).unwrap_err();
        assert_eq!(err.0[0].field, "spec.service", "{err}");
        validate_against(&new(&policy("a")), &stored(&policy("a"))).unwrap();
    }

    const POLICY: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n";

    #[test]
    fn a_good_authorization_policy_passes() {
        check(&format!("{POLICY}  selector: {{service: web}}\n  action: allow\n  rules:\n  - from: [{{principals: ['spiffe://trefoil.local/ns/*/sa/api'], ipBlocks: [10.0.0.0/8, 'fd00::/8']}}]\n    to: [{{methods: [GET], paths: ['/api/*', /status], ports: [8080], hosts: ['*.local']}}]\n    when: [{{header: x-env, values: [prod]}}, {{sni: [web.local]}}]\n")).unwrap();
    }

    #[test]
    fn authorization_policy_mistakes_are_located() {
        let text = format!("{POLICY}  selector: {{service: web}}\n  action: permit\n  rules:\n  - from:\n    - ipBlocks: [10.0.0.1/8]\n    - principals: ['spiffe://trefoil.local/ns/we*b/sa/x']\n    to: [{{paths: ['/a*/b']}}]\n");
        let found: Vec<_> = problems(&text).into_iter().map(|d| (d.field, d.line, d.column, d.message)).collect();
        let fields: Vec<_> = found.iter().map(|(f, l, _, _)| (f.as_str(), *l)).collect();
        assert_eq!(
            fields,
            [
                ("spec.action", 12),
                ("spec.rules[0].from[0].ipBlocks[0]", 15),
                ("spec.rules[0].from[1].principals[0]", 16),
                ("spec.rules[0].to[0].paths[0]", 17)
            ],
            "{found:?}"
        );
        assert!(found[0].3.contains("unknown variant `permit`, expected one of `allow`, `deny`, `audit`"), "{found:?}");
        assert!(found[1].3.contains("host bits set: the network is 10.0.0.0/8"), "{found:?}");
        assert!(found[2].3.contains("a wildcard `*` must be a whole path segment"), "{found:?}");
        assert!(found[1].2 > 1, "a column: {found:?}");

        let empty = format!("{POLICY}  selector: {{}}\n  action: deny\n  rules: []\n");
        let err = check(&empty).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(fields, [("spec.selector", 11), ("spec.rules", 13)], "{err}");
        assert!(err.to_string().contains("c.yaml:13:"), "{err}");

        let lists = format!("{POLICY}  selector: {{service: nope}}\n  action: allow\n  rules:\n  - from: []\n    to: [{{}}]\n    when: [{{values: [a]}}, {{header: x-a}}]\n");
        let err = check(&lists).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.selector.service",
                "spec.rules[0].from",
                "spec.rules[0].to[0]",
                "spec.rules[0].when[0].header",
                "spec.rules[0].when[1].values"
            ],
            "{err}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(!valid_name("Web"));
        assert!(!valid_name("-web"));
        assert!(valid_name("web-v1.edge"));
    }
}
