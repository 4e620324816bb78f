//! One refresh of `trefoil top`: scrape every proxy, then rows per service
//! and version from what grew since the previous scrape. Shared by the CLI
//! and the control plane's live dashboard feed, so the portal shows the
//! same figures `trefoil top` prints.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::fetch::Fetcher;
use crate::promtext::{self, Sample};
use crate::traffic::{self, Growth, Key, Row};

/// A proxy to scrape; `admin` is `Err(why)` when there is no address to try.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub admin: Result<String, String>,
}

/// One proxy's part of a sample.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    pub name: String,
    pub admin_address: Option<String>,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one refresh shows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub interval_seconds: f64,
    /// The window saw no request, so `services` holds the totals since each
    /// proxy started instead (with `--once`: a request sent just before is
    /// shown rather than nothing).
    pub since_start: bool,
    pub services: Vec<Row>,
    pub proxies: Vec<ProxyReport>,
}

/// Scrapes that succeeded, by proxy name.
pub type Scrapes = HashMap<String, Vec<Sample>>;

/// Scrapes every target at once; failures are kept by proxy name.
pub async fn scrape_all(fetcher: &Fetcher, targets: &[Target]) -> (Scrapes, HashMap<String, String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let (name, admin, fetcher) = (t.name.clone(), t.admin.clone(), fetcher.clone());
        tasks.spawn(async move {
            let result = match admin {
                Err(why) => Err(why),
                Ok(admin) => scrape(&fetcher, &name, &admin).await,
            };
            (name, result)
        });
    }
    let (mut ok, mut failed) = (HashMap::new(), HashMap::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(samples))) => {
                ok.insert(name, samples);
            }
            Ok((name, Err(why))) => {
                failed.insert(name, why);
            }
            // A scrape task cannot panic short of a bug; its proxy shows as unanswered.
            Err(_) => {}
        }
    }
    (ok, failed)
}

async fn scrape(fetcher: &Fetcher, name: &str, admin: &str) -> Result<Vec<Sample>, String> {
    let text = fetcher.text(&format!("proxy {name}"), &format!("http://{admin}"), "/metrics").await.map_err(|e| e.to_string())?;
    promtext::parse(&text).map_err(|e| format!("proxy {name} at {admin} sent unreadable metrics: {e}"))
}

/// The rows of the window from `previous` to `current`, `seconds` long.
pub fn report(targets: &[Target], previous: &Scrapes, current: &Scrapes, failures: &HashMap<String, String>, seconds: f64) -> Report {
    let mut groups: BTreeMap<Key, Growth> = BTreeMap::new();
    let mut proxies = Vec::new();
    for t in targets {
        let error = match (previous.get(&t.name), current.get(&t.name)) {
            (Some(before), Some(after)) => {
                for (key, g) in traffic::growth(before, after) {
                    groups.entry(key).or_default().add(&g);
                }
                None
            }
            // Answered now but not at the start of the window: its
            // counters cover more than the window, so it waits a round.
            (None, Some(_)) => None,
            (_, None) => Some(failures.get(&t.name).cloned().unwrap_or_else(|| "no answer".to_string())),
        };
        proxies.push(ProxyReport { name: t.name.clone(), admin_address: t.admin.clone().ok(), reachable: error.is_none(), error });
    }
    Report { interval_seconds: seconds, since_start: false, services: traffic::rows(&groups, seconds), proxies }
}

/// What the proxies counted since they started: growth from nothing to now,
/// with no rate (the time it took is not known).
pub fn since_start(targets: &[Target], current: &Scrapes, failures: &HashMap<String, String>, seconds: f64) -> Report {
    let nothing: Scrapes = current.keys().map(|name| (name.clone(), Vec::new())).collect();
    let mut report = report(targets, &nothing, current, failures, f64::INFINITY);
    report.interval_seconds = seconds;
    report.since_start = true;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(requests: f64) -> Vec<Sample> {
        promtext::parse(&format!(
            "trefoil_requests_total{{direction=\"inbound\",service=\"web\",version=\"v1\",status_code=\"200\"}} {requests}\n"
        ))
        .unwrap()
    }

    fn target(name: &str) -> Target {
        Target { name: name.to_string(), admin: Ok(format!("{name}:15000")) }
    }

    #[test]
    fn replicas_add_up_and_late_or_silent_proxies_are_listed() {
        let targets = [target("a"), target("b"), target("late"), target("down")];
        let previous: Scrapes =
            [("a".to_string(), samples(10.0)), ("b".to_string(), samples(0.0)), ("down".to_string(), samples(5.0))].into();
        let current: Scrapes =
            [("a".to_string(), samples(30.0)), ("b".to_string(), samples(20.0)), ("late".to_string(), samples(1000.0))].into();
        let failures = [("down".to_string(), "proxy down is not reachable: connection refused".to_string())].into();
        let r = report(&targets, &previous, &current, &failures, 2.0);
        assert_eq!(r.services.len(), 1);
        // a and b grew 20 each; `late` has no start of window, so it waits a round.
        assert_eq!(r.services[0].requests, 40.0);
        assert_eq!(r.services[0].rps, 20.0);
        let reachable: Vec<(&str, bool)> = r.proxies.iter().map(|p| (p.name.as_str(), p.reachable)).collect();
        assert_eq!(reachable, [("a", true), ("b", true), ("late", true), ("down", false)]);
        assert_eq!(r.proxies[3].error.as_deref(), Some("proxy down is not reachable: connection refused"));
    }

    #[test]
    fn grpc_errors_lower_the_success_rate() {
        let targets = [target("a")];
        let labels = "direction=\"inbound\",service=\"grpc\",version=\"v1\"";
        let grpc = |ok: f64, failed: f64| {
            promtext::parse(&format!(
                "trefoil_requests_total{{{labels},status_code=\"200\"}} {}\n\
                 trefoil_grpc_responses_total{{{labels},grpc_status=\"0\"}} {ok}\n\
                 trefoil_grpc_responses_total{{{labels},grpc_status=\"5\"}} {failed}\n",
                ok + failed
            ))
            .unwrap()
        };
        let previous: Scrapes = [("a".to_string(), grpc(0.0, 0.0))].into();
        let current: Scrapes = [("a".to_string(), grpc(9.0, 1.0))].into();
        let r = report(&targets, &previous, &current, &HashMap::new(), 1.0);
        assert_eq!(r.services[0].success_rate, Some(0.9));
    }

    #[test]
    fn a_quiet_window_shows_the_totals_since_start() {
        let targets = [target("a")];
        let current: Scrapes = [("a".to_string(), samples(1.0))].into();
        let quiet = report(&targets, &current, &current, &HashMap::new(), 2.0);
        assert!(quiet.services.iter().all(|row| row.requests == 0.0));
        let r = since_start(&targets, &current, &HashMap::new(), 2.0);
        assert!(r.since_start);
        assert_eq!((r.services[0].requests, r.services[0].rps), (1.0, 0.0));
    }
}
