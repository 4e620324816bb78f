//! `trefoil rollout status|promote|abort|pause|resume NAME`: a rollout's
//! progress with its history, and the manual overrides.

use std::process::ExitCode;

use serde::Serialize;
use trefoil_api::{ApiError, RolloutAction};
use trefoil_model::spec::{Figure, RolloutSpec, RolloutStatusSpec, Strategy};
use trefoil_model::{Resource, Spec};

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Follow and steer a Rollout.

  status NAME   phase, step, canary weight, failed checks, the last check's figures, and its events
  promote NAME  send all traffic to the canary now (the rollout succeeds)
  abort NAME    send all traffic back to stable now (the rollout stops)
  pause NAME    hold the current traffic split; no steps, no checks
  resume NAME   continue a paused rollout (a pause step restarts its wait)

The control plane's rollout controller does the work: the actions are recorded
in RolloutStatus/NAME with an Event, and the controller rewrites the Route.";

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 ok, 1 the control plane refused or failed (e.g. the rollout already finished), 2 no such rollout or bad arguments."
)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: RolloutCommand,
}

#[derive(clap::Subcommand)]
enum RolloutCommand {
    /// Phase, weight, checks and events of a rollout.
    Status(Target),
    /// All traffic to the canary now.
    Promote(Target),
    /// All traffic back to stable now.
    Abort(Target),
    /// Hold the current split.
    Pause(Target),
    /// Continue a paused rollout.
    Resume(Target),
}

#[derive(clap::Args)]
struct Target {
    /// The Rollout's name.
    name: String,
    #[command(flatten)]
    server: Server,
    /// Output format (json/yaml: {name, spec, status, events}).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match args.action {
        RolloutCommand::Status(t) => status(t),
        RolloutCommand::Promote(t) => act(t, RolloutAction::Promote),
        RolloutCommand::Abort(t) => act(t, RolloutAction::Abort),
        RolloutCommand::Pause(t) => act(t, RolloutAction::Pause),
        RolloutCommand::Resume(t) => act(t, RolloutAction::Resume),
    }
}

/// `rollout status -o json|yaml`.
#[derive(Serialize)]
struct StatusView<'a> {
    name: &'a str,
    spec: &'a RolloutSpec,
    status: Option<&'a RolloutStatusSpec>,
    events: &'a [Resource],
}

fn status(t: Target) -> ExitCode {
    run_async(async move {
        let (server, client) = (&t.server.url(), t.server.client());
        let rollout = match client.find("Rollout", &t.name).await {
            Err(e) => return report(server, &e),
            Ok(Some(Resource { spec: Spec::Rollout(spec), .. })) => spec,
            Ok(_) => {
                eprintln!("error: no Rollout named {:?}", t.name);
                return exit::bad_input();
            }
        };
        let status = match client.find("RolloutStatus", &t.name).await {
            Err(e) => return report_failure(server, &e),
            Ok(Some(Resource { spec: Spec::RolloutStatus(s), .. })) => Some(s),
            Ok(_) => None,
        };
        let events = match client.list("Event").await {
            Err(e) => return report_failure(server, &e),
            Ok(list) => rollout_events(list.items, &t.name),
        };
        match t.output {
            Format::Table => print_status(&t.name, &rollout, status.as_ref(), &events),
            format => print_structured(format, &StatusView { name: &t.name, spec: &rollout, status: status.as_ref(), events: &events }),
        }
        exit::ok()
    })
}

/// Like `report`, but exit 1 whatever failed: only the Rollout itself is what the user named.
fn report_failure(server: &str, e: &ApiError) -> ExitCode {
    report(server, e);
    exit::failure()
}

/// This rollout's events, oldest first.
fn rollout_events(items: Vec<Resource>, name: &str) -> Vec<Resource> {
    let regarding = format!("Rollout/{name}");
    let mut events: Vec<Resource> = items.into_iter().filter(|e| matches!(&e.spec, Spec::Event(s) if s.regarding == regarding)).collect();
    oldest_first(&mut events);
    events
}

/// Orders events by time, then by their number (`web-10` after `web-9`,
/// which name order would not give).
fn oldest_first(events: &mut [Resource]) {
    events.sort_by_key(|e| {
        (
            match &e.spec {
                Spec::Event(s) => s.time_ms,
                _ => 0,
            },
            e.name().rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
        )
    });
}

