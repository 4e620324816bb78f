//! One analysis check: the canary's figures over an interval against the
//! rollout's bounds. Pure; the figures come from `scrape`.

use trefoil_metrics::{quantile, slower_p_value, Growth};
use trefoil_model::spec::{Analysis, AnalysisMetric, CheckRecord, Figure, Verdict};

/// What was measured for one check.
#[derive(Clone, Debug, Default)]
pub(super) struct Measured {
    /// The canary's inbound traffic over the interval, all its replicas together.
    pub canary: Growth,
    /// The stable version's inbound traffic over the same interval.
    pub stable: Growth,
    /// Each Prometheus metric's value, in the order of `analysis.metrics`
    /// (`None` where the query gave no single number).
    pub prometheus: Vec<Option<f64>>,
}

/// The verdict: inconclusive below `minRequests`; failed when a measured
/// metric is out of bounds; passed only when every metric was measured and holds.
pub(super) fn judge(analysis: &Analysis, measured: &Measured) -> CheckRecord {
    let g = &measured.canary;
    let mut prometheus = measured.prometheus.iter();
    let figures: Vec<Figure> = analysis
        .metrics
        .iter()
        .map(|m| match m {
            AnalysisMetric::SuccessRate(b) => {
                let value = (g.requests > 0.0).then(|| 100.0 * (g.requests - g.failures) / g.requests);
                Figure { metric: "successRate".into(), value, min: Some(b.min), max: None, ok: value.is_some_and(|v| v >= b.min) }
            }
            AnalysisMetric::LatencyP99(b) => {
                let max = b.max.get().as_secs_f64();
                let value = quantile(0.99, &g.buckets);
                Figure { metric: "latencyP99".into(), value, min: None, max: Some(max), ok: value.is_some_and(|v| v <= max) }
            }
            AnalysisMetric::LatencyVsStable(b) => {
                let value = slower_p_value(&g.buckets, &measured.stable.buckets);
                Figure { metric: "latencyVsStable".into(), value, min: Some(b.alpha), max: None, ok: value.is_some_and(|p| p >= b.alpha) }
            }
            AnalysisMetric::Prometheus(p) => {
                let value = prometheus.next().copied().flatten();
                let ok = value.is_some_and(|v| p.min.is_none_or(|min| v >= min) && p.max.is_none_or(|max| v <= max));
                Figure { metric: p.query.clone(), value, min: p.min, max: p.max, ok }
            }
        })
        .collect();
    let verdict = if g.requests < analysis.min_requests as f64 {
        // Too little traffic to say anything either way.
        Verdict::Inconclusive
    } else if figures.iter().any(|f| f.value.is_some() && !f.ok) {
        Verdict::Failed
    } else if figures.iter().any(|f| f.value.is_none()) {
        // A figure that could not be measured cannot vouch for the canary.
        Verdict::Inconclusive
    } else {
        Verdict::Passed
    };
    CheckRecord { verdict, requests: g.requests, figures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use trefoil_model::spec::{LatencyBound, MinBound, PrometheusMetric, SignificanceBound};
    use trefoil_model::Duration;

    fn analysis() -> Analysis {
        Analysis {
            interval: Duration::from_secs(1),
            threshold: 1,
            min_requests: 10,
            metrics: vec![
                AnalysisMetric::SuccessRate(MinBound { min: 95.0 }),
                AnalysisMetric::LatencyP99(LatencyBound { max: Duration::from_millis(250) }),
                AnalysisMetric::Prometheus(PrometheusMetric {
                    address: "http://127.0.0.1:9090".into(),
                    query: "q".into(),
                    min: None,
                    max: Some(0.05),
                }),
            ],
        }
    }

    /// `requests` of which `errors` were 5xx, all taking about `seconds`.
    fn measured(requests: f64, errors: f64, seconds: f64, prom: Option<f64>) -> Measured {
        let buckets: BTreeMap<u64, f64> = [(0.1, if seconds <= 0.1 { requests } else { 0.0 }), (0.5, requests), (f64::INFINITY, requests)]
            .iter()
            .map(|(le, n)| (le.to_bits(), *n))
            .collect();
        Measured { canary: Growth { requests, failures: errors, buckets }, stable: Growth::default(), prometheus: vec![prom] }
    }

    #[test]
    fn healthy_passes() {
        let c = judge(&analysis(), &measured(100.0, 1.0, 0.01, Some(0.01)));
        assert_eq!(c.verdict, Verdict::Passed, "{c:?}");
        assert_eq!(c.figures[0].value, Some(99.0));
    }

    #[test]
    fn errors_slowness_or_a_query_out_of_bounds_fail() {
        let errors = judge(&analysis(), &measured(100.0, 50.0, 0.01, Some(0.01)));
        assert_eq!(errors.verdict, Verdict::Failed);
        assert!(!errors.figures[0].ok && errors.figures[1].ok);
        let slow = judge(&analysis(), &measured(100.0, 0.0, 0.3, Some(0.01)));
        assert_eq!(slow.verdict, Verdict::Failed);
        assert!(slow.figures[1].value.unwrap() > 0.25);
        assert_eq!(judge(&analysis(), &measured(100.0, 0.0, 0.01, Some(0.5))).verdict, Verdict::Failed);
    }

    #[test]
    fn a_canary_slower_than_stable_fails_the_comparison() {
        let compare = Analysis { metrics: vec![AnalysisMetric::LatencyVsStable(SignificanceBound { alpha: 0.01 })], ..analysis() };
        let fast = measured(100.0, 0.0, 0.01, None);
        let mut slow = measured(100.0, 0.0, 0.3, None);
        slow.stable = fast.canary.clone();
        let c = judge(&compare, &slow);
        assert_eq!(c.verdict, Verdict::Failed, "{c:?}");
        assert!(c.figures[0].value.unwrap() < 0.01);
        let mut same = fast.clone();
        same.stable = fast.canary.clone();
        assert_eq!(judge(&compare, &same).verdict, Verdict::Passed);
        assert_eq!(judge(&compare, &fast).verdict, Verdict::Inconclusive, "stable had no traffic to compare with");
    }

    #[test]
    fn a_quiet_canary_or_missing_data_is_not_judged() {
        assert_eq!(judge(&analysis(), &measured(9.0, 9.0, 0.01, Some(0.01))).verdict, Verdict::Inconclusive);
        assert_eq!(judge(&analysis(), &measured(100.0, 0.0, 0.01, None)).verdict, Verdict::Inconclusive);
        assert_eq!(judge(&analysis(), &measured(100.0, 50.0, 0.01, None)).verdict, Verdict::Failed, "what was measured still counts");
    }
}
