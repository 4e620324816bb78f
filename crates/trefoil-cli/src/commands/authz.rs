//! `trefoil authz explain`: which authorization policy and rule decide a
//! request, and why. The policies come from the control plane; the decision
//! is `trefoil_model::authz`, the evaluator the proxies enforce with, so the
//! answer here and a proxy's cannot differ.

use std::net::IpAddr;
use std::process::ExitCode;

use serde::Serialize;
use trefoil_model::authz::{Decision, PolicySet, Reason, Request};
use trefoil_model::parsed::Method;
use trefoil_model::spec::AuthzAction;

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Authorization policies: who may call a service, on what.

  explain   which policy and rule decide a request, and why

Policies are enforced by the proxy in front of a service's inbound side
(a sidecar's inbound listener, or a Listener with direction inbound), before
any CNF chain: a matching deny rule refuses (403, flag rbac_denied); audit
rules are recorded; then, if any allow policy selects the service, a request
no allow rule matches is refused (default deny). See docs/security.md.";

const EXPLAIN_HELP: &str = "Examples:
  trefoil authz explain --from spiffe://trefoil.local/ns/default/sa/web --to api/v1/items --method GET
  trefoil authz explain --to api/admin --method DELETE --header x-env=prod -o json

--to is SERVICE/PATH (the path without its query; SERVICE alone means /). --from is the
caller's SPIFFE id as its client certificate proves it; leave it out for a caller
without one. --host defaults to the service name, --source-ip to none.

The answer is computed with the evaluator the proxies use, from the policies the
control plane holds now (a proxy applies them once its snapshot arrives).

Exit codes: 0 answered (allowed or denied; -o json says `allowed`), 1 the control plane
failed or is unreachable, 2 a malformed option.";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: AuthzCommand,
}

#[derive(clap::Subcommand)]
enum AuthzCommand {
    /// Which policy and rule decide a request: `--from spiffe://... --to svc/path --method GET`.
    #[command(after_help = EXPLAIN_HELP)]
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The caller's SPIFFE id; absent: a caller without a verified certificate.
    #[arg(long = "from", value_name = "SPIFFE_ID")]
    from: Option<String>,
    /// SERVICE/PATH, e.g. api/v1/items.
    #[arg(long = "to", value_name = "SERVICE/PATH")]
    to: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The port the request arrives on at the proxy.
    #[arg(long)]
    port: Option<u16>,
    /// The request's host; the service name when absent.
    #[arg(long)]
    host: Option<String>,
    /// A request header, NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The caller's address (for ipBlocks).
    #[arg(long, value_name = "IP")]
    source_ip: Option<IpAddr>,
    /// The TLS server name the caller asked for.
    #[arg(long)]
    sni: Option<String>,
    /// As the sidecar of this workload sees it (policies for other workloads left out).
    #[arg(long)]
    workload: Option<String>,
    #[command(flatten)]
    server: Server,
    /// Output format (json/yaml: {service, path, method, principal, allowed, reason, rule, why, audited, policies}).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match args.command {
        AuthzCommand::Explain(a) => explain(a),
    }
}

fn bad_input(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    exit::bad_input()
}

/// `authz explain -o json|yaml`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Explained {
    service: String,
    path: String,
    method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    #[serde(flatten)]
    decision: Decision,
    /// What in the request matched the deciding rule.
    why: Vec<String>,
    /// The policies selecting the service, in the order they are evaluated.
    policies: Vec<String>,
}

fn explain(a: ExplainArgs) -> ExitCode {
    let (service, path) = match a.to.split_once('/') {
        Some((s, p)) => (s.to_string(), format!("/{p}")),
        None => (a.to.clone(), "/".to_string()),
    };
    if service.is_empty() {
        return bad_input(format!("--to {:?}: write SERVICE/PATH, e.g. api/v1/items", a.to));
    }
    let method: Method = match a.method.parse() {
        Ok(m) => m,
        Err(e) => return bad_input(format!("--method: {e}")),
    };
    if let Some(from) = a.from.as_deref().filter(|f| !f.starts_with("spiffe://")) {
        return bad_input(format!("--from {from:?}: a principal is a SPIFFE id, spiffe://TRUST-DOMAIN/ns/NS/sa/NAME"));
    }
    let mut headers = http::HeaderMap::new();
    for h in &a.headers {
        let Some((name, value)) = h.split_once('=') else { return bad_input(format!("--header {h:?}: write NAME=VALUE")) };
        match (http::HeaderName::try_from(name.trim()), http::HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return bad_input(format!("--header {h:?}: not a valid header name and value")),
        }
    }
    run_async(async move {
        let policies = match a.server.client().list("AuthorizationPolicy").await {
            Ok(list) => list.items,
            Err(e) => return report(&a.server.url(), &e),
        };
        let set = PolicySet::selecting(&policies, &service, a.workload.as_deref());
        let host = a.host.clone().unwrap_or_else(|| service.clone());
        let request = Request {
            principal: a.from.as_deref(),
            source: a.source_ip,
            method: method.as_http().as_str(),
            path: &path,
            port: a.port,
            host: &host,
            sni: a.sni.as_deref(),
            headers: &headers,
        };
        let decision = set.evaluate(&request);
        let why = decision.rule.as_ref().map(|r| set.why(r, &request)).unwrap_or_default();
        let explained = Explained {
            service: service.clone(),
            path: path.clone(),
            method: method.to_string(),
            principal: a.from.clone(),
            decision,
            why,
            policies: set.policies().iter().map(|p| format!("{} ({})", p.name, p.spec.action.as_str())).collect(),
        };
        match a.output {
            Format::Table => print!("{}", explained_text(&explained)),
            format => print_structured(format, &explained),
        }
        exit::ok()
    })
}

/// The human answer of `explain`.
fn explained_text(e: &Explained) -> String {
    let caller = e.principal.as_deref().unwrap_or("a caller without a verified identity");
    let d = &e.decision;
    let verdict = if d.allowed { "ALLOWED" } else { "DENIED (403 rbac_denied)" };
    let mut out = format!("{} {}{} from {caller}: {verdict}\n", e.method, e.service, e.path);
    match (d.reason, &d.rule) {
        (Reason::Denied | Reason::Allowed, Some(r)) => {
            out.push_str(&format!("  decided by {} policy {}, rule {}:\n", r.action.as_str(), r.policy, r.rule));
            for line in &e.why {
                out.push_str(&format!("    {line}\n"));
            }
        }
        (Reason::DefaultDeny, _) => {
            out.push_str(&format!("  default deny: allow policies select {} and none of their rules matches\n", e.service))
        }
        _ => out.push_str(&format!("  no allow or deny policy selects {}: every request passes\n", e.service)),
    }
    for a in &d.audited {
        debug_assert_eq!(a.action, AuthzAction::Audit);
        out.push_str(&format!("  audited by policy {}, rule {}\n", a.policy, a.rule));
    }
    out.push_str(&format!(
        "  policies in front of {} (deny, audit, then allow): {}\n",
        e.service,
        if e.policies.is_empty() { "none".to_string() } else { e.policies.join(", ") }
    ));
    out
}
