//! A real Prometheus server scraping proxies' admin `/metrics`, for analyses
//! written as PromQL queries.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::client::http_request;
use crate::process::{log_file, Process};
use crate::wait::wait_until;

/// A running `prometheus`; killed when dropped.
pub struct Prometheus {
    _process: Process,
}

impl Prometheus {
    /// Scrapes `targets` (`HOST:PORT` each) every second, its files in
    /// `dir`, its API on `listen`; returns once it is ready.
    pub fn start(dir: &Path, listen: SocketAddr, targets: &[String]) -> Prometheus {
        std::fs::create_dir_all(dir).expect("creating prometheus's directory");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: trefoil\n  static_configs:\n  - targets: [{}]\n", targets.join(", "));
        std::fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
        let process = Process::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={listen}"))
                .stdout(log_file(&dir.join("stdout")))
                .stderr(log_file(&dir.join("stderr"))),
        );
        wait_until("prometheus ready", Duration::from_secs(30), || {
            matches!(http_request(listen, "GET", "prometheus", "/-/ready", &[], b""), Ok((200, ..)))
        });
        Prometheus { _process: process }
    }
}
