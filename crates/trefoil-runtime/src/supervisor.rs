//! Keeps one process running: starts it, probes it, restarts it with
//! back-off when it exits, and stops it on request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::child;
use crate::event::{Event, Events};
use crate::plan::ProcessSpec;
use crate::probe;
use crate::view::{ProcessView, View};

/// How often a running process is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A process under supervision.
pub struct Supervised {
    pub name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Stops the process (SIGTERM, then SIGKILL after its grace period) and waits until it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts supervising `spec`; its entry in `view` follows what happens.
pub fn supervise(spec: ProcessSpec, log: PathBuf, grace: Duration, view: View, events: Events) -> Supervised {
    view.send_modify(|v| {
        v.processes.insert(
            spec.name.clone(),
            ProcessView { role: spec.role, pid: None, running: false, ready: false, restarts: 0, addresses: spec.addresses.clone(), log: log.display().to_string(), last_exit: None },
        );
    });
    let (stop, stop_rx) = watch::channel(false);
    let name = spec.name.clone();
    let task = tokio::spawn(run(spec, log, grace, view, events, stop_rx));
    Supervised { name, stop, task }
}

async fn run(spec: ProcessSpec, log: PathBuf, grace: Duration, view: View, events: Events, mut stop: watch::Receiver<bool>) {
    let update = |f: &dyn Fn(&mut ProcessView)| {
        view.send_modify(|v| {
            if let Some(p) = v.processes.get_mut(&spec.name) {
                f(p)
            }
        })
    };
    let mut backoff = Backoff::default();
    let mut restarts = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let delay = match child::spawn(&spec, &log) {
            Err(e) => {
                let delay = backoff.after_exit(Duration::ZERO);
                tracing::debug!(process = %spec.name, error = %e, "cannot start");
                events.send(Event::StartFailed { name: spec.name.clone(), error: e.to_string(), retry_in: delay });
                delay
            }
            Ok(mut process) => {
                let pid = process.id().unwrap_or(0);
                let started = Instant::now();
                update(&|p| {
                    p.pid = Some(pid);
                    p.running = true;
                    p.ready = false;
                });
                events.send(Event::Started { name: spec.name.clone(), role: spec.role, pid, restarts });
                let mut ready = false;
                let mut tick = tokio::time::interval(PROBE_EVERY);
                let status = loop {
                    tokio::select! {
                        status = process.wait() => break status,
                        _ = stop.changed() => {
                            child::stop(&mut process, grace).await;
                            update(&|p| {
                                p.pid = None;
                                p.running = false;
                                p.ready = false;
                            });
                            events.send(Event::Stopped { name: spec.name.clone() });
                            return;
                        }
                        _ = tick.tick() => {
                            let now = probe::check(&spec.probe).await;
                            if now != ready {
                                ready = now;
                                update(&|p| p.ready = now);
                                events.send(Event::Ready { name: spec.name.clone(), role: spec.role, ready: now });
                            }
                        }
                    }
                };
                // Whatever the child started in its group goes with it.
                child::signal_group(pid, libc::SIGKILL);
                let how = match status {
                    Ok(s) => describe(s),
                    Err(e) => format!("lost: {e}"),
                };
                restarts += 1;
                let delay = backoff.after_exit(started.elapsed());
                update(&|p| {
                    p.pid = None;
                    p.running = false;
                    p.ready = false;
                    p.restarts = restarts;
                    p.last_exit = Some(how.clone());
                });
                tracing::debug!(process = %spec.name, %how, "exited; restarting in {delay:?}");
                events.send(Event::Exited { name: spec.name.clone(), how, restart_in: delay });
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                events.send(Event::Stopped { name: spec.name.clone() });
                return;
            }
        }
    }
}

/// `exit code 3` or `signal 9`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}
