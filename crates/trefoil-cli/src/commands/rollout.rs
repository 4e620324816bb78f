//! `trefoil rollout status|promote|abort|pause|resume NAME`: a rollout's
//! progress with its history, and the manual overrides.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::client::{call, client, run_async, server_error, Server};
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
        RolloutCommand::Promote(t) => act(t, "promote"),
        RolloutCommand::Abort(t) => act(t, "abort"),
        RolloutCommand::Pause(t) => act(t, "pause"),
        RolloutCommand::Resume(t) => act(t, "resume"),
    }
}

/// GETs `path`: `Ok(None)` on 404, the exit code after reporting any other failure.
async fn fetch(server: &str, path: &str) -> Result<Option<Value>, ExitCode> {
    match call(&client(), server, http::Method::GET, path, None).await {
        Err(f) => {
            eprintln!("error: {}", f.message);
            Err(f.code)
        }
        Ok((200, v)) => Ok(Some(v)),
        Ok((404, _)) => Ok(None),
        Ok((status, v)) => {
            eprintln!("error: {}", server_error(status, &v));
            Err(exit::failure())
        }
    }
}

fn status(t: Target) -> ExitCode {
    run_async(async move {
        let server = &t.server.server;
        let rollout = match fetch(server, &format!("/api/v1/rollouts/{}", t.name)).await {
            Err(code) => return code,
            Ok(None) => {
                eprintln!("error: no Rollout named {:?}", t.name);
                return exit::bad_input();
            }
            Ok(Some(v)) => v,
        };
        let status = match fetch(server, &format!("/api/v1/rolloutstatus/{}", t.name)).await {
            Err(code) => return code,
            Ok(s) => s.map(|s| s["spec"].clone()),
        };
        let events = match fetch(server, "/api/v1/events").await {
            Err(code) => return code,
            Ok(list) => rollout_events(list.unwrap_or(Value::Null), &t.name),
        };
        match t.output {
            Format::Table => print_status(&t.name, &rollout["spec"], status.as_ref(), &events),
            format => print_structured(format, &json!({"name": t.name, "spec": rollout["spec"], "status": status, "events": events})),
        }
        exit::ok()
    })
}

/// This rollout's events, oldest first.
fn rollout_events(list: Value, name: &str) -> Vec<Value> {
    let regarding = format!("Rollout/{name}");
    let mut events: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["spec"]["regarding"] == regarding.as_str())
        .collect();
    oldest_first(&mut events);
    events
}

/// Orders events by time, then by their number (`web-10` after `web-9`,
/// which name order would not give).
fn oldest_first(events: &mut [Value]) {
    events.sort_by_key(|e| {
        (
            e["spec"]["timeMs"].as_u64().unwrap_or(0),
            e["metadata"]["name"].as_str().and_then(|n| n.rsplit('-').next()?.parse::<u64>().ok()).unwrap_or(0),
        )
    });
}

fn print_status(name: &str, spec: &Value, status: Option<&Value>, events: &[Value]) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!("Rollout {name}: service {} from {} to {}", text(&spec["service"]), text(&spec["stable"]), text(&spec["canary"]));
    let Some(s) = status else {
        println!("phase       not started (the controller picks it up within a second)");
        return;
    };
    println!("phase       {}", text(&s["phase"]));
    if let Some(steps) = spec["strategy"]["canary"]["steps"].as_array() {
        println!("step        {} of {}", s["step"].as_u64().unwrap_or(0).min(steps.len() as u64), steps.len());
    }
    println!("weight      {}% to {}", s["weight"].as_u64().unwrap_or(0), text(&spec["canary"]));
    let threshold = spec["analysis"]["threshold"].as_u64().map_or_else(|| "-".to_string(), |t| t.to_string());
    println!(
        "checks      {} failed (rolls back at {threshold}), {} passed in a row",
        s["failedChecks"].as_u64().unwrap_or(0),
        s["passedChecks"].as_u64().unwrap_or(0)
    );
    if let Some(c) = s.get("lastCheck").filter(|c| !c.is_null()) {
        println!("last check  {} on {} requests: {}", text(&c["verdict"]), c["requests"].as_f64().unwrap_or(0.0), figures(&c["figures"]));
    }
    println!("message     {}", text(&s["message"]));
    if !events.is_empty() {
        println!();
        print_events(events);
    }
}

/// Figures as `successRate=99.5 (min 99)`, failing ones marked.
fn figures(list: &Value) -> String {
    let parts: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let value = f["value"].as_f64().map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
            let bound = match (f["min"].as_f64(), f["max"].as_f64()) {
                (Some(min), Some(max)) => format!(" (min {min}, max {max})"),
                (Some(min), None) => format!(" (min {min})"),
                (None, Some(max)) => format!(" (max {max})"),
                (None, None) => String::new(),
            };
            let failed = if f["ok"] == false { " FAILED" } else { "" };
            format!("{}={value}{bound}{failed}", f["metric"].as_str().unwrap_or(""))
        })
        .collect();
    parts.join(", ")
}

/// Events as a table, oldest first: time, what they regard, reason, message.
pub(crate) fn print_events(events: &[Value]) {
    let mut events = events.to_vec();
    oldest_first(&mut events);
    println!("{:<20} {:<24} {:<16} MESSAGE", "TIME", "REGARDING", "REASON");
    for e in &events {
        let s = &e["spec"];
        let time = s["timeMs"].as_u64().map_or_else(String::new, |ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        });
        println!(
            "{:<20} {:<24} {:<16} {}",
            time,
            s["regarding"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or(""),
            s["message"].as_str().unwrap_or("")
        );
    }
}

fn act(t: Target, action: &str) -> ExitCode {
    run_async(async move {
        let path = format!("/api/v1/rollouts/{}/{action}", t.name);
        match call(&client(), &t.server.server, http::Method::POST, &path, None).await {
            Err(f) => {
                eprintln!("error: {}", f.message);
                f.code
            }
            Ok((200, v)) => {
                match t.output {
                    Format::Table => println!(
                        "rollout {}: {} ({})",
                        t.name,
                        v["status"]["phase"].as_str().unwrap_or(""),
                        v["status"]["message"].as_str().unwrap_or("")
                    ),
                    format => print_structured(format, &v),
                }
                exit::ok()
            }
            Ok((status, v)) => {
                eprintln!("error: {}", server_error(status, &v));
                if status == 404 {
                    exit::bad_input()
                } else {
                    exit::failure()
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_oldest_first_by_number_within_a_millisecond() {
        let event = |name: &str, time: u64| json!({"metadata": {"name": name}, "spec": {"regarding": format!("Rollout/{}", name.split('-').next().unwrap()), "timeMs": time}});
        let list = json!({"items": [event("web-10", 5), event("web-9", 5), event("web-0", 1), event("api-0", 0)]});
        let names: Vec<String> = rollout_events(list, "web").iter().map(|e| e["metadata"]["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, ["web-0", "web-9", "web-10"]);
    }

    #[test]
    fn figures_read_as_one_line() {
        let list = json!([{"metric": "successRate", "value": 50.0, "min": 99.0, "ok": false}, {"metric": "latencyP99", "value": null, "max": 0.25, "ok": false}]);
        assert_eq!(figures(&list), "successRate=50.000 (min 99) FAILED, latencyP99=n/a (max 0.25) FAILED");
    }
}
