//! A real etcd cluster on loopback (Debian's `etcd-server`): members on
//! free ports with data directories of their own, each killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::binaries::find_command;
use crate::client::http_request;
use crate::process::Process;
use crate::wait::{free_addr, wait_until};

/// How long members get to elect a leader and report healthy.
const READY: Duration = Duration::from_secs(60);

/// One member: its client address, and its process while it runs.
pub struct EtcdMember {
    pub name: String,
    pub client: SocketAddr,
    process: Option<Process>,
}

impl EtcdMember {
    /// Whether `/health` answers that the member is healthy (it has a leader).
    pub fn healthy(&self) -> bool {
        match http_request(self.client, "GET", "127.0.0.1", "/health", &[], b"") {
            Ok((200, _, body)) => String::from_utf8_lossy(&body).contains(r#""health":"true""#),
            _ => false,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// What it wrote on stderr.
    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }
}

/// A cluster of members started together.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// The `etcd` binary, or why there is none.
    pub fn binary() -> Result<std::path::PathBuf, String> {
        find_command("etcd").ok_or_else(|| "no `etcd` on PATH (Debian's etcd-server; scripts/install-test-deps installs it)".to_string())
    }

    /// Starts `n` members under `dir` and waits until every one reports
    /// healthy (a leader is elected).
    pub fn start(dir: &Path, n: usize) -> Self {
        let etcd = Self::binary().unwrap_or_else(|e| panic!("{e}"));
        let peers: Vec<(String, SocketAddr, SocketAddr)> = (0..n).map(|i| (format!("m{i}"), free_addr(), free_addr())).collect();
        let initial: Vec<String> = peers.iter().map(|(name, _, peer)| format!("{name}=http://{peer}")).collect();
        let token = format!("trefoil-test-{}", dir.file_name().unwrap_or_default().to_string_lossy());
        let members = peers
            .iter()
            .map(|(name, client, peer)| {
                let data = dir.join(format!("etcd-{name}"));
                let mut cmd = std::process::Command::new(&etcd);
                cmd.args(["--name", name])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &format!("http://{client}")])
                    .args(["--advertise-client-urls", &format!("http://{client}")])
                    .args(["--listen-peer-urls", &format!("http://{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-state", "new", "--initial-cluster-token", &token]);
                let process = Process::spawn_logged(&format!("etcd {name}"), &mut cmd, &dir.join(format!("etcd-{name}.log")));
                EtcdMember { name: name.clone(), client: *client, process: Some(process) }
            })
            .collect();
        let cluster = EtcdCluster { members };
        wait_until("every etcd member to report healthy", READY, || cluster.members.iter().all(EtcdMember::healthy));
        cluster
    }

    /// `etcd://a,b,c`, for `trefoil control --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(","))
    }
}
