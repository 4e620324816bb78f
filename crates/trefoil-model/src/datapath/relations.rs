//! What `trefoil describe datapathrule NAME` shows beside the rule: what
//! its `to` selects, the rules it overlaps and who wins where they meet,
//! and when it expires. Pure, like the other kinds' relations.

use serde::Serialize;

use super::compact;
use super::precedence::{overlaps, Overlap, Rule};
use crate::spec::{DatapathAction, DatapathRuleSpec};
use crate::{Resource, Spec};

/// The kinds a rule's relations are computed from.
pub(crate) const READS: &[&str] = &["DatapathRule", "DatapathRuleStatus", "Workload", "NetworkFunction", "CNF", "Listener"];

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRelations {
    /// The rule in the seed's one-line form.
    pub compact: String,
    pub action: DatapathAction,
    /// `Kind/name` of each Workload, NetworkFunction and CNF `to` selects.
    pub targets: Vec<String>,
    /// Why (part of) `to` does not lead anywhere a node agent can program (`targets::resolve`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
    pub overlaps: Vec<Overlap>,
    /// When the TTL runs out (Unix milliseconds), once the control plane set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// The resources `spec`'s `to` selects, as `Kind/name`.
pub fn selected<'a>(spec: &DatapathRuleSpec, resources: impl IntoIterator<Item = &'a Resource>) -> Vec<String> {
    resources
        .into_iter()
        .filter(|r| matches!(r.spec, Spec::Workload(_) | Spec::NetworkFunction(_) | Spec::Cnf(_)))
        .filter(|r| spec.to.matches(&r.metadata.labels))
        .map(|r| format!("{}/{}", r.kind(), r.name()))
        .collect()
}

/// The relations of the rule `name` among `resources` (of the kinds in [`READS`]).
pub fn relations(resources: &[Resource], name: &str, spec: &DatapathRuleSpec) -> RuleRelations {
    let rules = Rule::all_in(resources);
    let expires_at_ms = resources.iter().find_map(|r| match &r.spec {
        Spec::DatapathRuleStatus(s) if r.name() == name => Some(s.expires_at_ms),
        _ => None,
    });
    RuleRelations {
        compact: compact::format(spec),
        action: spec.action,
        targets: selected(spec, resources),
        unresolved: super::targets::resolve(spec, resources).problems,
        overlaps: overlaps(&rules, name),
        expires_at_ms,
    }
}
