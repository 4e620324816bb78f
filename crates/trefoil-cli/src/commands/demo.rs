//! `trefoil demo`: the quickstart mesh (`examples/quickstart/mesh.yaml`)
//! run by the local runtime, with a traffic generator and a live tally of
//! who served what. Needs nothing but this binary: the apps are
//! `trefoil demo-app`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use trefoil_runtime::datapath::{DatapathMode, DatapathOptions};
use trefoil_runtime::{Event, Events, UpError, UpOptions};

use crate::commands::up::show;
use crate::output::{current_thread_runtime, exit, print_structured, stop_signal, Format};

/// The mesh the demo runs; its gateway listens on [`QUICKSTART_GATEWAY`].
const QUICKSTART: &str = include_str!("../../../../examples/quickstart/mesh.yaml");
const QUICKSTART_GATEWAY: &str = "127.0.0.1:8080";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Gateway port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// First proxy admin port (the gateway's; sidecars follow); 0 lets the OS choose.
    #[arg(long, default_value_t = 15000)]
    admin_base: u16,
    /// Control plane REST API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Control plane config stream (gRPC) address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7071")]
    grpc_listen: SocketAddr,
    /// Requests per second the traffic generator sends.
    #[arg(long, default_value_t = 20)]
    rps: u32,
    /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Output format of the final summary.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trefoil_model::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

/// Responses counted by who served them (`x-served-by`).
#[derive(Default, Serialize)]
struct Tally {
    served: BTreeMap<String, u64>,
    errors: u64,
    /// The first few failures, to say what went wrong.
    first_errors: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    gateway: String,
    api: String,
    seconds: f64,
    served: BTreeMap<String, u64>,
    errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    first_errors: Vec<String>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    match runtime.block_on(demo(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::failure()
        }
    }
}

/// The context the demo adds while it runs, and removes after.
const DEMO_CONTEXT: &str = "demo";

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    let gateway = SocketAddr::from(([127, 0, 0, 1], args.port));
    let dir = std::env::temp_dir().join(format!("trefoil-demo-{}", std::process::id()));
    let files = dir.join("mesh.yaml");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&files, QUICKSTART.replace(QUICKSTART_GATEWAY, &gateway.to_string()))?;
    let identity = super::up::identity_plan(&dir.join("state"), &Default::default(), trefoil_control::identity::DEFAULT_LIFETIME);
    let options = UpOptions {
        identity,
        files,
        state: dir.join("state"),
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        admin_base: args.admin_base,
        exe: std::env::current_exe()?,
        // The demo's mesh has no DatapathRules; never touch the kernel.
        datapath: DatapathOptions { mode: DatapathMode::Off, ..DatapathOptions::default() },
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let up = trefoil_runtime::up(options, Events::new(events_tx), async {
        let _ = stopped.await;
    });
    tokio::pin!(up);
    // Ctrl-C or SIGTERM, listened for once for the whole run.
    let interrupted = stop_signal();
    tokio::pin!(interrupted);

    // Start-up: progress until the runtime says everything runs.
    let (api, previous_context, portal) = loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Up(summary) => {
                    let previous = super::up::wire_context(DEMO_CONTEXT, &summary);
                    break (summary.api.clone(), previous, super::up::login_link(&summary).await);
                }
                other => show(other, args.output),
            },
            result = &mut up => return Ok(failed_to_start(result, &dir)),
            _ = &mut interrupted => {
                let _ = stop.send(());
                let _ = up.await;
                return Ok(exit::failure());
            }
        }
    };
    if args.output == Format::Table {
        println!("\nTrefoil demo: a gateway, `web` v1 and v2 (80/20) calling `api` (2 replicas) through their sidecars.\n");
        println!("  portal      {portal}   (open it in a browser: the link logs you in, once)");
        println!("  gateway     http://{gateway}/      (web, which calls api)   http://{gateway}/api");
        println!("  API         {api}/api/v1/routes   (bearer token: the context `demo`, see trefoil config get-contexts)");
        println!("  try         trefoil get proxies   trefoil top   trefoil check   trefoil describe service web");
        println!("  shift       trefoil apply -f examples/quickstart/canary-to-v2.yaml   (all of web to v2, live)");
        println!("  logs        trefoil logs web-v1-0 --state {}", dir.join("state").display());
        println!("\nSending {} requests/s; Ctrl-C stops everything.\n", args.rps);
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let (generator_stop, generator_stopped) = oneshot::channel();
    let generator = tokio::spawn(generate(gateway, args.rps.max(1), tally.clone(), generator_stopped));
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut up_ended = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if args.output == Format::Table {
                    print_line(started.elapsed(), &tally.lock().unwrap_or_else(|e| e.into_inner()));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) { break }
            }
            Some(event) = events.recv() => if args.output == Format::Table { show(event, args.output) },
            result = &mut up => {
                up_ended = Some(result);
                break;
            }
            _ = &mut interrupted => break,
        }
    }
    // Requests in flight finish before the mesh stops, so none is counted as an error of stopping.
    let _ = generator_stop.send(());
    let _ = generator.await;
    let seconds = started.elapsed().as_secs_f64();
    let result = match up_ended {
        Some(result) => result,
        None => {
            let _ = stop.send(());
            up.await
        }
    };
    // Its token is gone with the state directory: so is its context.
    if let Some(previous) = previous_context {
        if let Err(e) = super::config::forget(DEMO_CONTEXT, previous) {
            eprintln!("warning: cannot remove the demo's context: {e}");
        }
    }
    if let Err(e) = result {
        eprintln!("error: the mesh stopped: {e}");
        return Ok(exit::failure());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    let summary = Summary {
        gateway: gateway.to_string(),
        api,
        seconds,
        served: tally.served.clone(),
        errors: tally.errors,
        first_errors: tally.first_errors.clone(),
    };
    match args.output {
        Format::Table => println!(
            "\nstopped after {:.0}s: {} requests, {} errors",
            summary.seconds,
            summary.served.values().sum::<u64>() + summary.errors,
            summary.errors
        ),
        format => print_structured(format, &summary),
    }
    Ok(if tally.errors == 0 { exit::ok() } else { exit::failure() })
}

