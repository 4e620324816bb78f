//! The results as a Markdown table (for `docs/performance.md`) and as JSON.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cell::CellResult;
use crate::control::Memory;

/// One line on where this ran: CPU count and model, kernel.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string());
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn memory(m: Option<Memory>) -> (String, String) {
    m.map_or_else(|| ("-".to_string(), "-".to_string()), |m| (mib(m.rss_kib), mib(m.peak_kib)))
}

fn bytes(n: usize) -> String {
    match n {
        0 => "-".to_string(),
        n if n < 10 * 1024 => format!("{n} B"),
        n if n < 10 * 1024 * 1024 => format!("{} KiB", n / 1024),
        n => format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0),
    }
}

pub(crate) fn markdown(results: &[CellResult], changes: usize) -> String {
    let mut out = String::new();
    out.push_str(&format!("| proxies | routes | load | initial sync | apply->all acked, median of {changes} | max | control CPU per change | snapshot | control RSS loaded | RSS after | peak RSS |\n"));
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let (loaded, _) = memory(r.memory_loaded);
        let (after, peak) = memory(r.memory_end);
        let (median, max) = match (&r.failure, r.samples.len()) {
            (Some(_), n) if n < changes => (format!("timeout ({n}/{changes} done)"), ms(r.max())),
            _ => (ms(r.median()), ms(r.max())),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.proxies,
            r.routes,
            secs(r.load),
            secs(r.initial_sync),
            median,
            max,
            ms(r.cpu_per_change),
            bytes(r.snapshot_bytes),
            loaded,
            after,
            peak
        ));
    }
    for r in results.iter().filter(|r| r.failure.is_some()) {
        out.push_str(&format!(
            "\n{} proxies x {} routes stopped early: {}\n",
            r.proxies,
            r.routes,
            r.failure.as_deref().unwrap_or_default()
        ));
    }
    out
}

pub(crate) fn json(results: &[CellResult], machine: &str, binary: &Path) -> Value {
    let kib = |m: Option<Memory>| m.map(|m| json!({"rssKiB": m.rss_kib, "peakKiB": m.peak_kib}));
    let cells: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "proxies": r.proxies,
                "routes": r.routes,
                "loadSeconds": r.load.map(|d| d.as_secs_f64()),
                "initialSyncSeconds": r.initial_sync.map(|d| d.as_secs_f64()),
                "applyToAckedSeconds": r.samples.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "medianSeconds": r.median().map(|d| d.as_secs_f64()),
                "maxSeconds": r.max().map(|d| d.as_secs_f64()),
                "controlCpuSecondsPerChange": r.cpu_per_change.map(|d| d.as_secs_f64()),
                "snapshotBytes": r.snapshot_bytes,
                "memoryLoaded": kib(r.memory_loaded),
                "memoryAfter": kib(r.memory_end),
                "rejectedSnapshots": r.rejected,
                "failure": r.failure,
            })
        })
        .collect();
    json!({"machine": machine, "controlPlane": binary.display().to_string(), "results": cells})
}
