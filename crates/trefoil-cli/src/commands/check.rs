//! `trefoil check`: is the mesh healthy? One line per check, exit 1 if any fails.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use trefoil_api::{Client, ProxyStatus};
use trefoil_metrics::fetch::Fetcher;
use trefoil_model::relations::{self, Mesh};

use crate::commands::client::version_text;
use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Check the mesh and print one line per check with ok or FAIL and the reason:

  control plane    its REST API answers
  proxy NAME       connected to the control plane and running the newest snapshot (acked, no NACK)
  proxy NAME ready its admin /ready answers 200
  proxy NAME lag   warn: it serves a snapshot more than --max-lag store revisions older than the newest compiled for it
  workload NAME    as many ready replicas (Endpoints of its service) as spec.replicas asks
  tls SERVICE      warn: a TrafficPolicy says `tls: disable`, so hops to it between proxies are plaintext";

#[derive(clap::Args)]
#[command(after_help = "Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments.")]
pub(crate) struct Args {
    #[command(flatten)]
    server: super::client::Server,
    /// Warn about a proxy (or node agent) serving a snapshot more than this many store revisions behind the newest compiled for it.
    #[arg(long, default_value_t = DEFAULT_MAX_LAG, value_name = "N")]
    max_lag: u64,
    /// Output format (json/yaml: {checks: [{name, ok, detail}], ok}).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `--max-lag`: a few bursts of writes behind is normal while a proxy
/// catches up; this many store revisions is a proxy that stopped keeping up.
const DEFAULT_MAX_LAG: u64 = 50;

/// One check's outcome.
#[derive(Serialize)]
struct Check {
    name: String,
    ok: bool,
    /// Passes, but something deserves a look (a plaintext hop).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    warning: bool,
    detail: String,
}

impl Check {
    fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        Check { name: name.into(), ok, warning: false, detail: detail.into() }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check { warning: true, ..Check::new(name, true, detail) }
    }
}

#[derive(Serialize)]
struct Outcome {
    checks: Vec<Check>,
    ok: bool,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    let checks = rt.block_on(checks(&args.server.url(), args.server.client(), args.max_lag));
    let outcome = Outcome { ok: checks.iter().all(|c| c.ok), checks };
    match args.output {
        Format::Table => {
            for c in &outcome.checks {
                let verdict = match (c.ok, c.warning) {
                    (false, _) => "FAIL",
                    (true, true) => "warn",
                    (true, false) => "ok",
                };
                println!("{:<4} {:<32} {}", verdict, c.name, c.detail);
            }
        }
        format => print_structured(format, &outcome),
    }
    if outcome.ok {
        exit::ok()
    } else {
        exit::failure()
    }
}

/// One deadline for every call: a check that hangs is a failed check.
const TIMEOUT: Duration = Duration::from_secs(3);

async fn checks(server: &str, control: Client, max_lag: u64) -> Vec<Check> {
    let control = control.with_timeout(TIMEOUT);
    if let Err(e) = control.reachable().await {
        // Every other check asks the control plane; one clear failure beats many echoes.
        return vec![Check::new("control plane", false, e.to_string())];
    }
    let mut out = vec![Check::new("control plane", true, format!("reachable at {server}"))];
    out.extend(proxy_checks(&control, &Fetcher::new(TIMEOUT), max_lag).await);
    out.extend(workload_checks(&control).await);
    out
}

async fn proxy_checks(control: &Client, fetcher: &Fetcher, max_lag: u64) -> Vec<Check> {
    let proxies = match control.proxies().await {
        Ok(p) => p.items,
        Err(e) if e.status() == Some(404) => {
            return vec![Check::new(
                "proxies",
                false,
                "this control plane does not report proxy status (GET /api/v1/status/proxies answered 404)",
            )];
        }
        Err(e) => return vec![Check::new("proxies", false, format!("cannot list proxies: {e}"))],
    };
    if proxies.is_empty() {
        return vec![Check::new("proxies", true, "no proxies known to the control plane")];
    }
    let mut out = Vec::new();
    for p in &proxies {
        out.push(config_check(p));
        out.extend(lag_check(p, max_lag));
        // A node agent has no admin listener; its table's ACK is its check.
        if p.node.is_none() {
            out.push(ready_check(fetcher, p).await);
        }
    }
    out
}

/// Connected, and the newest snapshot is the one acknowledged.
fn config_check(p: &ProxyStatus) -> Check {
    let name = match &p.node {
        Some(node) => format!("datapath agent of node {node}"),
        None => format!("proxy {}", p.name),
    };
    if !p.connected {
        return Check::new(name, false, "not connected to the control plane");
    }
    let (latest, acked) = (version_text(p.latest_version), version_text(p.acked_version));
    if p.in_sync() {
        return Check::new(name, true, format!("connected, snapshot {acked} acknowledged"));
    }
    match &p.nack {
        Some(nack) => Check::new(name, false, format!("refused snapshot {}: {}", nack.version, nack.error)),
        None => Check::new(name, false, format!("runs snapshot {acked}, newest is {latest}")),
    }
}

/// A warning for a proxy more than `max_lag` store revisions behind.
fn lag_check(p: &ProxyStatus, max_lag: u64) -> Option<Check> {
    let lag = p.lag.filter(|lag| *lag > max_lag)?;
    Some(Check::warn(
        format!("proxy {} lag", p.name),
        format!(
            "serves snapshot {}, {lag} store revisions behind the newest compiled for it ({}); more than --max-lag {max_lag}",
            version_text(p.acked_version),
            version_text(p.latest_version)
        ),
    ))
}

