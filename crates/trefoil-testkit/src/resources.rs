//! Resources as the processes under test read them: YAML files and API
//! bodies. Tests build them as typed `trefoil_model` values, so a field the
//! model renames or retypes breaks the test at compile time instead of
//! surfacing as a puzzling runtime error; YAML text stays only where the
//! text itself is the point (located errors, YAML bombs, malformed input).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use trefoil_model::spec::{
    AppProtocol, ChainStep, CnfSpec, Endpoint, FailurePolicy, FunctionApi, ListenerProtocol, ListenerSpec, ListenerTimeouts,
    NetworkFunctionSpec, PathMatch, PathNormalization, Phase, ProxySpec, RetryOn, RetryPolicy, RouteMatch, RouteRule, RouteSpec,
    ServicePort, ServiceSpec, StepMode, TrafficPolicySpec, ValueMatch, WeightedBackend, WorkloadHealth, WorkloadSpec,
};
use trefoil_model::{Duration, Metadata, Resource, Spec, API_VERSION};

/// What can be written as a YAML resource file.
pub trait ToYaml {
    /// The YAML text: documents separated by `---`.
    fn to_yaml(&self) -> String;
}

/// YAML text as it is, for tests about the text itself.
impl ToYaml for str {
    fn to_yaml(&self) -> String {
        self.to_string()
    }
}

impl ToYaml for String {
    fn to_yaml(&self) -> String {
        self.clone()
    }
}

/// One document, written as `trefoil get -o yaml` writes it.
impl ToYaml for Resource {
    fn to_yaml(&self) -> String {
        // A Resource is plain data: its serialization cannot fail.
        let value = serde_json::to_value(self).expect("a Resource serializes to JSON");
        trefoil_model::located_yaml::to_string(&value)
    }
}

impl ToYaml for [Resource] {
    fn to_yaml(&self) -> String {
        self.iter().map(ToYaml::to_yaml).collect::<Vec<_>>().join("---\n")
    }
}

impl ToYaml for Vec<Resource> {
    fn to_yaml(&self) -> String {
        self.as_slice().to_yaml()
    }
}

impl<T: ToYaml + ?Sized> ToYaml for &T {
    fn to_yaml(&self) -> String {
        (**self).to_yaml()
    }
}

/// `n` milliseconds, as resources take durations.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds, as resources take durations.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Owned strings, for the list fields of specs (hosts, events, args...).
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A resource of this build's API version named `name`.
pub fn resource(name: &str, spec: Spec) -> Resource {
    Resource { api_version: API_VERSION.to_string(), metadata: Metadata { name: name.to_string(), ..Metadata::default() }, spec }
}

/// A Listener's spec at `address`, speaking HTTP, with every default.
pub fn listener_spec(address: SocketAddr) -> ListenerSpec {
    ListenerSpec {
        address,
        protocol: ListenerProtocol::default(),
        tls: None,
        routes: Vec::new(),
        tcp_backend: None,
        proxy: None,
        service: None,
        direction: "inbound".to_string(),
        path_normalization: PathNormalization::default(),
        timeouts: ListenerTimeouts::default(),
        transparent: false,
        mesh_tls: None,
        on_demand: false,
    }
}

/// A Listener named `name` on `address`, with every default.
pub fn listener(name: &str, address: SocketAddr) -> Resource {
    resource(name, Spec::Listener(listener_spec(address)))
}

/// A gateway of `trefoil up`: Proxy `proxy` without an access log, and
/// its Listener `listener` on `address` for traffic going out to the mesh.
pub fn gateway(proxy: &str, listener: &str, address: SocketAddr) -> Vec<Resource> {
    let spec = ProxySpec { access_log: "off".to_string(), ..ProxySpec::with_defaults() };
    let listener_spec = ListenerSpec { proxy: Some(proxy.to_string()), direction: "outbound".to_string(), ..listener_spec(address) };
    vec![resource(proxy, Spec::Proxy(spec)), resource(listener, Spec::Listener(listener_spec))]
}

/// A Service speaking HTTP on port 80 with static endpoints, given as (address, version).
pub fn service(name: &str, endpoints: &[(SocketAddr, &str)]) -> Resource {
    service_speaking(name, AppProtocol::Http, endpoints)
}

