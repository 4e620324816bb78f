//! `Event`: a record of something the control plane did, with why and the
//! figures that decided it. Written only by the control plane.

use serde::{Deserialize, Serialize};

use super::Figure;

/// One transition or decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    /// The resource it is about, as `Kind/name`.
    pub regarding: String,
    /// A short CamelCase word: `WeightChanged`, `CheckFailed`, `RolledBack`, ...
    pub reason: String,
    pub message: String,
    /// When it happened (Unix milliseconds).
    pub time_ms: u64,
    /// The figures behind the decision, if a check made it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<Figure>,
}