async fn ready_check(fetcher: &Fetcher, p: &ProxyStatus) -> Check {
    let name = format!("proxy {} ready", p.name);
    let Some(admin) = p.admin_address.as_deref().filter(|a| !a.is_empty()) else {
        return Check::new(name, false, "the control plane knows no admin address for it");
    };
    match fetcher.get(&format!("proxy {}", p.name), &format!("http://{admin}"), "/ready").await {
        Ok((200, _)) => Check::new(name, true, format!("{admin}/ready answered 200")),
        Ok((status, body)) => {
            Check::new(name, false, format!("{admin}/ready answered {status}: {}", String::from_utf8_lossy(&body).trim()))
        }
        Err(e) => Check::new(name, false, e.to_string()),
    }
}

async fn workload_checks(control: &Client) -> Vec<Check> {
    let mut resources = Vec::new();
    for kind in relations::reads("check") {
        match control.list(kind).await {
            Ok(list) => resources.extend(list.items),
            Err(e) => return vec![Check::new("workloads", false, format!("cannot list workloads and endpoints: {e}"))],
        }
    }
    let mut out = plaintext_hops(&resources);
    let readiness = Mesh::new(&resources).workload_readiness();
    if readiness.is_empty() {
        out.push(Check::new("workloads", true, "no workloads"));
        return out;
    }
    out.extend(readiness.iter().map(|w| {
        let detail = format!("{}/{} replicas ready (service {})", w.ready, w.replicas, w.service);
        Check::new(format!("workload {}", w.name), w.is_ready(), detail)
    }));
    out
}

/// A warning per service whose TrafficPolicy turns the mesh's mutual TLS
/// off: requests to it cross the network between proxies in plaintext.
fn plaintext_hops(resources: &[trefoil_model::Resource]) -> Vec<Check> {
    use trefoil_model::spec::TlsMode;
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            trefoil_model::Spec::TrafficPolicy(p) if p.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Disable) => Some(Check::warn(
                format!("tls {}", p.service),
                format!("TrafficPolicy {} says `tls: disable`: hops to service {} are plaintext", r.name(), p.service),
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: &str) -> ProxyStatus {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_proxy_passes_when_connected_and_on_the_newest_snapshot() {
        let c = config_check(&status(r#"{"name":"gw","connected":true,"adminAddress":"127.0.0.1:1","latestVersion":7,"ackedVersion":7}"#));
        assert!(c.ok, "{}", c.detail);
        assert_eq!(c.name, "proxy gw");
    }

    #[test]
    fn a_proxy_fails_when_disconnected_behind_or_nacking() {
        let c = config_check(&status(r#"{"name":"gw","connected":false,"latestVersion":7,"ackedVersion":7}"#));
        assert!(!c.ok && c.detail.contains("not connected"));
        let c = config_check(&status(r#"{"name":"gw","connected":true,"latestVersion":8,"ackedVersion":7}"#));
        assert!(!c.ok);
        assert_eq!(c.detail, "runs snapshot 7, newest is 8");
        let c = config_check(&status(
            r#"{"name":"gw","connected":true,"latestVersion":8,"ackedVersion":7,"nack":{"version":8,"error":"snapshot 8: spec.rules: bad"}}"#,
        ));
        assert!(!c.ok);
        assert_eq!(c.detail, "refused snapshot 8: snapshot 8: spec.rules: bad");
        // Never acknowledged anything.
        assert!(!config_check(&status(r#"{"name":"gw","connected":true,"latestVersion":"3"}"#)).ok);
        // An old NACK does not matter once the newest snapshot is acknowledged.
        assert!(
            config_check(&status(r#"{"name":"gw","connected":true,"latestVersion":9,"ackedVersion":9,"nack":{"version":8,"error":"x"}}"#))
                .ok
        );
    }

    #[test]
    fn a_proxy_more_revisions_behind_than_allowed_is_a_warning() {
        let behind = status(r#"{"name":"gw","connected":true,"latestVersion":80,"ackedVersion":20,"lag":60}"#);
        let c = lag_check(&behind, 50).unwrap();
        assert!(c.ok && c.warning);
        assert_eq!(c.name, "proxy gw lag");
        assert!(c.detail.contains("60 store revisions behind"), "{}", c.detail);
        assert!(lag_check(&behind, 60).is_none(), "at the limit is fine");
        assert!(lag_check(&status(r#"{"name":"gw","connected":false}"#), 0).is_none(), "no lag known");
    }

    #[test]
    fn a_disabled_tls_policy_is_a_warning_and_other_modes_are_not() {
        let policy = |name: &str, mode: &str| {
            let text = format!("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec: {{service: {name}, tls: {{mode: {mode}}}}}\n");
            trefoil_model::load_str(&std::sync::Arc::from("p.yaml"), &text).unwrap().remove(0).resource
        };
        let checks = plaintext_hops(&[policy("api", "disable"), policy("web", "permissive"), policy("db", "strict")]);
        assert_eq!(checks.len(), 1);
        assert!(checks[0].ok && checks[0].warning, "a warning does not fail the check");
        assert_eq!(checks[0].name, "tls api");
    }
}
