//! The resource envelope shared by every kind: `apiVersion`, `kind`,
//! `metadata`, `spec`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::*;

/// The only API version this build understands.
pub const API_VERSION: &str = "trefoil.dev/v1alpha1";

/// Identity and bookkeeping of a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the store on every write; a write carrying a stale value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Bumped by the store when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// The kind-specific part of a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec")]
pub enum Spec {
    Proxy(ProxySpec),
    Listener(ListenerSpec),
    Service(ServiceSpec),
    Route(RouteSpec),
    TrafficPolicy(TrafficPolicySpec),
    Workload(WorkloadSpec),
    Endpoints(EndpointsSpec),
    NetworkFunction(NetworkFunctionSpec),
    #[serde(rename = "CNF")]
    Cnf(CnfSpec),
    Rollout(RolloutSpec),
    RolloutStatus(RolloutStatusSpec),
    Event(EventSpec),
    DatapathRule(DatapathRuleSpec),
    DatapathRuleStatus(DatapathRuleStatusSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
}

/// Every kind this build knows, for error messages.
pub const KINDS: &[&str] = &[
    "Proxy",
    "Listener",
    "Service",
    "Route",
    "TrafficPolicy",
    "Workload",
    "Endpoints",
    "NetworkFunction",
    "CNF",
    "Rollout",
    "RolloutStatus",
    "Event",
    "DatapathRule",
    "DatapathRuleStatus",
    "AuthorizationPolicy",
];

/// The kind a path segment or a user names, in any form the API accepts:
/// `Route`, `route` or `routes`, `Proxies`, `trafficpolicy`.
pub fn kind_named(typed: &str) -> Option<&'static str> {
    let lower = typed.to_ascii_lowercase();
    let singular = lower
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| lower.strip_suffix('s').map(str::to_string))
        .unwrap_or_else(|| lower.clone());
    KINDS.iter().find(|k| k.to_ascii_lowercase() == lower || k.to_ascii_lowercase() == singular).copied()
}

/// Kinds only the control plane writes; the API refuses them from clients.
pub const CONTROLLER_KINDS: &[&str] = &["RolloutStatus", "Event", "DatapathRuleStatus"];

impl Spec {
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Proxy(_) => "Proxy",
            Spec::Listener(_) => "Listener",
            Spec::Service(_) => "Service",
            Spec::Route(_) => "Route",
            Spec::TrafficPolicy(_) => "TrafficPolicy",
            Spec::Workload(_) => "Workload",
            Spec::Endpoints(_) => "Endpoints",
            Spec::NetworkFunction(_) => "NetworkFunction",
            Spec::Cnf(_) => "CNF",
            Spec::Rollout(_) => "Rollout",
            Spec::RolloutStatus(_) => "RolloutStatus",
            Spec::Event(_) => "Event",
            Spec::DatapathRule(_) => "DatapathRule",
            Spec::DatapathRuleStatus(_) => "DatapathRuleStatus",
            Spec::AuthorizationPolicy(_) => "AuthorizationPolicy",
        }
    }
}

/// A declarative resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub metadata: Metadata,
    #[serde(flatten)]
    pub spec: Spec,
}

impl Resource {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::kind_named;

    #[test]
    fn kinds_in_every_form_the_api_accepts() {
        assert_eq!(kind_named("services"), Some("Service"));
        assert_eq!(kind_named("Proxies"), Some("Proxy"));
        assert_eq!(kind_named("endpoints"), Some("Endpoints"));
        assert_eq!(kind_named("trafficpolicy"), Some("TrafficPolicy"));
        assert_eq!(kind_named("CNFs"), Some("CNF"));
        assert_eq!(kind_named("datapathrules"), Some("DatapathRule"));
        assert_eq!(kind_named("authorizationpolicies"), Some("AuthorizationPolicy"));
        assert_eq!(kind_named("widget"), None);
    }
}