/// A unit enum as the API spells it (`Progressing`, `passed`).
fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn print_status(name: &str, spec: &RolloutSpec, status: Option<&RolloutStatusSpec>, events: &[Resource]) {
    println!("Rollout {name}: service {} from {} to {}", spec.service, spec.stable, spec.canary);
    let Some(s) = status else {
        println!("phase       not started (the controller picks it up within a second)");
        return;
    };
    println!("phase       {}", word(&s.phase));
    if let Strategy::Canary(canary) = &spec.strategy {
        let steps = canary.steps.len();
        println!("step        {} of {steps}", s.step.min(steps));
    }
    println!("weight      {}% to {}", s.weight, spec.canary);
    let threshold = spec.analysis.as_ref().map_or_else(|| "-".to_string(), |a| a.threshold.to_string());
    println!("checks      {} failed (rolls back at {threshold}), {} passed in a row", s.failed_checks, s.passed_checks);
    if let Some(c) = &s.last_check {
        println!("last check  {} on {} requests: {}", word(&c.verdict), c.requests, figures(&c.figures));
    }
    println!("message     {}", s.message);
    if !events.is_empty() {
        println!();
        print_events(events);
    }
}

/// Figures as `successRate=99.5 (min 99)`, failing ones marked.
fn figures(list: &[Figure]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|f| {
            let value = f.value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
            let bound = match (f.min, f.max) {
                (Some(min), Some(max)) => format!(" (min {min}, max {max})"),
                (Some(min), None) => format!(" (min {min})"),
                (None, Some(max)) => format!(" (max {max})"),
                (None, None) => String::new(),
            };
            let failed = if f.ok { "" } else { " FAILED" };
            format!("{}={value}{bound}{failed}", f.metric)
        })
        .collect();
    parts.join(", ")
}

/// Events as a table, oldest first: time, what they regard, reason, message.
pub(crate) fn print_events(events: &[Resource]) {
    let mut events = events.to_vec();
    oldest_first(&mut events);
    println!("{:<20} {:<24} {:<16} MESSAGE", "TIME", "REGARDING", "REASON");
    for e in &events {
        let Spec::Event(s) = &e.spec else { continue };
        let time = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.time_ms)).to_string();
        println!("{:<20} {:<24} {:<16} {}", time, s.regarding, s.reason, s.message);
    }
}

fn act(t: Target, action: RolloutAction) -> ExitCode {
    run_async(async move {
        match t.server.client().rollout_action(&t.name, action).await {
            Err(e) => report(&t.server.url(), &e),
            Ok(acted) => {
                match t.output {
                    Format::Table => println!("rollout {}: {} ({})", t.name, word(&acted.status.phase), acted.status.message),
                    format => print_structured(format, &acted),
                }
                exit::ok()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event(name: &str, time: u64) -> Resource {
        let regarding = name.split('-').next().unwrap();
        let yaml = format!(
            "apiVersion: trefoil.dev/v1alpha1\nkind: Event\nmetadata: {{name: {name}}}\nspec: {{regarding: Rollout/{regarding}, reason: r, message: m, timeMs: {time}}}\n"
        );
        trefoil_model::load_str(&Arc::from("t"), &yaml).unwrap().remove(0).resource
    }

    #[test]
    fn events_read_oldest_first_by_number_within_a_millisecond() {
        let items = vec![event("web-10", 5), event("web-9", 5), event("web-0", 1), event("api-0", 0)];
        let names: Vec<String> = rollout_events(items, "web").iter().map(|e| e.name().to_string()).collect();
        assert_eq!(names, ["web-0", "web-9", "web-10"]);
    }

    #[test]
    fn figures_read_as_one_line() {
        let list: Vec<Figure> = serde_json::from_str(
            r#"[{"metric": "successRate", "value": 50.0, "min": 99.0, "ok": false}, {"metric": "latencyP99", "value": null, "max": 0.25, "ok": false}]"#,
        )
        .unwrap();
        assert_eq!(figures(&list), "successRate=50.000 (min 99) FAILED, latencyP99=n/a (max 0.25) FAILED");
    }
}