/// A Service like [`service`] whose endpoints speak `protocol`.
pub fn service_speaking(name: &str, protocol: AppProtocol, endpoints: &[(SocketAddr, &str)]) -> Resource {
    resource(
        name,
        Spec::Service(ServiceSpec {
            ports: vec![ServicePort { name: "main".to_string(), port: 80, protocol }],
            endpoints: endpoints
                .iter()
                .map(|(address, version)| Endpoint { address: *address, version: version.to_string(), mesh_tls: false })
                .collect(),
            ..ServiceSpec::default()
        }),
    )
}

/// A backend: all versions of `service`, weight 1.
pub fn backend(service: &str) -> WeightedBackend {
    WeightedBackend { service: service.to_string(), version: None, weight: 1 }
}

/// A backend: one version of `service`, with its weight.
pub fn version_backend(service: &str, version: &str, weight: u32) -> WeightedBackend {
    WeightedBackend { service: service.to_string(), version: Some(version.to_string()), weight }
}

/// A rule matching everything, to all of `service`; other fields by struct update.
pub fn rule_to(service: &str) -> RouteRule {
    RouteRule { backends: vec![backend(service)], ..RouteRule::default() }
}

/// A Route for `hosts` with `rules`.
pub fn route(name: &str, hosts: &[&str], rules: Vec<RouteRule>) -> Resource {
    resource(name, Spec::Route(RouteSpec { hosts: strings(hosts), service: None, rules }))
}

/// A Route named after `service`, for every host, with one rule to it.
pub fn route_all(service: &str) -> Resource {
    route(service, &["*"], vec![rule_to(service)])
}

/// A Route `web` for every host, one rule per (path prefix, CNF), each to Service `web`.
pub fn chained_route(rules: &[(&str, &str)]) -> Resource {
    let rules = rules
        .iter()
        .map(|(prefix, cnf)| RouteRule { matches: vec![path_prefix(prefix)], chain: Some(cnf.to_string()), ..rule_to("web") })
        .collect();
    route("web", &["*"], rules)
}

/// A match on a path prefix (segment-aware).
pub fn path_prefix(prefix: &str) -> RouteMatch {
    RouteMatch { path: Some(PathMatch::Prefix(prefix.to_string())), ..RouteMatch::default() }
}

/// A header (or query parameter) condition: `name` present. A test's
/// name is meant to parse: one that does not fails the test.
pub fn present<N: std::str::FromStr<Err: std::fmt::Debug>>(name: &str) -> ValueMatch<N> {
    ValueMatch { name: name.parse().expect("a test's header name parses"), value: None, regex: None, invert: false }
}

/// A header (or query parameter) condition: `name` equal to `value`.
pub fn equals<N: std::str::FromStr<Err: std::fmt::Debug>>(name: &str, value: &str) -> ValueMatch<N> {
    ValueMatch { value: Some(value.to_string()), ..present(name) }
}

/// Retries: `attempts` after the first, on `on`, `backoff` apart, no per-try timeout or budget.
pub fn retry(attempts: u32, on: &[RetryOn], backoff: Duration) -> RetryPolicy {
    RetryPolicy { attempts, per_try_timeout: None, on: on.to_vec(), status_codes: Vec::new(), budget: None, backoff }
}

/// A TrafficPolicy named after the service it shapes.
pub fn traffic_policy(spec: TrafficPolicySpec) -> Resource {
    resource(&spec.service.clone(), Spec::TrafficPolicy(spec))
}

/// A NetworkFunction's spec: `service` over HTTP/JSON, the model's defaults
/// for the rest (no events, failure policy closed, 200 ms, no body).
pub fn function(service: &str) -> NetworkFunctionSpec {
    NetworkFunctionSpec {
        service: service.to_string(),
        api: FunctionApi::Http,
        events: Vec::new(),
        failure_policy: FailurePolicy::Closed,
        timeout: ms(200),
        send_body: None,
    }
}

/// A NetworkFunction named `name` (chain steps call it by that name).
pub fn network_function(name: &str, spec: NetworkFunctionSpec) -> Resource {
    resource(name, Spec::NetworkFunction(spec))
}

