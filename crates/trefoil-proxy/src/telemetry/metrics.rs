//! Prometheus metrics, with the names and labels of the design contract.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::http::local_reply::LocalReply;

/// A cheap-to-clone label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Label(Arc<str>);

static EMPTY: LazyLock<Label> = LazyLock::new(|| Label(Arc::from("")));

impl Default for Label {
    /// The empty label, shared rather than allocated per use.
    fn default() -> Self {
        EMPTY.clone()
    }
}

pub(crate) fn label(s: &str) -> Label {
    Label(Arc::from(s))
}

impl std::ops::Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub direction: Label,
    pub route: Label,
    pub service: Label,
    pub version: Label,
    pub status_code: u16,
    pub cnf: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DurationLabels {
    pub direction: Label,
    pub route: Label,
    pub service: Label,
    pub version: Label,
    pub cnf: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TcpLabels {
    pub direction: Label,
    pub service: Label,
    pub version: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TcpBytesLabels {
    pub direction: Label,
    pub service: Label,
    pub version: Label,
    /// `upstream` (bytes sent to the service) or `downstream` (sent to the client).
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RetryLabels {
    pub direction: Label,
    pub route: Label,
    pub service: Label,
    pub version: Label,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub service: Label,
    pub version: Label,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub service: Label,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TlsLabels {
    pub listener: Label,
    /// The verified client identity; empty without a client certificate.
    pub peer_identity: Label,
    pub result: &'static str,
}

/// A gRPC call that ended with a status (sent with HTTP 200, whatever the status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    pub direction: Label,
    pub route: Label,
    pub service: Label,
    pub version: Label,
    pub grpc_status: u32,
}

/// A reply the proxy made itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LocalReplyLabels {
    pub direction: Label,
    pub flag: LocalReply,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: &'static str,
}

/// One call of a chain step to its function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ChainLabels {
    pub cnf: Label,
    pub function: Label,
    /// `allow`, `deny`, `failed_open`, `failed_closed`, `tapped`, `tap_failed`;
    /// inline steps: `inlined`, `failed_after_resume`, `loop`.
    pub result: &'static str,
}

/// One run of a CNF's event handler.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandlerLabels {
    pub cnf: Label,
    pub event: Label,
    /// `ok`, `deny`, `error`, `cpu_limit`, `memory_limit`, `deadline` or `unavailable`.
    pub result: &'static str,
}

/// One datapath change a CNF's handler asked for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DatapathLabels {
    pub cnf: Label,
    /// `added`, `removed`, `refused` (the control plane said no) or `unavailable`.
    pub result: &'static str,
}

/// One authorization decision that refused or audited a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthzLabels {
    /// The policy whose rule matched; empty for a default denial.
    pub policy: String,
    /// The rule's index in the policy, or `default-deny`.
    pub rule: String,
}

/// Every metric the proxy exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tcp_bytes: Family<TcpBytesLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub outlier_ejections: Family<EndpointLabels, Counter>,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub overflows: Family<ServiceLabels, Counter>,
    pub local_replies: Family<LocalReplyLabels, Counter>,
    pub grpc_responses: Family<GrpcLabels, Counter>,
    pub mirrors: Family<ResultLabels, Counter>,
    pub chain_calls: Family<ChainLabels, Counter>,
    pub chain_handler_runs: Family<HandlerLabels, Counter>,
    pub chain_datapath_changes: Family<DatapathLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    pub access_log_dropped: Counter,
    pub connections_shed: Counter,
    pub spans_dropped: Counter,
    pub tls_handshakes: Family<TlsLabels, Counter>,
    pub authz_denied: Family<AuthzLabels, Counter>,
    pub authz_audited: Family<AuthzLabels, Counter>,
}

/// Latency buckets from half a millisecond to thirty seconds.
const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register("trefoil_requests", "HTTP requests completed, by response status", requests.clone());
        let duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS.into_iter()));
        registry.register_with_unit("trefoil_request_duration", "Time from request to response headers", Unit::Seconds, duration.clone());
        let tcp_connections = Family::default();
        registry.register("trefoil_tcp_connections", "Opaque TCP connections proxied", tcp_connections.clone());
        let tcp_bytes = Family::default();
        registry.register("trefoil_tcp_bytes", "Bytes proxied over opaque TCP", tcp_bytes.clone());
        let retries = Family::default();
        registry.register("trefoil_retries", "Retried upstream attempts", retries.clone());
        let outlier_ejections = Family::default();
        registry.register("trefoil_outlier_ejections", "Endpoints ejected by outlier detection", outlier_ejections.clone());
        let endpoint_healthy = Family::default();
        registry.register("trefoil_endpoint_healthy", "1 when the endpoint passes active health checks", endpoint_healthy.clone());
        let overflows = Family::default();
        registry.register("trefoil_upstream_overflows", "Requests refused by a circuit breaker or with no endpoint", overflows.clone());
        let local_replies = Family::default();
        registry.register("trefoil_local_replies", "Replies the proxy made itself, by flag", local_replies.clone());
        let grpc_responses = Family::default();
        registry.register(
            "trefoil_grpc_responses",
            "gRPC calls answered with HTTP 200, by the grpc-status they ended with",
            grpc_responses.clone(),
        );
        let mirrors = Family::default();
        registry.register("trefoil_mirror_requests", "Mirrored request copies, by outcome", mirrors.clone());
        let chain_calls = Family::default();
        registry.register("trefoil_chain_calls", "Calls of CNF chain steps to their network functions, by result", chain_calls.clone());
        let chain_handler_runs = Family::default();
        registry.register("trefoil_chain_handler_runs", "Runs of CNF event handlers, by result", chain_handler_runs.clone());
        let chain_datapath_changes = Family::default();
        registry.register(
            "trefoil_chain_datapath_changes",
            "Datapath rules CNF event handlers added or removed through the control plane, by result",
            chain_datapath_changes.clone(),
        );
        let config_reloads = Family::default();
        registry.register("trefoil_config_reloads", "Configuration reload attempts, by result", config_reloads.clone());
        let config_version = Gauge::default();
        registry.register("trefoil_config_version", "Version of the configuration in force", config_version.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "trefoil_access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let connections_shed = Counter::default();
        registry.register(
            "trefoil_connections_shed",
            "Client connections closed unserved because the process ran out of file descriptors",
            connections_shed.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "trefoil_tls_handshakes",
            "TLS handshakes on listeners, by verified peer identity and result",
            tls_handshakes.clone(),
        );
        let authz_denied = Family::default();
        registry.register(
            "trefoil_authz_denied",
            "Requests an AuthorizationPolicy refused (403 rbac_denied), by policy and rule",
            authz_denied.clone(),
        );
        let authz_audited = Family::default();
        registry.register(
            "trefoil_authz_audited",
            "Requests an audit AuthorizationPolicy rule matched, by policy and rule",
            authz_audited.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register("trefoil_spans_dropped", "Spans dropped because the exporter fell behind", spans_dropped.clone());
        Metrics {
            authz_denied,
            authz_audited,
            tls_handshakes,
            spans_dropped,
            registry,
            requests,
            duration,
            tcp_connections,
            tcp_bytes,
            retries,
            outlier_ejections,
            endpoint_healthy,
            overflows,
            local_replies,
            grpc_responses,
            mirrors,
            chain_calls,
            chain_handler_runs,
            chain_datapath_changes,
            config_reloads,
            config_version,
            access_log_dropped,
            connections_shed,
        }
    }
}

