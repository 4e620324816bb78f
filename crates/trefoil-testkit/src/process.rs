//! Child processes a test owns: started with their output in files the test
//! can read, signalled, waited for with a deadline, and killed when the test
//! is done with them, passed or failed, so no run leaves processes behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often a wait on a process looks again.
const POLL: Duration = Duration::from_millis(20);

/// A running child process; killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Option<Child>,
    /// What it is, for failure messages.
    what: String,
    /// Where its stderr goes, if to a file.
    log: Option<PathBuf>,
}

impl Process {
    /// Spawns `cmd` as configured by the caller; panics if it cannot start.
    pub fn spawn(what: &str, cmd: &mut Command) -> Process {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what} ({cmd:?}): {e}"));
        Process { child: Some(child), what: what.to_string(), log: None }
    }

    /// Spawns `cmd` with stdin closed, stdout discarded and stderr written to
    /// `log`, which [`Process::log`] reads back.
    pub fn spawn_logged(what: &str, cmd: &mut Command, log: &Path) -> Process {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file(log));
        let mut process = Process::spawn(what, cmd);
        process.log = Some(log.to_path_buf());
        process
    }

    /// The process id; panics once the process has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap_or_else(|| panic!("{} has exited", self.what)).id()
    }

    /// Its stdout, if the caller piped it and has not taken it yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// What it wrote to its log file so far (empty without one).
    pub fn log(&self) -> String {
        self.log.as_ref().map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Panics with its log if it has exited: for readiness loops, which
    /// should fail at once rather than wait out their deadline.
    pub fn assert_running(&mut self, waiting_for: &str) {
        if let Some(status) = self.exited() {
            panic!("{} exited with {status} while waiting for {waiting_for}:\n{}", self.what, self.log());
        }
    }

    /// Polls `cond` every 20 ms until it holds; panics with the log if the
    /// process exits first or `timeout` passes.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running(what);
            if cond() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{}: timed out after {timeout:?} waiting for {what}:\n{}", self.what, self.log());
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for it to exit; its exit code (`None` if killed
    /// by a signal). Panics with its log if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status.code();
            }
            assert!(self.child.is_some(), "{} was already reaped", self.what);
            if Instant::now() >= deadline {
                panic!("{} did not exit within {timeout:?}:\n{}", self.what, self.log());
            }
            thread::sleep(POLL);
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root: tests that build network namespaces
/// or load eBPF programs need it (CI runs them as root) and skip, saying
/// so, otherwise.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// A new file at `path` as a child's stdout or stderr.
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display())))
}

/// Runs a command to completion with a deadline, its stdout and stderr
/// captured; panics if it cannot start or runs over (killing it first).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return child.wait_with_output().expect("collecting the output of an exited child");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting the output of a killed child");
            panic!("{cmd:?} ran over {timeout:?}:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal` (e.g. `libc::SIGKILL`) to process `pid`; panics if it cannot.
#[allow(unsafe_code)] // kill(2) has no safe form in std for a process we did not spawn
pub fn send_signal(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) reads no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill -{signal} {pid}: {}", io::Error::last_os_error());
}

/// Sets a resource limit (`libc::RLIMIT_*`, soft and hard) of a running
/// process, e.g. to cap a child's memory so that a regression fails its test
/// instead of taking the machine down.
#[allow(unsafe_code)] // prlimit(2) has no safe form in std
pub fn set_limit(pid: u32, resource: libc::__rlimit_resource_t, value: u64) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: prlimit only reads `limit`; the old-limit pointer may be null.
    let rc = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit on {pid}: {}", io::Error::last_os_error());
}

/// Sets a resource limit of the child `cmd` starts, before it runs its first
/// instruction: for limits that must hold from the start, such as the
/// address space, which a running process may already have mapped beyond.
#[allow(unsafe_code)] // setrlimit between fork and exec has no safe form
pub fn limit_before_exec(cmd: &mut Command, resource: libc::__rlimit_resource_t, value: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // setrlimit, which is async-signal-safe, on a value it owns.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_signalled_and_its_exit_seen() {
        let dir = crate::scratch_dir();
        let mut sleeper =
            Process::spawn_logged("sleep", Command::new("sh").args(["-c", "echo started >&2; exec sleep 30"]), &dir.join("log"));
        let pid = sleeper.pid();
        crate::wait_until("the log line", Duration::from_secs(10), || sleeper.log() == "started\n");
        assert!(sleeper.running() && alive(pid.into()));
        sleeper.signal(libc::SIGTERM);
        assert_eq!(sleeper.wait_exit(Duration::from_secs(10)), None, "ended by a signal");
        assert!(!sleeper.running());
    }

    #[test]
    fn dropping_a_process_kills_it() {
        let sleeper = Process::spawn("sleep", Command::new("sleep").arg("30"));
        let pid = sleeper.pid();
        drop(sleeper);
        assert!(!alive(pid.into()));
    }

    #[test]
    fn run_with_timeout_returns_the_output() {
        let out = run_with_timeout(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10));
        assert_eq!((out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn a_limit_set_before_exec_holds_in_the_child() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -n"]);
        limit_before_exec(&mut cmd, libc::RLIMIT_NOFILE, 64);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "64");
    }
}
