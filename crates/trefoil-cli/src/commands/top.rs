//! `trefoil top`: live request rate, success rate and latency per service
//! and version, from two scrapes of every proxy's `/metrics`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use trefoil_api::ProxyStatus;
use trefoil_metrics::fetch::Fetcher;
use trefoil_metrics::top::{report, scrape_all, since_start, Report, Target};

use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Show live traffic per service and version: requests per second, success rate \
(share of non-5xx answers) and p50/p99 latency.

Each proxy's /metrics is scraped twice, --interval apart; rates and quantiles come from what \
grew in between (quantiles interpolate inside histogram buckets, as Prometheus' \
histogram_quantile). A request is counted once: by the sidecars in front of a service \
(direction=inbound) where it has them, else by the proxies sending to it (direction=outbound).

The proxies come from the control plane (GET /api/v1/status/proxies), or from --proxy.
Without --once the table refreshes until Ctrl-C. Proxies that do not answer are listed as unreachable.";

#[derive(clap::Args)]
#[command(after_help = "Exit codes: 0 ok, 1 the control plane could not be asked for proxies, 2 bad arguments.")]
pub(crate) struct Args {
    #[command(flatten)]
    server: super::client::Server,
    /// Scrape this proxy admin address (ip:port) instead of asking the control plane; repeatable.
    #[arg(long = "proxy", value_name = "ADMIN_ADDR")]
    proxies: Vec<String>,
    /// Time between the two scrapes each figure is computed from.
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    interval: trefoil_model::Duration,
    /// Take one interval, print once and exit.
    #[arg(long)]
    once: bool,
    /// Output format; json and yaml imply --once.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn positive_duration(s: &str) -> Result<trefoil_model::Duration, String> {
    match s.parse::<trefoil_model::Duration>() {
        Ok(d) if d.get() >= Duration::from_millis(10) => Ok(d),
        Ok(_) => Err("the interval must be at least 10ms".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    rt.block_on(top(args))
}

async fn top(args: Args) -> ExitCode {
    // One listener for the whole run, so a Ctrl-C during a scrape is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::select! {
        _ = interrupted => exit::ok(),
        code = refresh(&args) => code,
    }
}

/// How long one scrape or call may take: shorter than the interval, so a
/// proxy that hangs cannot stall the table.
fn deadline(args: &Args) -> Duration {
    Duration::from_secs(2).min(args.interval.get().max(Duration::from_millis(500)))
}

/// Prints a sample every interval; returns after one with `--once` or `-o json|yaml`.
async fn refresh(args: &Args) -> ExitCode {
    let fetcher = Fetcher::new(deadline(args));
    let once = args.once || args.output != Format::Table;
    let mut targets = match targets(args).await {
        Ok(t) => t,
        Err(message) => {
            eprintln!("error: {message}");
            return exit::failure();
        }
    };
    let (mut previous, _) = scrape_all(&fetcher, &targets).await;
    let mut taken = Instant::now();
    let clear = std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(args.interval.get()).await;
        let (current, failures) = scrape_all(&fetcher, &targets).await;
        let seconds = taken.elapsed().as_secs_f64();
        taken = Instant::now();
        let mut report = report(&targets, &previous, &current, &failures, seconds);
        if once && report.services.iter().all(|row| row.requests == 0.0) {
            report = since_start(&targets, &current, &failures, seconds);
        }
        if args.output != Format::Table {
            print_structured(args.output, &report);
        } else {
            if clear && !once {
                print!("\x1b[2J\x1b[H");
            }
            print_table(&report);
            let _ = std::io::stdout().flush();
        }
        if once {
            return exit::ok();
        }
        previous = current;
        // The set of proxies changes as workloads scale; keep the last list if
        // the control plane is away for a moment.
        match self::targets(args).await {
            Ok(t) => targets = t,
            Err(message) => eprintln!("warning: {message}; showing the proxies known before"),
        }
    }
}

async fn targets(args: &Args) -> Result<Vec<Target>, String> {
    if !args.proxies.is_empty() {
        return Ok(args.proxies.iter().map(|a| Target { name: a.clone(), admin: Ok(a.clone()) }).collect());
    }
    let control = args.server.client().with_timeout(deadline(args));
    let proxies = control.proxies().await.map(|list| list.items).map_err(|e| match e.status() {
        Some(404) => format!("{e} (this control plane does not report proxies; name them with --proxy ADMIN_ADDR)"),
        _ => e.to_string(),
    })?;
    Ok(targets_of(proxies))
}

fn targets_of(proxies: Vec<ProxyStatus>) -> Vec<Target> {
    proxies
        .into_iter()
        // Node agents serve no requests.
        .filter(|p| p.node.is_none())
        .map(|p| {
            let admin =
                p.admin_address.filter(|a| !a.is_empty()).ok_or_else(|| "the control plane knows no admin address for it".to_string());
            Target { name: p.name, admin }
        })
        .collect()
}

fn print_table(r: &Report) {
    let reachable = r.proxies.iter().filter(|p| p.reachable).count();
    println!("{} of {} proxies answered; window {:.1}s", reachable, r.proxies.len(), r.interval_seconds);
    if r.since_start && !r.services.is_empty() {
        println!("no request in the window: totals since the proxies started (send traffic while `trefoil top` runs for rates)");
    }
    println!("{:<24} {:<10} {:>9} {:>8} {:>9} {:>9} {:>9}", "SERVICE", "VERSION", "RPS", "SUCCESS", "P50", "P99", "REQUESTS");
    for row in &r.services {
        let service = if row.service.is_empty() { "(no route)" } else { &row.service };
        let version = if row.version.is_empty() { "-" } else { &row.version };
        let success = row.success_rate.map(|s| format!("{:.1}%", s * 100.0)).unwrap_or_else(|| "-".to_string());
        let rps = if r.since_start { "-".to_string() } else { format!("{:.1}", row.rps) };
        println!(
            "{:<24} {:<10} {:>9} {:>8} {:>9} {:>9} {:>9}",
            service,
            version,
            rps,
            success,
            latency(row.p50_seconds),
            latency(row.p99_seconds),
            row.requests
        );
    }
    if r.services.is_empty() {
        println!("(no requests seen by these proxies yet: send some, e.g. `curl localhost:8080/`)");
    }
    for p in r.proxies.iter().filter(|p| !p.reachable) {
        println!("unreachable: {}: {}", p.name, p.error.as_deref().unwrap_or("no answer"));
    }
}

fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s >= 1.0 => format!("{s:.2}s"),
        Some(s) if s >= 0.01 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{:.2}ms", s * 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_without_an_admin_address_is_unreachable_with_the_reason() {
        let proxies: Vec<ProxyStatus> =
            serde_json::from_str(r#"[{"name":"gw","connected":true,"adminAddress":"127.0.0.1:15000"},{"name":"web-0","connected":false},{"name":"agent/edge","node":"edge","connected":true}]"#)
                .unwrap();
        let targets = targets_of(proxies);
        assert_eq!(targets.len(), 2, "a node agent is no proxy to scrape");
        assert_eq!(targets[0].admin.as_deref(), Ok("127.0.0.1:15000"));
        assert!(targets[1].admin.as_ref().unwrap_err().contains("no admin address"));
    }

    #[test]
    fn latency_reads_at_a_glance() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(0.00042)), "0.42ms");
        assert_eq!(latency(Some(0.0375)), "38ms");
        assert_eq!(latency(Some(1.5)), "1.50s");
    }
}
