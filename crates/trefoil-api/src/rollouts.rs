//! `POST /api/v1/rollouts/<name>/<action>`: a person overriding the
//! rollout controller, and what the server answers.

use std::fmt;

use serde::{Deserialize, Serialize};
use trefoil_model::spec::RolloutStatusSpec;

/// The manual overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// All traffic to the canary now.
    Promote,
    /// All traffic back to stable now.
    Abort,
    /// Hold the current split.
    Pause,
    /// Continue a paused rollout.
    Resume,
}

impl RolloutAction {
    pub const ALL: [RolloutAction; 4] = [RolloutAction::Promote, RolloutAction::Abort, RolloutAction::Pause, RolloutAction::Resume];

    /// The action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Promote => "promote",
            RolloutAction::Abort => "abort",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
        }
    }

    pub fn parse(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == segment)
    }
}

impl fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to an action: the rollout's new status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutActed {
    pub name: String,
    pub status: RolloutStatusSpec,
}
