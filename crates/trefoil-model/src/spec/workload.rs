//! `Workload`: an application the local runtime runs as child processes,
//! each replica behind its own sidecar proxy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How to run one version of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The service this workload serves; a Service of that name is implied if none is declared.
    pub service: String,
    /// The version its endpoints carry; route backends select by it.
    #[serde(default = "default_version")]
    pub version: String,
    /// Program to run (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Arguments; `${PORT}` and other `${VAR}` of the workload's environment are expanded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment; values expand `${VAR}` like `args`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How many processes run, each with its own sidecar.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Port the app listens on (with one replica); absent means the runtime
    /// picks a free port and passes it in `PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Readiness probe; without it a replica is ready once its port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<WorkloadHealth>,
    /// Machine the workload runs on; the local runtime runs everything on this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The services this workload calls (Istio's Sidecar egress hosts). When
    /// set, its sidecars are sent only these services, their routes,
    /// policies and CNFs, and any other service the app calls is looked up
    /// on its first request; absent, sidecars get the whole mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
}

/// Exactly one of `http` (a path answered with 2xx) or `tcp: true` (the port accepts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
}

fn default_version() -> String {
    "v1".to_string()
}

fn one() -> u32 {
    1
}
