//! The few system calls std does not wrap: entering a network namespace,
//! reading the monotonic clock the kernel stamps flows with, and checking or
//! mounting the BPF filesystem. Capabilities are read from /proc, which needs
//! no system call.

#![allow(unsafe_code, reason = "setns, clock_gettime, statfs and mount have no safe wrapper in std or libc")]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// Moves the calling thread (only it) into the network namespace at `path`.
pub(crate) fn enter_netns(path: &Path) -> Result<(), Error> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening network namespace {}", path.display()), e))?;
    // SAFETY: the descriptor is open for the whole call; setns changes only
    // this thread's namespace and does not touch memory we own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::io(format!("entering network namespace {}", path.display()), io::Error::last_os_error()));
    }
    Ok(())
}

/// Converts CLOCK_MONOTONIC stamps (what `bpf_ktime_get_ns` returns) to wall
/// time, by the offset between the two clocks when it was made; one offset
/// for a whole read, so stamps keep their order.
pub(crate) struct MonotonicClock {
    mono_now: Duration,
    wall_now: SystemTime,
}

impl MonotonicClock {
    pub(crate) fn now() -> Self {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let mono_now = if rc == 0 { Duration::new(now.tv_sec as u64, now.tv_nsec as u32) } else { Duration::ZERO };
        Self { mono_now, wall_now: SystemTime::now() }
    }

    pub(crate) fn to_wall(&self, stamp_ns: u64) -> SystemTime {
        match self.mono_now.checked_sub(Duration::from_nanos(stamp_ns)) {
            Some(ago) => self.wall_now - ago,
            None => self.wall_now,
        }
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lives on a BPF filesystem.
pub(crate) fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is writable for the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64 but not on every target")]
    let kind = stat.f_type as i64;
    rc == 0 && kind == BPF_FS_MAGIC
}

/// Mounts a BPF filesystem at `path` (as `mount -t bpf bpf PATH` would).
pub(crate) fn mount_bpffs(path: &Path) -> Result<(), Error> {
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::NotBpffs(path.to_owned()))?;
    let fstype = c"bpf";
    // SAFETY: every pointer is a NUL-terminated string alive for the call; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::io(format!("mounting a BPF filesystem at {}", path.display()), io::Error::last_os_error()));
    }
    Ok(())
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Names the first capability the agent lacks, from the effective set in
/// /proc/self/status (the same answer capget gives).
pub fn missing_capability() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?.trim();
    let effective = u64::from_str_radix(hex, 16).ok()?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !has(CAP_NET_ADMIN) {
        return Some("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_BPF");
    }
    None
}

/// Takes an exclusive lock on `dir` for as long as the returned file is open
/// (the kernel drops it when the process dies, also on SIGKILL); `None` when
/// another process holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<Option<File>, Error> {
    let file = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    // SAFETY: the descriptor is open for the call; flock touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(Error::io(format!("locking {}", dir.display()), error))
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> Result<u32, io::Error> {
    let c_name = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `c_name` is a NUL-terminated string alive for the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}