fn failed_to_start(result: Result<(), UpError>, dir: &std::path::Path) -> ExitCode {
    match result {
        Err(e) => {
            eprintln!("error: the demo mesh did not start: {e}");
            eprintln!("hint: another trefoil may hold the ports; pick others with --port, --admin-base, --listen and --grpc-listen");
            eprintln!("logs: {}", logs_dir(dir).display());
        }
        Ok(()) => eprintln!("error: the demo mesh stopped before it was up"),
    }
    exit::failure()
}

fn logs_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("state").join("logs")
}

/// Alternates `/` (web, which calls api) and `/api` at `rps` until told to stop,
/// then waits for the requests in flight.
async fn generate(gateway: SocketAddr, rps: u32, tally: Arc<Mutex<Tally>>, mut stop: oneshot::Receiver<()>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    let mut in_flight = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        n += 1;
        let path = if n.is_multiple_of(2) { "/" } else { "/api" };
        let (client, tally) = (client.clone(), tally.clone());
        in_flight.spawn(async move {
            let served_by = match format!("http://{gateway}{path}").parse::<http::Uri>() {
                Err(e) => Err(e.to_string()),
                Ok(uri) => match tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await {
                    Err(_) => Err(format!("GET {path}: no response within 10s")),
                    Ok(Err(e)) => Err(format!("GET {path}: {e}")),
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let who = resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if status.is_success() {
                            Ok(who)
                        } else {
                            Err(format!("GET {path}: {status} from {who}: {}", String::from_utf8_lossy(&body).trim()))
                        }
                    }
                },
            };
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match served_by {
                Ok(who) => *t.served.entry(who).or_default() += 1,
                Err(e) => {
                    t.errors += 1;
                    if t.first_errors.len() < 5 {
                        t.first_errors.push(e);
                    }
                }
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

fn print_line(elapsed: Duration, tally: &Tally) {
    let web: u64 = tally.served.iter().filter(|(k, _)| k.starts_with("web")).map(|(_, v)| v).sum();
    let mut line = format!("{:>4}s ", elapsed.as_secs());
    for (who, count) in &tally.served {
        let share =
            if who.starts_with("web") && web > 0 { format!(" ({:.0}% of web)", *count as f64 * 100.0 / web as f64) } else { String::new() };
        line.push_str(&format!("  {who}: {count}{share}"));
    }
    line.push_str(&format!("  errors: {}", tally.errors));
    println!("{line}");
}
