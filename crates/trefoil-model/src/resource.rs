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
];

/// Kinds only the control plane writes; the API refuses them from clients.
pub const CONTROLLER_KINDS: &[&str] = &["RolloutStatus", "Event"];

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
