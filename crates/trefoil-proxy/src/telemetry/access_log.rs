//! JSON access-log lines, written off the request path by a dedicated thread.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// One line per request; `trace_id` joins it to spans and other hops' lines.
#[derive(Debug, Default, Serialize)]
pub(crate) struct AccessRecord<'a> {
    pub time: String,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub direction: &'a str,
    pub listener: &'a str,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<&'a str>,
    pub protocol: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// How a gRPC call ended (its `grpc-status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub route: &'a str,
    pub service: &'a str,
    pub version: &'a str,
    /// The CNF whose chain the request went through.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub cnf: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub attempts: u32,
    pub duration_ms: f64,
    /// Why the proxy answered itself, if it did (`no_route`, `timeout`, `rate_limited`, ...).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub flag: &'a str,
    /// The authorization rule that refused or audited the request
    /// (`deny policy/rule`, `default-deny`, `audit policy/rule`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub authz: &'a str,
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// How long the writer lets lines gather before writing them (nginx's
/// `access_log ... flush=`): the bound on how late a line reaches the file.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Where lines go; cloning shares the writer.
#[derive(Clone)]
pub(crate) struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Counter,
}

impl AccessLog {
    /// `target` is `stdout`, `off` or a file path (appended to).
    pub(crate) fn open(target: &str, dropped: Counter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            "off" | "" => return Ok(AccessLog { tx: None, dropped }),
            "stdout" | "-" => Box::new(std::io::stdout()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel::<String>(64 * 1024);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                // Let a batch gather before writing it: under load the
                // writer wakes once per interval, not once per request
                // (a wake and a write(2) per line cost a busy proxy on two
                // cores more than half its HTTP request rate). A line
                // reaches the file at most one interval after its request.
                std::thread::sleep(FLUSH_INTERVAL);
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        })?;
        Ok(AccessLog { tx: Some(tx), dropped })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub(crate) fn write(&self, record: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(record) else { return };
        line.push('\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            // Never block traffic on a slow log sink; the loss is counted.
            self.dropped.inc();
        }
    }
}
