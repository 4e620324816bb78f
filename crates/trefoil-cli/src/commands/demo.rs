//! `trefoil demo`: a gateway proxy in front of two services (one in two
//! versions), a traffic generator, and a live per-version summary. Needs
//! nothing but this binary: the services run in-process.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::output::{current_thread_runtime, exit, print_structured, Format};

#[derive(clap::Args)]
pub struct Args {
    /// Gateway port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Admin port on 127.0.0.1 (/metrics, /stats, /config).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Requests per second the traffic generator sends.
    #[arg(long, default_value_t = 50)]
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
}

#[derive(Serialize)]
struct Summary {
    gateway: String,
    admin: String,
    seconds: f64,
    served: BTreeMap<String, u64>,
    errors: u64,
}

pub fn run(args: Args) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    match runtime.block_on(demo(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::failure()
        }
    }
}

/// A tiny in-process service that answers with its name and version.
async fn start_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("hello from {name}\n"))));
                    resp.headers_mut().insert("x-served-by", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

const API: &str = "apiVersion: trefoil.dev/v1alpha1";

fn mesh_config(gateway: SocketAddr, admin: SocketAddr, access_log: &std::path::Path, web_v1: SocketAddr, web_v2: SocketAddr, api_v1: SocketAddr) -> String {
    format!(
        "{API}\nkind: Proxy\nmetadata: {{name: demo-gateway}}\nspec: {{admin: \"{admin}\", accessLog: \"{log}\"}}\n---\n\
{API}\nkind: Listener\nmetadata: {{name: gateway}}\nspec: {{address: \"{gateway}\", direction: inbound}}\n---\n\
{API}\nkind: Service\nmetadata: {{name: web}}\nspec:\n  endpoints:\n  - {{address: \"{web_v1}\", version: v1}}\n  - {{address: \"{web_v2}\", version: v2}}\n---\n\
{API}\nkind: Service\nmetadata: {{name: api}}\nspec:\n  endpoints:\n  - {{address: \"{api_v1}\", version: v1}}\n---\n\
{API}\nkind: Route\nmetadata: {{name: demo}}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - matches: [{{path: {{prefix: /web}}}}]\n    backends:\n    - {{service: web, version: v1, weight: 80}}\n    - {{service: web, version: v2, weight: 20}}\n    retry: {{attempts: 2, on: [connect-failure, gateway-error]}}\n    timeout: 5s\n  - matches: [{{path: {{prefix: /api}}}}]\n    backends: [{{service: api}}]\n    timeout: 5s\n",
        log = access_log.display()
    )
}

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    let gateway: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], args.admin_port).into();
    let (web_v1, web_v2, api_v1) = (start_backend("web v1").await?, start_backend("web v2").await?, start_backend("api v1").await?);
    let dir = std::env::temp_dir().join(format!("trefoil-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, mesh_config(gateway, admin, &dir.join("access.log"), web_v1, web_v2, api_v1))?;

    let (stop, stopped) = watch::channel(false);
    let options = trefoil_proxy::ProxyOptions {
        source: trefoil_proxy::ConfigSource::File { path: config.clone(), watch: true, watch_interval: Duration::from_secs(1) },
        admin: None,
        workers: 1,
        shutdown: Some(stopped),
    };
    let mut proxy = tokio::spawn(trefoil_proxy::run(options));
    let ready = wait_ready(admin, &mut proxy).await;
    if let Err(e) = ready {
        eprintln!("error: the demo gateway did not start: {e}");
        eprintln!("hint: pick free ports with --port and --admin-port");
        return Ok(exit::failure());
    }
    if args.output == Format::Table {
        println!("Trefoil demo: a gateway splitting /web 80/20 between web v1 and v2, and /api to api v1.\n");
        println!("  gateway   http://{gateway}/web   http://{gateway}/api");
        println!("  admin     http://{admin}/stats   http://{admin}/metrics   http://{admin}/config");
        println!("  config    {}   (edit it: the gateway reloads live)", config.display());
        println!("  logs      {}\n", dir.join("access.log").display());
        println!("Sending {} requests/s; Ctrl-C to stop.\n", args.rps);
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let generator = tokio::spawn(generate(gateway, args.rps.max(1), tally.clone()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let deadline = args.duration.map(|d| started + d);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if args.output == Format::Table {
                    print_line(started.elapsed(), &tally.lock().unwrap_or_else(|e| e.into_inner()));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) { break }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    generator.abort();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), proxy).await;
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    let summary = Summary { gateway: gateway.to_string(), admin: admin.to_string(), seconds: started.elapsed().as_secs_f64(), served: tally.served.clone(), errors: tally.errors };
    match args.output {
        Format::Table => println!("\nstopped after {:.0}s: {} requests, {} errors", summary.seconds, summary.served.values().sum::<u64>(), summary.errors),
        format => print_structured(format, &summary),
    }
    Ok(if tally.errors == 0 { exit::ok() } else { exit::failure() })
}

async fn wait_ready(admin: SocketAddr, proxy: &mut tokio::task::JoinHandle<Result<(), trefoil_proxy::StartError>>) -> anyhow::Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if proxy.is_finished() {
            return match proxy.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(anyhow::anyhow!("the proxy stopped")),
            };
        }
        if let Ok(uri) = format!("http://{admin}/ready").parse::<http::Uri>() {
            if let Ok(resp) = client.get(uri).await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow::anyhow!("not ready within 10s"))
}

async fn generate(gateway: SocketAddr, rps: u32, tally: Arc<Mutex<Tally>>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let path = if n % 2 == 0 { "/web" } else { "/api" };
        let (client, tally) = (client.clone(), tally.clone());
        tokio::spawn(async move {
            let result = match format!("http://{gateway}{path}").parse::<http::Uri>() {
                Ok(uri) => client.get(uri).await.ok(),
                Err(_) => None,
            };
            let served_by = match result {
                Some(resp) if resp.status().is_success() => {
                    let who = resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                    let _ = resp.into_body().collect().await;
                    Some(who)
                }
                _ => None,
            };
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match served_by {
                Some(who) => *t.served.entry(who).or_default() += 1,
                None => t.errors += 1,
            }
        });
    }
}

fn print_line(elapsed: Duration, tally: &Tally) {
    let web: u64 = tally.served.iter().filter(|(k, _)| k.starts_with("web")).map(|(_, v)| v).sum();
    let mut line = format!("{:>4}s ", elapsed.as_secs());
    for (who, count) in &tally.served {
        let share = if who.starts_with("web") && web > 0 { format!(" ({:.0}% of web)", *count as f64 * 100.0 / web as f64) } else { String::new() };
        line.push_str(&format!("  {who}: {count}{share}"));
    }
    line.push_str(&format!("  errors: {}", tally.errors));
    println!("{line}");
}
