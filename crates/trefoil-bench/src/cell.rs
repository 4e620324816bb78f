//! One measurement: a fresh control plane with `routes` routes, `proxies`
//! simulated proxies, then `changes` timed route changes.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::{ControlProcess, Memory};
use crate::fleet::Fleet;
use crate::rest::Rest;
use crate::{mesh, BenchError};

/// The route whose weight each timed change moves.
const CHANGED: usize = 0;
/// Its share of v2 traffic as loaded; change `k` makes it this plus `k`.
const LOADED_V2_WEIGHT: u32 = 20;

pub(crate) struct Settings<'a> {
    pub binary: &'a Path,
    pub data_root: &'a Path,
    pub changes: usize,
    pub concurrency: usize,
    pub load_timeout: Duration,
    /// Bound on everything after the load: connecting, syncing, the changes.
    pub cell_timeout: Duration,
}

/// What one combination gave; `failure` says why it stopped early, if it did.
#[derive(Default)]
pub(crate) struct CellResult {
    pub proxies: usize,
    pub routes: usize,
    pub load: Option<Duration>,
    /// From the first connect to every proxy acknowledging the loaded mesh.
    pub initial_sync: Option<Duration>,
    /// Each change: from the PUT's answer to the last proxy's ACK.
    pub samples: Vec<Duration>,
    pub snapshot_bytes: usize,
    pub memory_loaded: Option<Memory>,
    pub memory_end: Option<Memory>,
    pub rejected: u64,
    /// The control plane's CPU time over all the changes, divided by their number.
    pub cpu_per_change: Option<Duration>,
    pub failure: Option<String>,
}

impl CellResult {
    pub(crate) fn median(&self) -> Option<Duration> {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted.get(sorted.len().checked_sub(1)? / 2).copied()
    }

    pub(crate) fn max(&self) -> Option<Duration> {
        self.samples.iter().max().copied()
    }
}

pub(crate) async fn run(settings: &Settings<'_>, proxies: usize, routes: usize) -> CellResult {
    let mut result = CellResult { proxies, routes, ..Default::default() };
    let label = format!("p{proxies}-r{routes}");
    let mut control = match ControlProcess::start(settings.binary, settings.data_root, &label).await {
        Ok(c) => c,
        Err(e) => {
            result.failure = Some(e.to_string());
            return result;
        }
    };
    if let Err(e) = measure(settings, &mut control, &mut result).await {
        result.failure = Some(if control.alive() {
            e.to_string()
        } else {
            format!("{e} (the control plane exited; log kept at {})", control.log().display())
        });
        control.keep();
    }
    // Memory after the runs, whatever they came to, while the process lives.
    result.memory_end = control.memory().ok();
    result
}

async fn measure(settings: &Settings<'_>, control: &mut ControlProcess, result: &mut CellResult) -> Result<(), BenchError> {
    let (proxies, routes) = (result.proxies, result.routes);
    let rest = Rest::new(control.api, settings.concurrency, Some(&control.token));
    let mut items = Vec::with_capacity(routes * 2);
    for i in 0..routes {
        items.push(mesh::service(i));
    }
    for i in 0..routes {
        items.push(mesh::route(i, LOADED_V2_WEIGHT));
    }
    let started = Instant::now();
    let label = format!("{proxies} proxies x {routes} routes");
    let loaded_revision = tokio::time::timeout(settings.load_timeout, rest.put_all(items, settings.concurrency, &label))
        .await
        .map_err(|_| BenchError::Timeout(format!("loading took over {:?}", settings.load_timeout)))??;
    result.load = Some(started.elapsed());
    result.memory_loaded = Some(control.memory()?);

    let started = Instant::now();
    let deadline = started + settings.cell_timeout;
    let mut fleet = tokio::time::timeout_at(deadline, Fleet::connect(control.grpc, proxies))
        .await
        .map_err(|_| BenchError::Timeout("connecting the proxies".to_string()))??;
    fleet
        .wait_acked(loaded_revision, deadline)
        .await
        .map_err(|acked| BenchError::Timeout(format!("initial sync: {acked}/{proxies} proxies acked")))?;
    result.initial_sync = Some(started.elapsed());
    result.snapshot_bytes = fleet.snapshot_bytes();
    eprintln!("  {label}: all proxies in sync after {:.3}s", started.elapsed().as_secs_f64());

    let cpu_before = control.cpu_time()?;
    for k in 1..=settings.changes {
        let weight = LOADED_V2_WEIGHT + u32::try_from(k).unwrap_or(u32::MAX).min(60);
        let version = tokio::time::timeout_at(deadline, rest.put(&mesh::route(CHANGED, weight)))
            .await
            .map_err(|_| BenchError::Timeout(format!("change {k}: the PUT")))??;
        // The write is acknowledged (on disk): the clock starts here.
        let applied = Instant::now();
        fleet
            .wait_acked(version, deadline)
            .await
            .map_err(|acked| BenchError::Timeout(format!("change {k}: {acked}/{proxies} proxies acked")))?;
        result.samples.push(applied.elapsed());
        result.snapshot_bytes = fleet.snapshot_bytes();
        result.rejected = fleet.rejected();
    }
    let spent = control.cpu_time()?.saturating_sub(cpu_before);
    result.cpu_per_change = u32::try_from(settings.changes).ok().filter(|n| *n > 0).map(|n| spent / n);
    Ok(())
}
