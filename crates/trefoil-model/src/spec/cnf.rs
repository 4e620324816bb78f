//! `NetworkFunction` and `CNF`: functions the proxy calls on a request's
//! way, and the chains of them that route rules apply (a rule's `chain`
//! names the CNF).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::RouteMatch;
use crate::Duration;

/// A network function: a service the proxy asks about requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkFunctionSpec {
    /// The Service whose endpoints run the function.
    pub service: String,
    /// How the proxy calls the function (`http` when not given: the API any
    /// language can speak, and all an inline-only function needs).
    #[serde(default)]
    pub api: FunctionApi,
    /// Names of the events the function publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// What happens to the request when the function cannot answer in time.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How long one call may take before the failure policy applies.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Sends the request body too, up to `maxBytes`; without it the function sees metadata only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_body: Option<SendBody>,
}

fn default_timeout() -> Duration {
    Duration::from_millis(200)
}

/// The call-out protocol a function speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FunctionApi {
    /// gRPC `envoy.service.auth.v3.Authorization/Check`: existing ext_authz services work unchanged.
    ExtAuthz,
    /// A JSON POST, for functions written in any language.
    #[default]
    Http,
}

/// Whether a request goes on (`open`) or is refused (`closed`) when its function fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    Open,
    #[default]
    Closed,
}

/// How much of the request body a function receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendBody {
    /// Bodies larger than this are refused with 413 rather than sent in part.
    pub max_bytes: u32,
}

/// A containerised network function chain: the steps a route rule's traffic goes through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CnfSpec {
    /// The node the CNF belongs to; a placement hint for runtimes, not used by proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Steps in the order they run.
    pub chain: Vec<ChainStep>,
    /// Event name -> Lua handler script, run in the proxy when a step's verdict carries the event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handlers: BTreeMap<String, String>,
    /// Bounds of each handler run; unset fields keep their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_limits: Option<HandlerLimits>,
}

/// Bounds of a CNF's handler runs. Every field is optional: an unset one
/// keeps its default ([`HandlerLimits::DEFAULT_INSTRUCTIONS`] and the others).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandlerLimits {
    /// Lua VM instructions one run may execute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    /// Bytes a run may allocate above the loaded libraries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Wall-clock time for one run, calls to other functions included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Handler runs per request at most, emitted events included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_per_request: Option<u32>,
}

impl HandlerLimits {
    pub const DEFAULT_INSTRUCTIONS: u64 = 1_000_000;
    pub const DEFAULT_MEMORY: u64 = 8 * 1024 * 1024;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_RUNS_PER_REQUEST: u32 = 16;
    /// Bounds validation accepts: wide enough for real handlers, narrow
    /// enough that one request cannot hold a worker or the heap for long.
    pub const INSTRUCTIONS: std::ops::RangeInclusive<u64> = 1_000..=1_000_000_000;
    pub const MEMORY: std::ops::RangeInclusive<u64> = 64 * 1024..=256 * 1024 * 1024;
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RUNS_PER_REQUEST: std::ops::RangeInclusive<u32> = 1..=256;

    pub fn instructions(&self) -> u64 {
        self.instructions.unwrap_or(Self::DEFAULT_INSTRUCTIONS)
    }
    pub fn memory(&self) -> u64 {
        self.memory.unwrap_or(Self::DEFAULT_MEMORY)
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }
    pub fn runs_per_request(&self) -> u32 {
        self.runs_per_request.unwrap_or(Self::DEFAULT_RUNS_PER_REQUEST)
    }
}

/// One function call in a chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainStep {
    /// The NetworkFunction to call.
    pub function: String,
    /// How the request meets the function (default `callout`).
    #[serde(default)]
    pub mode: StepMode,
    /// Which half of the exchange the step sees (default `request`).
    #[serde(default)]
    pub phase: Phase,
    /// Runs the step only for requests this matches (the Route match shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<RouteMatch>,
}

/// How traffic meets the function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepMode {
    /// The function gets the request's metadata (and body if asked) and returns a verdict.
    #[default]
    Callout,
    /// Traffic passes through the function as a hop: the proxy forwards the
    /// request to it, the function (any HTTP reverse proxy) sends it back to
    /// the proxy with a resume token to go on, and the response returns
    /// through it. Request phase only.
    Inline,
    /// The function gets a copy; it never affects the response.
    Tap,
}

/// Which half of the exchange a step sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Request,
    Response,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_without_api_speaks_http_json() {
        let f: NetworkFunctionSpec = crate::from_yaml(&"nf.yaml".into(), "service: waf").unwrap();
        assert_eq!(f.api, FunctionApi::Http);
    }
}
