//! Rewrites a Route so it sends a service's traffic where a rollout wants
//! it. Only the backends of the rollout's service (its stable or canary
//! version, or no version) are touched; other backends, matches and filters
//! stay as written. Pure, and idempotent: shaping twice changes nothing.

use trefoil_model::spec::{
    BackendRef, RequestMirror, RolloutSpec, RouteMatch, RouteRule, RouteSpec, Strategy, ValueMatch, WeightedBackend,
};

use super::plan::Traffic;

/// The Route as it should be for `traffic`.
pub(super) fn shape(route: &RouteSpec, rollout: &RolloutSpec, traffic: &Traffic) -> RouteSpec {
    let ab_rule = ab_rule(rollout);
    let mut out = route.clone();
    // Start from the rules the user wrote: drop an A/B rule a previous shaping added.
    out.rules.retain(|r| Some(r) != ab_rule.as_ref());
    for rule in out.rules.iter_mut().filter(|r| r.backends.iter().any(|b| ours(b, rollout))) {
        if rule.filters.request_mirror.as_ref().is_some_and(|m| m.backend == canary_ref(rollout)) {
            rule.filters.request_mirror = None;
        }
        let weight = match traffic {
            Traffic::Weighted(w) => *w,
            Traffic::AbTest | Traffic::Mirror => 0,
        };
        let others: Vec<WeightedBackend> = rule.backends.iter().filter(|b| !ours(b, rollout)).cloned().collect();
        let mut backends = Vec::new();
        // A zero weight is left out, so a finished rollout leaves one plain backend.
        if weight < 100 {
            backends.push(backend(rollout, &rollout.stable, 100 - weight));
        }
        if weight > 0 {
            backends.push(backend(rollout, &rollout.canary, weight));
        }
        backends.extend(others);
        rule.backends = backends;
        if *traffic == Traffic::Mirror {
            if let Strategy::Mirror(m) = &rollout.strategy {
                rule.filters.request_mirror = Some(RequestMirror { backend: canary_ref(rollout), percent: m.percent });
            }
        }
    }
    if *traffic == Traffic::AbTest {
        if let Some(rule) = ab_rule {
            out.rules.insert(0, rule);
        }
    }
    out
}

/// Whether a backend is one of the rollout's: its service at stable, canary or any version.
fn ours(b: &WeightedBackend, rollout: &RolloutSpec) -> bool {
    b.service == rollout.service && b.version.as_ref().is_none_or(|v| *v == rollout.stable || *v == rollout.canary)
}

fn backend(rollout: &RolloutSpec, version: &str, weight: u32) -> WeightedBackend {
    WeightedBackend { service: rollout.service.clone(), version: Some(version.to_string()), weight }
}

fn canary_ref(rollout: &RolloutSpec) -> BackendRef {
    BackendRef { service: rollout.service.clone(), version: Some(rollout.canary.clone()) }
}