/// The labels of one request series. Hashing and comparing go by the
/// identity of the label values (all shared `Arc`s from the snapshot), so a
/// lookup costs a few pointer compares instead of hashing strings.
#[derive(Clone, Debug)]
pub(crate) struct SeriesKey {
    pub direction: Label,
    pub route: Label,
    pub service: Label,
    pub version: Label,
    /// The CNF whose chain the request went through; empty for none.
    pub cnf: Label,
    pub status_code: u16,
}

impl SeriesKey {
    fn ptrs(&self) -> [usize; 5] {
        [&self.direction, &self.route, &self.service, &self.version, &self.cnf].map(|l| Arc::as_ptr(&l.0) as *const u8 as usize)
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.status_code == other.status_code && self.ptrs() == other.ptrs()
    }
}
impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for p in self.ptrs() {
            state.write_usize(p);
        }
        state.write_u16(self.status_code);
    }
}

/// Multiply-rotate hashing for pointer keys; SipHash's DoS resistance buys nothing here.
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
}

/// Series handles a worker thread has used under one config version.
#[derive(Default)]
struct SeriesCache {
    config_version: u64,
    series: HashMap<SeriesKey, (Counter, Histogram), BuildHasherDefault<PtrHasher>>,
}

/// Entries kept at most; past this a thread starts its cache afresh.
const SERIES_CACHE_LIMIT: usize = 4096;

thread_local! {
    static SERIES: RefCell<SeriesCache> = RefCell::default();
}

impl Metrics {
    /// Counts one finished request and observes its duration.
    /// `config_version` scopes the per-thread cache, whose keys hold labels of that snapshot.
    pub(crate) fn record_request(&self, config_version: u64, key: &SeriesKey, elapsed: Duration) {
        SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.config_version != config_version || cache.series.len() >= SERIES_CACHE_LIMIT {
                cache.series.clear();
                cache.config_version = config_version;
            }
            // Used in place: cloning the handles would bump reference counts every worker shares.
            if !cache.series.contains_key(key) {
                let handles = self.series(key);
                cache.series.insert(key.clone(), handles);
            }
            let Some((counter, histogram)) = cache.series.get(key) else { return };
            counter.inc();
            histogram.observe(elapsed.as_secs_f64());
        });
    }

    fn series(&self, key: &SeriesKey) -> (Counter, Histogram) {
        let cnf = key.cnf.clone();
        let requests = self
            .requests
            .get_or_create(&RequestLabels {
                direction: key.direction.clone(),
                route: key.route.clone(),
                service: key.service.clone(),
                version: key.version.clone(),
                status_code: key.status_code,
                cnf: cnf.clone(),
            })
            .clone();
        let duration = self
            .duration
            .get_or_create(&DurationLabels {
                direction: key.direction.clone(),
                route: key.route.clone(),
                service: key.service.clone(),
                version: key.version.clone(),
                cnf,
            })
            .clone();
        (requests, duration)
    }

    /// Every metric in the OpenMetrics text format.
    pub(crate) fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every metric in the classic Prometheus text format (0.0.4), which
    /// `promtool check metrics` and older scrapers read.
    pub(crate) fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

/// OpenMetrics names a counter family without `_total` and has `# UNIT` and
/// `# EOF` lines; the classic format names the family as its samples and has neither.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counter_families_like_their_samples() {
        let m = Metrics::default();
        m.config_version.set(3);
        m.access_log_dropped.inc();
        let text = m.encode_prometheus();
        assert!(text.contains("# TYPE trefoil_access_log_dropped_total counter\n"));
        assert!(text.contains("# HELP trefoil_access_log_dropped_total "));
        assert!(text.contains("trefoil_access_log_dropped_total 1\n"));
        assert!(text.contains("# TYPE trefoil_config_version gauge\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
