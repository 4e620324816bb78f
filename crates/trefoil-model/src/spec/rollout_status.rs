//! `RolloutStatus`: how far a Rollout of the same name got. Written only by
//! the rollout controller (the API refuses other writers), so a user's apply
//! of the Rollout never clobbers it, and a restarted control plane resumes
//! from it.

use serde::{Deserialize, Serialize};

/// The controller's record of one rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStatusSpec {
    pub phase: RolloutPhase,
    /// The `generation` of the Rollout this status follows; a new spec restarts the rollout.
    #[serde(default)]
    pub observed_generation: u64,
    /// Index of the current canary step.
    #[serde(default)]
    pub step: usize,
    /// The canary's share of requests now, in percent.
    #[serde(default)]
    pub weight: u32,
    /// Failed checks so far; reaching the analysis threshold rolls back.
    #[serde(default)]
    pub failed_checks: u32,
    /// Passing checks in a row since the last failure or step change.
    #[serde(default)]
    pub passed_checks: u32,
    /// When the current step began (Unix milliseconds).
    #[serde(default)]
    pub step_started_ms: u64,
    /// When the last check ran (Unix milliseconds), 0 before the first.
    #[serde(default)]
    pub last_check_ms: u64,
    /// Events emitted for this rollout so far; names the next one.
    #[serde(default)]
    pub events: u64,
    /// The last check's verdict and figures, for `trefoil rollout status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckRecord>,
    /// In a final phase: the Route already holds its traffic, so the
    /// controller leaves the Route alone from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settled: bool,
    /// A one-line summary of the latest transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Steps and checks are running.
    #[default]
    Progressing,
    /// Paused by hand; nothing moves until `resume`.
    Paused,
    /// The canary took all traffic; it is the new stable version.
    Succeeded,
    /// Failed checks sent all traffic back to stable.
    RolledBack,
    /// Stopped by hand; all traffic back to stable.
    Aborted,
}

impl RolloutPhase {
    /// Whether the rollout is over and the controller leaves the Route alone.
    pub fn is_final(self) -> bool {
        matches!(self, RolloutPhase::Succeeded | RolloutPhase::RolledBack | RolloutPhase::Aborted)
    }
}

/// The outcome of one analysis check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRecord {
    pub verdict: Verdict,
    /// Canary requests in the interval.
    pub requests: f64,
    /// One line per metric: its figure and bounds.
    #[serde(default)]
    pub figures: Vec<Figure>,
}

/// A check passes when every metric holds, fails when one does not, and is
/// inconclusive when there was too little traffic to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    Passed,
    Failed,
    Inconclusive,
}

/// One metric's value in a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Figure {
    /// `successRate`, `latencyP99` or the PromQL query.
    pub metric: String,
    /// `None` when it could not be measured (no data).
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub ok: bool,
}
