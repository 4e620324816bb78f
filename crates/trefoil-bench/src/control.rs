//! One `trefoil control` process per measurement: fresh data directory, free
//! loopback ports, its memory read from `/proc`. Dropping it kills it.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rest::Rest;
use crate::BenchError;

/// How long the control plane gets to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct ControlProcess {
    child: Child,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    data_dir: PathBuf,
    /// The admin token it wrote in its data directory, once it answers.
    pub token: String,
    /// Keep the data directory (and the log in it) after the process is gone.
    keep: bool,
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

/// A port nothing listens on right now. The control plane binds it a moment
/// later; on a quiet loopback nobody takes it in between.
fn free_port() -> Result<SocketAddr, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Setup(format!("no free loopback port: {e}")))?;
    listener.local_addr().map_err(|e| BenchError::Setup(format!("no free loopback port: {e}")))
}

impl ControlProcess {
    /// Starts `binary control` with a new data directory under `data_root`
    /// and waits until its API answers.
    pub(crate) async fn start(binary: &Path, data_root: &Path, label: &str) -> Result<Self, BenchError> {
        let data_dir = data_root.join(format!("trefoil-bench-{}-{label}", std::process::id()));
        // A leftover from an interrupted run would not be a fresh store.
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", data_dir.display())))?;
        let log = File::create(data_dir.join("control.log"))
            .map_err(|e| BenchError::Setup(format!("cannot create the control plane's log: {e}")))?;
        let log_err = log.try_clone().map_err(|e| BenchError::Setup(e.to_string()))?;
        let (api, grpc) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .arg("control")
            .arg("--data")
            .arg(data_dir.join("data"))
            .arg("--listen")
            .arg(api.to_string())
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            // The fleet's simulated proxies have no identities.
            .arg("--insecure-plaintext-stream")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", binary.display())))?;
        let mut control = ControlProcess { child, api, grpc, data_dir, token: String::new(), keep: false };
        control.wait_ready().await?;
        // Written before the API answers, so it is there now.
        let file = control.data_dir.join("data").join("admin.token");
        control.token = std::fs::read_to_string(&file)
            .map_err(|e| BenchError::Setup(format!("cannot read the admin token {}: {e}", file.display())))?
            .trim()
            .to_string();
        Ok(control)
    }

    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        // The readiness probe, the OpenAPI document, needs no token.
        let rest = Rest::new(self.api, 1, None);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.keep = true;
                return Err(BenchError::Setup(format!("the control plane exited at start ({status}); see {}", self.log().display())));
            }
            if rest.ready().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.keep = true;
        Err(BenchError::Setup(format!("the control plane did not answer within {START_TIMEOUT:?}; see {}", self.log().display())))
    }

    /// Leaves the data directory and log behind for a look at what went wrong.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.data_dir.join("control.log")
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its current and peak resident memory.
    pub(crate) fn memory(&self) -> Result<Memory, BenchError> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).map_err(|e| BenchError::Setup(format!("cannot read {path}: {e}")))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .ok_or_else(|| BenchError::Setup(format!("{path} has no {name}")))
        };
        Ok(Memory { rss_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
    }
}

/// Linux reports process CPU time in clock ticks of 1/100 s (`USER_HZ`) on
/// every architecture it supports.
const TICKS_PER_SECOND: u64 = 100;

impl ControlProcess {
    /// CPU time (user and system) the process has used so far.
    pub(crate) fn cpu_time(&self) -> Result<Duration, BenchError> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).map_err(|e| BenchError::Setup(format!("cannot read {path}: {e}")))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        // utime and stime: fields 14 and 15 of the line, so 11 and 12 counting from 0 after the name.
        let ticks =
            |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok()).ok_or_else(|| BenchError::Setup(format!("{path}: no CPU times")));
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_millis(total * 1000 / TICKS_PER_SECOND))
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
