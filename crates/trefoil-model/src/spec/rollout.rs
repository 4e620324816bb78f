//! `Rollout`: moves a service's traffic from its stable version to a canary
//! version step by step, judged by live metrics (the Flagger Canary shape).
//!
//! The spec is what people write; how far a rollout got lives in
//! [`RolloutStatusSpec`](super::RolloutStatusSpec), written only by the
//! control plane's rollout controller.

use serde::{Deserialize, Serialize};

use crate::parsed::{HeaderName, ParseError};
use crate::spec::ValueMatch;
use crate::Duration;

/// A rollout of `canary` over `stable` for one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// The service whose traffic moves.
    pub service: String,
    /// The version serving now; all traffic returns to it on a roll back.
    pub stable: String,
    /// The version being rolled out.
    pub canary: String,
    /// The Route whose backends for `service` the rollout rewrites.
    pub route: String,
    pub strategy: Strategy,
    /// How the canary is judged; without it only the steps and time decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// Exactly one way of exposing the canary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Strategy {
    /// A growing share of all requests, step by step.
    Canary(CanaryStrategy),
    /// Requests carrying a header or cookie go to the canary, the rest to stable.
    AbTest(AbTestStrategy),
    /// The canary receives copies of requests; clients only see stable's answers.
    Mirror(MirrorStrategy),
    /// All traffic switches to the canary at once, and back if analysis fails.
    BlueGreen(JudgedStrategy),
}

/// The steps of a canary rollout, run in order; after the last one the canary
/// takes all traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStrategy {
    pub steps: Vec<CanaryStep>,
}

/// One step: exactly one of `setWeight`, `pause` or `analysis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CanaryStep {
    /// The canary's share of requests, in percent.
    SetWeight(u32),
    /// Waits this long (analysis keeps running meanwhile).
    Pause(Duration),
    /// Waits until `checks` analysis checks in a row have passed.
    Analysis(AnalysisStep),
}

/// An analysis gate inside the canary steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisStep {
    #[serde(default = "one")]
    pub checks: u32,
}

/// A/B test: which requests go to the canary, and how many passing checks
/// promote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbTestStrategy {
    /// Requests with this header (exact value) go to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NameValue<HeaderName>>,
    /// Requests with this cookie (exact value) go to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NameValue>,
    /// Passing analysis checks in a row before the canary is promoted.
    #[serde(default = "three")]
    pub checks: u32,
}

/// A header or cookie name and its exact value; `N` is how the name is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameValue<N = String> {
    pub name: N,
    pub value: String,
}

impl NameValue {
    /// The condition on the `Cookie` header that holds when this cookie
    /// has this value: the pair as one `name=value` of the header, whole.
    /// Fails only on a value so long that its pattern is over the regex size limit.
    pub fn cookie_condition(&self) -> Result<ValueMatch<HeaderName>, ParseError> {
        let regex = format!("(^|.*;\\s*){}={}(;.*|\\s*$)", regex_escape(&self.name), regex_escape(&self.value)).parse()?;
        Ok(ValueMatch { name: http::header::COOKIE.into(), value: None, regex: Some(regex), invert: false })
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Dark launch: the canary gets copies of `percent` of the requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorStrategy {
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Passing analysis checks in a row before the canary is promoted.
    #[serde(default = "three")]
    pub checks: u32,
}

/// A strategy whose only parameter is how many passing checks promote.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgedStrategy {
    /// Passing analysis checks in a row before the rollout succeeds.
    #[serde(default = "three")]
    pub checks: u32,
}

/// When and by what the canary is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Time between checks; each check looks at the traffic since the last one.
    #[serde(default = "ten_seconds")]
    pub interval: Duration,
    /// Failed checks (in all) that roll the canary back.
    #[serde(default = "two")]
    pub threshold: u32,
    /// Fewer canary requests than this in an interval make the check
    /// inconclusive: a quiet canary is not judged on nothing.
    #[serde(default = "ten")]
    pub min_requests: u64,
    pub metrics: Vec<AnalysisMetric>,
}

/// One figure a check compares with its bounds; every metric must hold for a
/// check to pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum AnalysisMetric {
    /// Share of the canary's requests not answered with 5xx, in percent.
    SuccessRate(MinBound),
    /// The canary's 99th percentile latency.
    LatencyP99(LatencyBound),
    /// The canary's latencies compared with stable's over the same interval:
    /// fails when a one-sided Mann-Whitney U test finds the canary slower
    /// with a p-value below `alpha`.
    LatencyVsStable(SignificanceBound),
    /// A PromQL instant query whose single value must lie within bounds.
    Prometheus(PrometheusMetric),
}

/// The significance level of a statistical comparison, e.g. 0.01.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignificanceBound {
    pub alpha: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MinBound {
    pub min: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyBound {
    pub max: Duration,
}

/// A query to a Prometheus server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusMetric {
    /// `http://host:port` of the server.
    pub address: String,
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn ten() -> u64 {
    10
}
fn hundred() -> f64 {
    100.0
}
fn ten_seconds() -> Duration {
    Duration::from_millis(10_000)
}
