//! What node agents are sent on the config stream: each node's datapath
//! table, resolved here (`trefoil_model::datapath::node_table`) so that an
//! agent programs exactly what the control plane recorded under one
//! revision; and an `Event` for every rule whose `to` does not resolve, so
//! that a rule doing less than it says is never silent (decision 0021).

use std::collections::BTreeSet;

use trefoil_model::datapath::node_table::{self, Unresolved};
use trefoil_model::spec::EventSpec;
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

use crate::compile::{fnv1a, ProxySnapshot};
use crate::store::{Store, StoreError};

/// The resources node tables are made from, at one store revision.
#[derive(Default)]
pub struct DatapathView {
    /// DatapathRules (with their `resourceVersion`), their statuses, and
    /// the Listeners and functions a rule's `to` may lead to.
    resources: Vec<Resource>,
}

impl DatapathView {
    /// Keeps what tables need from `resources`. A DatapathRule's
    /// `resourceVersion` must be set: a TTL deadline is for one write.
    pub fn new(resources: &[Resource]) -> Self {
        let resources = resources
            .iter()
            .filter(|r| {
                matches!(
                    r.spec,
                    Spec::DatapathRule(_)
                        | Spec::DatapathRuleStatus(_)
                        | Spec::Listener(_)
                        | Spec::Workload(_)
                        | Spec::NetworkFunction(_)
                        | Spec::Cnf(_)
                )
            })
            .cloned()
            .collect();
        DatapathView { resources }
    }

    /// The snapshot of `node`'s table at store revision `version`, rules
    /// expired at `now_ms` left out. The hash is the content's: a store
    /// change that leaves the table as it was sends the agent nothing.
    pub fn snapshot_for(&self, node: &str, version: u64, now_ms: u64) -> ProxySnapshot {
        let table = node_table::for_node(&self.resources, node, &node_table::expired(&self.resources, now_ms));
        // Plain data always serializes; an empty string is refused by `offer`.
        let json = serde_json::to_string(&table).unwrap_or_default();
        ProxySnapshot { version, hash: fnv1a(json.as_bytes()), count: table.lines.len(), resources_json: json, scope: None }
    }

    /// Every rule that does not resolve on some node, at `now_ms`: a rule's
    /// targets do not depend on the node, so the nodes rules name (and
    /// "any other node") cover them all.
    pub fn unresolved(&self, now_ms: u64) -> Vec<Unresolved> {
        let expired = node_table::expired(&self.resources, now_ms);
        let mut nodes: BTreeSet<&str> = BTreeSet::from([""]);
        nodes.extend(self.resources.iter().filter_map(|r| match &r.spec {
            Spec::DatapathRule(rule) => rule.node.as_deref(),
            _ => None,
        }));
        let mut out: Vec<Unresolved> = Vec::new();
        for node in nodes {
            for u in node_table::for_node(&self.resources, node, &expired).unresolved {
                if !out.contains(&u) {
                    out.push(u);
                }
            }
        }
        out
    }

    /// The `resourceVersion` of rule `name`.
    fn version_of(&self, name: &str) -> Option<&str> {
        self.resources
            .iter()
            .find(|r| matches!(r.spec, Spec::DatapathRule(_)) && r.name() == name)
            .and_then(|r| r.metadata.resource_version.as_deref())
    }

    /// Records an `Unresolved` Event for each unresolved rule not recorded
    /// yet for this write of the rule and this reason; returns how many it
    /// wrote. Names are stable, so a recompile writes nothing new.
    pub fn record_unresolved(&self, store: &Store, now_ms: u64) -> Result<usize, StoreError> {
        let mut written = 0;
        for u in self.unresolved(now_ms) {
            let stem: String = u.rule.chars().take(200).collect();
            let version = self.version_of(&u.rule).unwrap_or("0");
            let name = format!("{stem}.unresolved.{version}.{:08x}", fnv1a(u.to_string().as_bytes()) as u32);
            if store.get("Event", &name).is_some() {
                continue;
            }
            tracing::warn!(rule = %u.rule, "{u}");
            let event = EventSpec {
                regarding: format!("DatapathRule/{}", u.rule),
                reason: "Unresolved".to_string(),
                message: u.to_string(),
                time_ms: now_ms,
                figures: Vec::new(),
            };
            let resource = Resource {
                api_version: API_VERSION.to_string(),
                metadata: Metadata { name: name.clone(), generation: Some(1), ..Default::default() },
                spec: Spec::Event(event),
            };
            match store.put("Event", &name, serde_json::to_value(&resource).unwrap_or_default(), Some(0)) {
                // Another compile wrote it meanwhile.
                Ok(_) | Err(StoreError::Conflict { .. }) => written += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn store(test: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("trefoil-dptables-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store::open(dir.join("store.db")).unwrap()
    }

    /// The view of `yaml` with the rules at `version`, as the compiler builds it.
    fn view(yaml: &str, version: &str) -> DatapathView {
        let mut resources: Vec<Resource> =
            trefoil_model::load_str(&Arc::from("t.yaml"), yaml).unwrap().into_iter().map(|s| s.resource).collect();
        for r in &mut resources {
            r.metadata.resource_version = Some(version.into());
        }
        DatapathView::new(&resources)
    }

    const RULES: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {name: nowhere}\n\
        spec: {match: {destination: [10.0.3.0/24]}, action: redirect, to: {app: missing}, node: edge}\n---\n\
        apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {name: block}\nspec: {match: {source: [10.0.1.2]}, action: drop}\n";

    #[test]
    fn an_unresolved_rule_is_one_event_per_write_and_reason() {
        let store = store("events");
        let first = view(RULES, "4");
        // A rule for one node is found although no agent of that node asked.
        assert_eq!(first.record_unresolved(&store, 1_000).unwrap(), 1);
        assert_eq!(first.record_unresolved(&store, 2_000).unwrap(), 0, "a recompile records nothing new");
        assert_eq!(view(RULES, "9").record_unresolved(&store, 3_000).unwrap(), 1, "the rule written again");
        let events = store.list("Event");
        assert_eq!(events.len(), 2);
        let spec = &events[0].value["spec"];
        assert_eq!((&spec["regarding"], &spec["reason"]), (&"DatapathRule/nowhere".into(), &"Unresolved".into()));
        assert!(spec["message"].as_str().unwrap().ends_with("`to` (app=missing) selects no Workload, NetworkFunction or CNF"), "{spec}");
        // The table of another node has neither the rule nor its failure.
        let other = view(RULES, "9").snapshot_for("core", 9, 0);
        let table: trefoil_model::datapath::node_table::NodeTable = serde_json::from_str(&other.resources_json).unwrap();
        assert_eq!((table.lines.len(), table.unresolved.len()), (1, 0), "block only: {table:?}");
    }
}
