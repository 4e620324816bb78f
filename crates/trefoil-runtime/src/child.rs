//! Starting and stopping one child process: its log file, its own process
//! group, and a guarantee that it dies with the supervisor.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::plan::{ProcessSpec, Role};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot open log file {path}: {source}")]
    Log { path: String, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// Starts `spec` with stdout and stderr appended to `log`.
#[allow(unsafe_code)] // process groups and signals have no safe form in std
pub fn spawn(spec: &ProcessSpec, log: &Path) -> Result<Child, ChildError> {
    let open = || {
        OpenOptions::new().create(true).append(true).open(log).map_err(|source| ChildError::Log { path: log.display().to_string(), source })
    };
    let out = open()?;
    let err = open()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).envs(&spec.env).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // The datapath agent is told to stop rather than killed: on SIGTERM it
    // detaches its programs, so a SIGKILLed `up` leaves no datapath behind.
    #[cfg(target_os = "linux")]
    let death_signal = if spec.role == Role::Datapath { libc::SIGTERM } else { libc::SIGKILL };
    // Read before the fork: in the child, getpid() is the child's own.
    #[cfg(target_os = "linux")]
    let supervisor = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, _exit)
    // run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own group: Ctrl-C at the terminal reaches only the
            // supervisor, which then stops children in order; and a stop
            // reaches whatever the child itself started.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Dies with the supervisor, even if the supervisor is SIGKILLed.
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor may have died before prctl took effect.
                if libc::getppid() != supervisor {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ChildError::Spawn { program: spec.program.display().to_string(), source })
}

/// Sends `signal` to the child's whole process group.
#[allow(unsafe_code)] // process groups and signals have no safe form in std
pub fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid addresses the group the child leads.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// SIGTERM to the child's group, then SIGKILL if it has not exited within `grace`.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    signal_group(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // Anything the child left behind in its group goes too.
            signal_group(pid, libc::SIGKILL);
            status.ok()
        }
        Err(_) => {
            tracing::warn!(pid, "did not exit within {grace:?} of SIGTERM; sending SIGKILL");
            signal_group(pid, libc::SIGKILL);
            child.wait().await.ok()
        }
    }
}
