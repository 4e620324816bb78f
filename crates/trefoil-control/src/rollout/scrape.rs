//! Gathers a check's figures: the sidecar metrics of the canary's and the
//! stable version's replicas from every connected proxy's admin `/metrics`
//! (inbound traffic, summed over proxies), and the Prometheus queries.
//!
//! A window runs from one scrape to the next of the same rollout, so the
//! first scrape of a rollout (and the first after a control plane restart)
//! only sets the baseline.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use trefoil_metrics::{growth, Fetcher, Growth, Key, Sample};
use trefoil_model::spec::{Analysis, AnalysisMetric, PrometheusMetric, RolloutSpec};

use super::judge::Measured;

/// How long one scrape or query may take; a check must fit in its interval.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The previous scrape of each proxy (by admin address), per rollout.
pub(super) struct Scraper {
    fetcher: Fetcher,
    baselines: HashMap<String, HashMap<String, Vec<Sample>>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Scraper { fetcher: Fetcher::new(FETCH_TIMEOUT), baselines: HashMap::new() }
    }
}

impl Scraper {
    /// The canary's figures since the last call for `rollout`; `None` when
    /// this call only set the baseline.
    pub(super) async fn measure(&mut self, rollout: &str, spec: &RolloutSpec, analysis: &Analysis, admins: &[String]) -> Option<Measured> {
        let inbound = |version: &str| Key { service: spec.service.clone(), version: version.to_string(), direction: "inbound".into() };
        let (canary_key, stable_key) = (inbound(&spec.canary), inbound(&spec.stable));
        let previous = self.baselines.remove(rollout);
        let mut current = HashMap::new();
        let (mut canary, mut stable) = (Growth::default(), Growth::default());
        // All proxies at once: one slow proxy costs one timeout, not one per proxy.
        let scrapes = futures_util::future::join_all(admins.iter().map(|admin| {
            let fetcher = &self.fetcher;
            async move { fetcher.text("proxy", &format!("http://{admin}"), "/metrics").await }
        }))
        .await;
        for (admin, scraped) in admins.iter().zip(scrapes) {
            let samples = match scraped.map(|t| trefoil_metrics::parse(&t)) {
                Ok(Ok(samples)) => samples,
                Ok(Err(e)) => {
                    tracing::warn!(%admin, "unreadable metrics: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            // A proxy new since the last scrape has no window yet: its next scrape counts.
            if let Some(before) = previous.as_ref().and_then(|p| p.get(admin)) {
                let grown = growth(before, &samples);
                if let Some(g) = grown.get(&canary_key) {
                    canary.add(g);
                }
                if let Some(g) = grown.get(&stable_key) {
                    stable.add(g);
                }
            }
            current.insert(admin.clone(), samples);
        }
        self.baselines.insert(rollout.to_string(), current);
        previous.as_ref()?;
        let mut prometheus = Vec::new();
        for metric in &analysis.metrics {
            if let AnalysisMetric::Prometheus(p) = metric {
                prometheus.push(self.query(p).await);
            }
        }
        Some(Measured { canary, stable, prometheus })
    }

    /// Forgets a rollout's baseline (it finished or was deleted).
    pub(super) fn forget(&mut self, rollout: &str) {
        self.baselines.remove(rollout);
    }

    /// A PromQL instant query's single value; `None` (with a warning) when
    /// the server is unreachable or the answer is not exactly one number.
    async fn query(&self, p: &PrometheusMetric) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", percent_encode(&p.query));
        match self.fetcher.json::<QueryAnswer>("Prometheus", &p.address, &path).await {
            Ok(answer) => answer.single_value(),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}

/// The part of Prometheus' `/api/v1/query` answer a check reads.
#[derive(Deserialize)]
struct QueryAnswer {
    data: QueryData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

impl QueryAnswer {
    fn single_value(&self) -> Option<f64> {
        let value = match self.data.result_type.as_str() {
            "scalar" => &self.data.result,
            "vector" => match self.data.result.as_array().map(Vec::as_slice) {
                Some([one]) => &one["value"],
                _ => return None,
            },
            _ => return None,
        };
        // `[timestamp, "value"]`, the value as a string (it may be NaN or Inf).
        value.get(1)?.as_str()?.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

/// Encodes a query string value: everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Option<f64> {
        serde_json::from_str::<QueryAnswer>(json).unwrap().single_value()
    }

    #[test]
    fn reads_one_number_from_a_query_answer() {
        assert_eq!(
            answer(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#),
            Some(0.25)
        );
        assert_eq!(answer(r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#), Some(3.0));
        assert_eq!(answer(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#), None, "no data");
        assert_eq!(answer(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#), None);
        assert_eq!(
            answer(r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#),
            None,
            "ambiguous"
        );
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(percent_encode("sum(rate(x{a=\"b c\"}[1m]))"), "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29");
    }
}