/// A chain step calling `function` out on the request phase, always.
pub fn step(function: &str) -> ChainStep {
    ChainStep { function: function.to_string(), mode: StepMode::Callout, phase: Phase::Request, when: None }
}

/// A CNF whose chain is `steps`.
pub fn cnf(name: &str, steps: Vec<ChainStep>) -> Resource {
    resource(name, Spec::Cnf(CnfSpec { chain: steps, ..CnfSpec::default() }))
}

/// A CNF like [`cnf`] with one handler: `script` (Lua) for `event`.
pub fn cnf_with_handler(name: &str, steps: Vec<ChainStep>, event: &str, script: &str) -> Resource {
    let handlers = [(event.to_string(), script.to_string())].into();
    resource(name, Spec::Cnf(CnfSpec { chain: steps, handlers, ..CnfSpec::default() }))
}

/// A Workload's spec: one replica of version v1 of `service`, running
/// `command` with `args`, the model's defaults for the rest.
pub fn workload(service: &str, command: &str, args: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        service: service.to_string(),
        version: "v1".to_string(),
        command: command.to_string(),
        args: strings(args),
        env: BTreeMap::new(),
        replicas: 1,
        port: None,
        health: None,
        node: None,
        calls: None,
    }
}

/// A probe of `path` over HTTP, for a Workload's `health`.
pub fn http_health(path: &str) -> Option<WorkloadHealth> {
    Some(WorkloadHealth { http: Some(path.to_string()), tcp: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the builders write reads back as the same resources, through
    /// the loader the processes under test use.
    fn round_trips(resources: Vec<Resource>) {
        let text = resources.to_yaml();
        let loaded = trefoil_model::load_str(&"test.yaml".into(), &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let loaded: Vec<Resource> = loaded.into_iter().map(|r| r.resource).collect();
        assert_eq!(loaded, resources, "{text}");
    }

    #[test]
    fn routes_services_and_listeners_read_back_as_written() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let retried = RouteRule { retry: Some(retry(2, &[RetryOn::ServerError], ms(1))), timeout: Some(ms(200)), ..rule_to("web") };
        round_trips(vec![
            listener("public", addr),
            service("web", &[(addr, "v1"), (addr, "2")]),
            route("web", &["*", "web.example.com"], vec![retried, RouteRule { matches: vec![path_prefix("/a")], ..rule_to("web") }]),
            chained_route(&[("/", "edge")]),
        ]);
    }

    #[test]
    fn functions_chains_handlers_and_workloads_read_back_as_written() {
        let script =
            "local v = trefoil.call('scanner')\ntrefoil.set_header(\"x-scan\", v.verdict)\nif x then trefoil.deny(429, 'no\\n') end";
        round_trips(vec![
            network_function("acl", NetworkFunctionSpec { events: strings(&["checked"]), ..function("acl") }),
            cnf("edge", vec![step("acl"), ChainStep { mode: StepMode::Tap, phase: Phase::Response, ..step("tap") }]),
            cnf_with_handler("scan", vec![step("acl")], "checked", script),
            resource(
                "web",
                Spec::Workload(WorkloadSpec {
                    health: http_health("/healthz"),
                    ..workload("web", "trefoil", &["demo-app", "--fail-percent", "50", "off"])
                }),
            ),
        ]);
    }
}

/// A kind's spec type, taken out of the [`Spec`] enum; what tests read back
/// from the API (`Up::spec`).
pub trait FromSpec: Sized {
    /// `Some` when `spec` is of this kind.
    fn from_spec(spec: Spec) -> Option<Self>;
}

macro_rules! from_spec {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl FromSpec for $ty {
            fn from_spec(spec: Spec) -> Option<Self> {
                match spec {
                    Spec::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    )*};
}

from_spec! {
    Proxy => ProxySpec,
    Route => RouteSpec,
    Workload => WorkloadSpec,
    Endpoints => trefoil_model::spec::EndpointsSpec,
    Cnf => CnfSpec,
    RolloutStatus => trefoil_model::spec::RolloutStatusSpec,
}
