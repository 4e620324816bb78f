//! Keeps one process running: starts it, probes it, restarts it with
//! back-off when it exits, and stops it on request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::child;
use crate::event::{Event, Events};
use crate::plan::{Probe, ProcessSpec};
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
            ProcessView {
                role: spec.role,
                pid: None,
                running: false,
                ready: false,
                restarts: 0,
                addresses: spec.addresses.clone(),
                log: log.display().to_string(),
                last_exit: None,
            },
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
        if let Probe::File(path) = &spec.probe {
            // Left by the previous run of this process, it would say ready too early.
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(process = %spec.name, path = %path.display(), error = %e, "cannot remove the readiness file");
                }
            }
        }
        // Each start of a proxy gets its own join token: the last one is spent.
        let started_spec = spec.join.as_ref().map(|join| join.apply(&spec));
        let delay = match child::spawn(started_spec.as_ref().unwrap_or(&spec), &log) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Role;
    use crate::view::UpView;
    use std::collections::BTreeMap;
    use tokio::sync::{mpsc, watch};

    fn shell(name: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            role: Role::App,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            cwd: None,
            addresses: BTreeMap::new(),
            probe: Probe::Tcp("127.0.0.1:1".parse().unwrap()),
            join: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trefoil-supervisor-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted_with_growing_delays_and_logs_appended() {
        let dir = scratch("crash");
        let log = dir.join("crash.log");
        let (view, mut rx) = watch::channel(UpView::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let s = supervise(
            shell("crash", "echo \"$GREETING\"; echo oops >&2; exit 3"),
            log.clone(),
            Duration::from_secs(1),
            view,
            Events::new(tx),
        );
        rx.wait_for(|v| v.processes["crash"].restarts >= 2).await.unwrap();
        s.stop().await;
        let mut delays = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let Event::Exited { how, restart_in, .. } = e {
                assert_eq!(how, "exit code 3");
                delays.push(restart_in.as_millis());
            }
        }
        assert_eq!(delays[..2], [500, 1000]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.matches("hello\n").count() >= 2 && text.contains("oops"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_after_the_grace_period() {
        let dir = scratch("stubborn");
        let (view, mut rx) = watch::channel(UpView::default());
        let (tx, _events) = mpsc::unbounded_channel();
        // Ignores SIGTERM; the trap is set before it says it is running.
        let s = supervise(
            shell("stubborn", "trap '' TERM; echo up; while :; do sleep 0.1; done"),
            dir.join("s.log"),
            Duration::from_millis(300),
            view,
            Events::new(tx),
        );
        rx.wait_for(|v| v.processes["stubborn"].running).await.unwrap();
        let log = dir.join("s.log");
        let trapped = async {
            while !std::fs::read_to_string(&log).unwrap_or_default().contains("up") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), trapped).await.expect("the child started");
        let pid = rx.borrow().processes["stubborn"].pid.unwrap();
        let started = Instant::now();
        s.stop().await;
        assert!(started.elapsed() >= Duration::from_millis(300), "waited for the grace period");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
        assert!(!rx.borrow().processes["stubborn"].running);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
