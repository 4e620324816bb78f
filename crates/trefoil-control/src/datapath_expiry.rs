//! Datapath rules with a `ttl` expire: a handler's "block this source for
//! ten minutes" must end without anyone remembering to undo it. This
//! controller sets each such rule's deadline in `DatapathRuleStatus/<name>`
//! (in the store, so a restarted control plane keeps it), deletes the rule
//! when it is due, and records an `Expired` event.
//!
//! The deadline runs from the rule's last write: adding the same rule again
//! (a handler seeing the same attack) starts its TTL over.

use std::sync::Arc;
use std::time::Duration;

use trefoil_model::spec::{DatapathRuleStatusSpec, EventSpec};
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

use crate::rollout::now_ms;
use crate::store::{Store, StoreError, Stored};

/// How often the rules are looked at: the most a rule outlives its TTL.
pub const TICK: Duration = Duration::from_millis(250);

const RULE: &str = "DatapathRule";
const STATUS: &str = "DatapathRuleStatus";

/// Runs the controller until the task is dropped.
pub async fn run(store: Arc<Store>) {
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problem = String::new();
    loop {
        timer.tick().await;
        match sweep(&store, now_ms()) {
            Ok(_) => last_problem.clear(),
            // Logged when it appears, not every tick.
            Err(e) if e.to_string() != last_problem => {
                last_problem = e.to_string();
                tracing::warn!("datapath rule expiry: {last_problem}");
            }
            Err(_) => {}
        }
    }
}

/// One look at every rule at time `now` (Unix ms); the names of the rules it deleted.
pub(crate) fn sweep(store: &Store, now: u64) -> Result<Vec<String>, StoreError> {
    let mut expired = Vec::new();
    for stored in store.list(RULE) {
        let ttl = match serde_json::from_value::<Resource>(stored.value.clone()).map(|r| r.spec) {
            Ok(Spec::DatapathRule(rule)) => rule.ttl,
            // Written through the API, so readable; anything else is left alone.
            _ => continue,
        };
        let status = store.get(STATUS, &stored.name);
        let Some(ttl) = ttl else {
            if let Some(s) = status {
                store.delete(STATUS, &stored.name, Some(s.resource_version))?;
            }
            continue;
        };
        let written = stored.resource_version.to_string();
        match status.as_ref().and_then(deadline) {
            Some(d) if d.observed_resource_version == written => {
                if now >= d.expires_at_ms && expire(store, &stored, ttl)? {
                    expired.push(stored.name.clone());
                }
            }
            // New, or written again since: the TTL runs from this write.
            _ => {
                let spec = DatapathRuleStatusSpec {
                    observed_resource_version: written,
                    expires_at_ms: now.saturating_add(ttl.get().as_millis() as u64),
                };
                let expected = status.map_or(0, |s| s.resource_version);
                put(store, STATUS, &stored.name, Spec::DatapathRuleStatus(spec), Some(expected))?;
            }
        }
    }
    // A rule deleted by hand leaves its deadline behind.
    for status in store.list(STATUS) {
        if store.get(RULE, &status.name).is_none() {
            store.delete(STATUS, &status.name, Some(status.resource_version))?;
        }
    }
    Ok(expired)
}

fn deadline(stored: &Stored) -> Option<DatapathRuleStatusSpec> {
    match serde_json::from_value::<Resource>(stored.value.clone()).ok()?.spec {
        Spec::DatapathRuleStatus(s) => Some(s),
        _ => None,
    }
}

/// Deletes the rule, if nobody wrote it since it was read, and records why.
fn expire(store: &Store, rule: &Stored, ttl: trefoil_model::Duration) -> Result<bool, StoreError> {
    match store.delete(RULE, &rule.name, Some(rule.resource_version)) {
        Ok(_) => {}
        // Written again meanwhile: the next look starts its TTL over.
        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    let message = format!("its TTL of {ttl} ran out; the rule is deleted");
    tracing::info!(rule = %rule.name, "{message}");
    let event = EventSpec {
        regarding: format!("{RULE}/{}", rule.name),
        reason: "Expired".to_string(),
        message,
        time_ms: now_ms(),
        figures: Vec::new(),
    };
    // Unique per write of the rule; cut so the name stays within 253 characters.
    let stem: String = rule.name.chars().take(200).collect();
    put(store, "Event", &format!("{stem}.expired.{}", rule.resource_version), Spec::Event(event), None)?;
    if let Some(s) = store.get(STATUS, &rule.name) {
        store.delete(STATUS, &rule.name, Some(s.resource_version))?;
    }
    Ok(true)
}

fn put(store: &Store, kind: &str, name: &str, spec: Spec, expected: Option<u64>) -> Result<u64, StoreError> {
    let r = Resource {
        api_version: API_VERSION.to_string(),
        metadata: Metadata { name: name.to_string(), generation: Some(1), ..Default::default() },
        spec,
    };
    // A resource of the model's own types always serializes.
    store.put(kind, name, serde_json::to_value(&r).unwrap_or_default(), expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(test: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("trefoil-expiry-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store::open(dir.join("store.db")).unwrap()
    }

    fn rule(store: &Store, name: &str, ttl: Option<&str>) -> u64 {
        let mut spec = trefoil_model::datapath::compact::parse("10.0.9.9 * : drop").unwrap().into_spec();
        spec.ttl = ttl.map(|t| t.parse().unwrap());
        put(store, RULE, name, Spec::DatapathRule(spec), None).unwrap()
    }

    #[test]
    fn a_rule_expires_once_due_and_says_so() {
        let store = store("due");
        rule(&store, "block", Some("10s"));
        rule(&store, "stays", None);
        assert!(sweep(&store, 1_000).unwrap().is_empty());
        let d = deadline(&store.get(STATUS, "block").unwrap()).unwrap();
        assert_eq!(d.expires_at_ms, 11_000);
        assert!(store.get(STATUS, "stays").is_none());
        assert!(sweep(&store, 10_999).unwrap().is_empty(), "not yet due");
        assert_eq!(sweep(&store, 11_000).unwrap(), ["block"]);
        assert!(store.get(RULE, "block").is_none() && store.get(STATUS, "block").is_none());
        assert!(store.get(RULE, "stays").is_some());
        let events = store.list("Event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].value["spec"]["reason"], "Expired");
        assert_eq!(events[0].value["spec"]["regarding"], "DatapathRule/block");
    }

    #[test]
    fn writing_a_rule_again_starts_its_ttl_over() {
        let store = store("again");
        rule(&store, "block", Some("10s"));
        sweep(&store, 1_000).unwrap();
        rule(&store, "block", Some("10s"));
        assert!(sweep(&store, 9_000).unwrap().is_empty());
        assert_eq!(deadline(&store.get(STATUS, "block").unwrap()).unwrap().expires_at_ms, 19_000);
        assert!(sweep(&store, 12_000).unwrap().is_empty(), "the first deadline no longer holds");
        // The TTL removed, or the rule deleted by hand: the deadline goes.
        rule(&store, "block", None);
        sweep(&store, 13_000).unwrap();
        assert!(store.get(STATUS, "block").is_none());
        rule(&store, "other", Some("1s"));
        sweep(&store, 13_000).unwrap();
        store.delete(RULE, "other", None).unwrap();
        sweep(&store, 13_000).unwrap();
        assert!(store.list(STATUS).is_empty());
    }
}
