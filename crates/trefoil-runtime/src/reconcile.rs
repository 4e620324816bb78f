//! Keeps the control plane's copy of the runtime's resources equal to the
//! desired state: writes what changed, retries while the control plane is
//! down or restarting, and writes everything again after it restarted.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use trefoil_api::Client;
use trefoil_model::Resource;

use crate::api::refusal;
use crate::event::{Event, Events};

/// Pause between attempts while something is not yet written.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// `(kind, name)` of a resource.
pub type Key = (String, String);

/// What should be stored, with a counter bumped on every change.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub generation: u64,
    pub resources: BTreeMap<Key, Resource>,
}

/// How far the writer got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The newest generation fully written (refused resources aside).
    pub settled: u64,
    /// Resources the control plane refused, with its reason.
    pub refused: BTreeMap<Key, String>,
}

/// The handle to change the desired state.
#[derive(Clone)]
pub struct Writer {
    desired: watch::Sender<Desired>,
    progress: watch::Receiver<Progress>,
}

impl Writer {
    /// Sets (or replaces) resources in the desired state; returns its generation.
    pub fn set(&self, resources: impl IntoIterator<Item = (Key, Resource)>) -> u64 {
        let mut generation = 0;
        self.desired.send_modify(|d| {
            let mut changed = false;
            for (key, value) in resources {
                if d.resources.get(&key) != Some(&value) {
                    d.resources.insert(key, value);
                    changed = true;
                }
            }
            if changed {
                d.generation += 1;
            }
            generation = d.generation;
        });
        generation
    }

    /// Stops keeping `keys` written, without deleting them: what people own
    /// (the files' resources, changed later by `trefoil apply`) is written
    /// once, never again over their changes after a control-plane restart.
    pub fn forget(&self, keys: impl IntoIterator<Item = Key>) {
        self.desired.send_modify(|d| {
            for key in keys {
                d.resources.remove(&key);
            }
        });
    }

    /// Waits until `generation` is written; returns what was refused.
    pub async fn settled(&self, generation: u64) -> BTreeMap<Key, String> {
        let mut rx = self.progress.clone();
        let refused = match rx.wait_for(|p| p.settled >= generation).await {
            Ok(p) => p.refused.clone(),
            Err(_) => BTreeMap::new(),
        };
        refused
    }
}

/// Starts the writer. `restarts` changes whenever the control plane process
/// was started again, which may have lost writes; everything is written again.
pub fn start(client: Client, mut restarts: watch::Receiver<u64>, events: Events) -> (Writer, tokio::task::JoinHandle<()>) {
    let (desired_tx, mut desired) = watch::channel(Desired::default());
    let (progress_tx, progress) = watch::channel(Progress::default());
    let task = tokio::spawn(async move {
        let mut written: BTreeMap<Key, Resource> = BTreeMap::new();
        let mut refused: BTreeMap<Key, (Resource, String)> = BTreeMap::new();
        // Without anyone to report restarts, there is nothing to wait for there.
        let mut restarts_open = true;
        loop {
            if restarts.has_changed().unwrap_or(false) {
                restarts.borrow_and_update();
                written.clear();
            }
            let want = desired.borrow_and_update().clone();
            let mut pending = false;
            for (key, value) in &want.resources {
                let already_refused = refused.get(key).is_some_and(|(v, _)| v == value);
                if written.get(key) == Some(value) || already_refused {
                    continue;
                }
                match client.apply(value).await {
                    Ok(_) => {
                        written.insert(key.clone(), value.clone());
                        refused.remove(key);
                    }
                    Err(e) if e.is_transient() => {
                        tracing::debug!(kind = %key.0, name = %key.1, error = %e, "write not accepted yet; retrying");
                        pending = true;
                    }
                    Err(e) => {
                        events.send(Event::Rejected { resource: format!("{}/{}", key.0, key.1), error: refusal(&e) });
                        refused.insert(key.clone(), (value.clone(), refusal(&e)));
                    }
                }
            }
            if !pending {
                let refused = refused.iter().map(|(k, (_, e))| (k.clone(), e.clone())).collect();
                progress_tx.send_replace(Progress { settled: want.generation, refused });
            }
            let retry = async {
                if pending {
                    tokio::time::sleep(RETRY_EVERY).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return },
                r = restarts.changed(), if restarts_open => match r {
                    Ok(()) => written.clear(),
                    Err(_) => restarts_open = false,
                },
                _ = retry => {}
            }
        }
    });
    (Writer { desired: desired_tx, progress }, task)
}
