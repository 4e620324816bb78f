//! `Route`: how requests are matched and where they go (the Gateway API
//! HTTPRoute shape, with Istio-style resilience on each rule).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::parsed::{HeaderName, HeaderValue, Method, Regex};
use crate::Duration;

/// Routing rules for a set of hosts (gateway) or for a service (sidecar).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Host names (`Host`/`:authority`, port ignored); `*.example.com` wildcards allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The service whose traffic this route shapes; its name also counts as a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub rules: Vec<RouteRule>,
}

/// One rule: the first rule whose matches hold wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Alternatives: any one matching selects the rule; empty matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "RouteFilters::is_empty")]
    pub filters: RouteFilters,
    pub backends: Vec<WeightedBackend>,
    /// Deadline for the response headers, across all attempts, counted once
    /// the request body is in; 504 when it passes. Absent: 15 s (Envoy's
    /// default); `0s`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Name of the CNF chain applied to this rule's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl RouteRule {
    /// The deadline of a rule without `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

    /// The deadline in force: `timeout`, or the default; `None` for `0s`.
    pub fn effective_timeout(&self) -> Option<std::time::Duration> {
        let timeout = self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT).get();
        (!timeout.is_zero()).then_some(timeout)
    }
}

/// All conditions of one match must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch<HeaderName>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
}

/// Exactly one of `exact`, `prefix` (segment-aware) or `regex` (whole path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// A header or query parameter condition: `value` (exact), `regex`, or
/// neither (present). `N` is how the name is read: a [`HeaderName`] for
/// headers, any text for query parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch<N = String> {
    pub name: N,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Regex>,
    /// Inverts the condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Filters applied to the requests of a rule, in a fixed order: rate limit,
/// fault, header modifiers, mirror.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<LocalRateLimit>,
}

impl RouteFilters {
    pub fn is_empty(&self) -> bool {
        self == &RouteFilters::default()
    }
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<HeaderName, HeaderValue>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<HeaderName, HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<HeaderName>,
}

/// Fire-and-forget copies of requests; the mirror's answer is discarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend: BackendRef,
    #[serde(default = "hundred")]
    pub percent: f64,
}

/// Injected delays and aborts, each applied to a percentage of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed: Duration,
    #[serde(default = "hundred")]
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub status: u16,
    #[serde(default = "hundred")]
    pub percent: f64,
}

/// A token bucket shared by all requests of the rule on this proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    pub requests_per_second: f64,
    /// Bucket size; defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Status of refused requests.
    #[serde(default = "too_many")]
    pub status: u16,
}

fn too_many() -> u16 {
    429
}

/// A service, optionally narrowed to one version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A backend with its share of the rule's traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

impl WeightedBackend {
    pub fn backend_ref(&self) -> BackendRef {
        BackendRef { service: self.service.clone(), version: self.version.clone() }
    }
}

fn one() -> u32 {
    1
}

/// Retries of failed attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`,
    /// `retriable-status-codes` (with `statusCodes`), `per-try-timeout`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// Base of the jittered exponential back-off between attempts.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
}

fn default_backoff() -> Duration {
    Duration::from_millis(25)
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::GatewayError, RetryOn::Reset]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
    #[serde(rename = "per-try-timeout")]
    PerTryTimeout,
}

/// Caps retries to a share of live traffic so retries cannot amplify an outage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed as a percentage of requests in the last 10 seconds.
    pub percent: f64,
    /// Retries always allowed per second, whatever the traffic.
    #[serde(default = "ten")]
    pub min_retries_per_second: u32,
}

fn hundred() -> f64 {
    100.0
}
fn ten() -> u32 {
    10
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn a_rule_has_a_deadline_unless_it_says_0s() {
        let mut rule = RouteRule::default();
        assert_eq!(rule.effective_timeout(), Some(std::time::Duration::from_secs(15)));
        rule.timeout = Some(Duration::from_millis(250));
        assert_eq!(rule.effective_timeout(), Some(std::time::Duration::from_millis(250)));
        rule.timeout = Some(Duration::default());
        assert_eq!(rule.effective_timeout(), None);
    }
}