/// The rule an A/B test puts first: matching requests go to the canary.
fn ab_rule(rollout: &RolloutSpec) -> Option<RouteRule> {
    let Strategy::AbTest(ab) = &rollout.strategy else { return None };
    let condition = if let Some(h) = &ab.header {
        ValueMatch { name: h.name.clone(), value: Some(h.value.clone()), regex: None, invert: false }
    } else {
        // Validation refused every rollout whose cookie condition does not build.
        ab.cookie.as_ref()?.cookie_condition().expect("a validated rollout's cookie condition builds")
    };
    Some(RouteRule {
        matches: vec![RouteMatch { headers: vec![condition], ..Default::default() }],
        backends: vec![backend(rollout, &rollout.canary, 100)],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use trefoil_model::spec::{AbTestStrategy, CanaryStrategy, MirrorStrategy, NameValue};

    fn rollout(strategy: Strategy) -> RolloutSpec {
        RolloutSpec { service: "web".into(), stable: "v1".into(), canary: "v2".into(), route: "web".into(), strategy, analysis: None }
    }

    fn route() -> RouteSpec {
        RouteSpec {
            service: Some("web".into()),
            hosts: Vec::new(),
            rules: vec![RouteRule {
                backends: vec![
                    WeightedBackend { service: "web".into(), version: Some("v1".into()), weight: 1 },
                    WeightedBackend { service: "db".into(), version: None, weight: 5 },
                ],
                ..Default::default()
            }],
        }
    }

    fn weights(r: &RouteSpec, rule: usize) -> Vec<(String, Option<String>, u32)> {
        r.rules[rule].backends.iter().map(|b| (b.service.clone(), b.version.clone(), b.weight)).collect()
    }

    #[test]
    fn weights_move_between_stable_and_canary_only() {
        let ro = rollout(Strategy::Canary(CanaryStrategy { steps: vec![] }));
        let r = shape(&route(), &ro, &Traffic::Weighted(20));
        assert_eq!(weights(&r, 0), [("web".into(), Some("v1".into()), 80), ("web".into(), Some("v2".into()), 20), ("db".into(), None, 5)]);
        assert_eq!(shape(&r, &ro, &Traffic::Weighted(20)), r, "idempotent");
        let done = shape(&r, &ro, &Traffic::Weighted(100));
        assert_eq!(weights(&done, 0), [("web".into(), Some("v2".into()), 100), ("db".into(), None, 5)]);
        let back = shape(&r, &ro, &Traffic::Weighted(0));
        assert_eq!(weights(&back, 0)[0], ("web".into(), Some("v1".into()), 100));
    }

    #[test]
    fn an_ab_test_adds_a_first_rule_and_removes_it_after() {
        let header = rollout(Strategy::AbTest(AbTestStrategy {
            header: Some(NameValue { name: "x-canary".parse().unwrap(), value: "yes".into() }),
            cookie: None,
            checks: 1,
        }));
        let r = shape(&route(), &header, &Traffic::AbTest);
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.rules[0].matches[0].headers[0].value.as_deref(), Some("yes"));
        assert_eq!(weights(&r, 0), [("web".into(), Some("v2".into()), 100)]);
        assert_eq!(weights(&r, 1)[0], ("web".into(), Some("v1".into()), 100));
        assert_eq!(shape(&r, &header, &Traffic::AbTest), r, "idempotent");
        let done = shape(&r, &header, &Traffic::Weighted(100));
        assert_eq!(done.rules.len(), 1);

        let cookie = rollout(Strategy::AbTest(AbTestStrategy {
            header: None,
            cookie: Some(NameValue { name: "beta".into(), value: "1.0".into() }),
            checks: 1,
        }));
        let r = shape(&route(), &cookie, &Traffic::AbTest);
        // The proxy anchors header regexes to the whole value.
        let re = r.rules[0].matches[0].headers[0].regex.clone().unwrap();
        assert!(re.is_match("beta=1.0"));
        assert!(re.is_match("a=b; beta=1.0; c=d"));
        assert!(!re.is_match("beta=1x0"));
        assert!(!re.is_match("xbeta=1.0"));
        assert!(!re.is_match("beta=1.00"));
    }

    #[test]
    fn a_mirror_copies_to_the_canary_and_is_removed_after() {
        let ro = rollout(Strategy::Mirror(MirrorStrategy { percent: 50.0, checks: 1 }));
        let r = shape(&route(), &ro, &Traffic::Mirror);
        assert_eq!(weights(&r, 0)[0], ("web".into(), Some("v1".into()), 100));
        let m = r.rules[0].filters.request_mirror.as_ref().unwrap();
        assert_eq!((m.backend.version.as_deref(), m.percent), (Some("v2"), 50.0));
        assert!(shape(&r, &ro, &Traffic::Weighted(0)).rules[0].filters.request_mirror.is_none());
    }
}
