//! The supervisor's view of every process, and `STATE/up.json`, its copy on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::plan::Role;

/// What `up.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpView {
    /// The `trefoil up` process itself.
    pub pid: u32,
    /// REST API URL of the control plane.
    pub api: String,
    /// Its gRPC address (the config stream).
    pub grpc: String,
    /// Whether `trefoil up` is still supervising (false once it stopped everything).
    pub running: bool,
    pub processes: BTreeMap<String, ProcessView>,
}

/// One supervised process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessView {
    pub role: Role,
    /// Set while the process runs.
    pub pid: Option<u32>,
    pub running: bool,
    /// Its readiness probe passed at the last check.
    pub ready: bool,
    /// How many times it exited and was started again.
    pub restarts: u32,
    /// Named addresses: `api`, `admin`, `app`, `inbound`, `outbound`, `upstream.<service>`.
    pub addresses: BTreeMap<String, String>,
    pub log: String,
    /// How it last exited, e.g. `signal 9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// The shared, observable view: every change wakes the `up.json` writer and
/// whoever derives state from it (the Endpoints writer).
pub type View = watch::Sender<UpView>;

/// Where `up.json` lives in a state directory.
pub fn path(state: &Path) -> PathBuf {
    state.join("up.json")
}

/// Reads `up.json` (for `trefoil logs`); `None` when absent or unreadable.
pub fn read(state: &Path) -> Option<UpView> {
    serde_json::from_slice(&std::fs::read(path(state)).ok()?).ok()
}

/// Writes `view` atomically: readers never see half a file.
pub fn write(state: &Path, view: &UpView) -> std::io::Result<()> {
    let target = path(state);
    let tmp = state.join(".up.json.tmp");
    let body = serde_json::to_vec_pretty(view).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &target)
}

/// Rewrites `up.json` on every change until the view's sender is dropped.
pub async fn write_on_change(state: PathBuf, mut rx: watch::Receiver<UpView>) {
    loop {
        let snapshot = rx.borrow_and_update().clone();
        if let Err(e) = write(&state, &snapshot) {
            tracing::warn!(error = %e, "cannot write up.json");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("trefoil-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut view = UpView { pid: 7, running: true, ..UpView::default() };
        view.processes.insert(
            "web-0".into(),
            ProcessView {
                role: Role::App,
                pid: Some(9),
                running: true,
                ready: true,
                restarts: 2,
                addresses: BTreeMap::new(),
                log: "x".into(),
                last_exit: None,
            },
        );
        write(&dir, &view).unwrap();
        let back = read(&dir).unwrap();
        assert_eq!(back.processes["web-0"].restarts, 2);
        assert_eq!(back.processes["web-0"].role, Role::App);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
