//! The datapath's errors: each says what failed and, where the host is the
//! cause (a capability, the kernel, the build), what to change.

use std::io;
use std::path::PathBuf;

/// Everything the agent can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crate was built without its eBPF programs.
    #[error("the eBPF programs were not built because {0}; install clang, llvm and libbpf-dev (scripts/install-test-deps) and rebuild")]
    ProgramsMissing(&'static str),
    /// The process lacks a capability the kernel requires.
    #[error("missing capability {0}: the datapath agent needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root or grant them")]
    MissingCapability(&'static str),
    /// The kernel lacks a feature the programs use.
    #[error("kernel {found} is too old: the datapath needs Linux {needed} or later ({why})")]
    KernelTooOld {
        /// The running kernel's release.
        found: String,
        /// The oldest release that works.
        needed: &'static str,
        /// The feature that needs it.
        why: &'static str,
    },
    /// More entries than the kernel's rule table holds.
    #[error("{count} datapath entries do not fit the kernel's rule table of {max}; merge rules or split them across nodes")]
    TooManyEntries {
        /// Entries given.
        count: usize,
        /// The table's size.
        max: u32,
    },
    /// An entry the kernel programs cannot express.
    #[error("datapath entry {index} (rule `{rule}`): {reason}")]
    BadEntry {
        /// Position in the list given to `apply`.
        index: usize,
        /// The entry's rule.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A network namespace, interface or file could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a BPF operation.
    #[error("{what}: {source}")]
    Bpf {
        /// What was being done.
        what: String,
        /// aya's error, with the kernel's errno (and the verifier log for loads).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A helper command (`ip`) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// Neither eBPF nor the nftables fallback could program the node.
    #[error("no datapath: eBPF cannot load ({ebpf}), and the nftables fallback failed ({nftables})")]
    NoDatapath {
        /// Why eBPF could not be used.
        ebpf: Box<Error>,
        /// Why nftables could not be used.
        nftables: Box<Error>,
    },
    /// A pinned map was made by a build whose layout differs from this one's.
    #[error("the pinned map {map} has another layout (key, value, entries: {found:?}, this build: {expected:?}); remove the node's datapath (`remove_node`) and start again")]
    IncompatiblePin {
        /// The map's pin.
        map: PathBuf,
        /// What the pinned map has.
        found: (u32, u32, u32),
        /// What this build's program declares.
        expected: (u32, u32, u32),
    },
    /// Another agent already runs this node.
    #[error("another agent is running node `{0}`: stop it first (one agent per node)")]
    NodeBusy(String),
    /// The pin directory is not on a BPF filesystem and none could be mounted.
    #[error("{0} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs(PathBuf),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }

    /// Wraps a BPF error; EPERM names the capability that is missing rather
    /// than leaving the reader with "Operation not permitted". (EACCES is the
    /// verifier refusing a program, a different story, kept as it is.)
    pub(crate) fn bpf(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        if is_eperm(&source) {
            return Self::MissingCapability("CAP_BPF");
        }
        Self::Bpf { what: what.into(), source: Box::new(source) }
    }
}

fn is_eperm(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    // Bounded: error chains are a handful of links.
    for _ in 0..16 {
        let Some(current) = cause else { return false };
        if current.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        cause = current.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bpf_prog_load failed")]
    struct Syscall(#[source] io::Error);

    #[test]
    fn eperm_names_the_capability_and_eacces_does_not() {
        let denied = Error::bpf("loading", Syscall(io::Error::from_raw_os_error(libc::EPERM)));
        assert!(matches!(denied, Error::MissingCapability("CAP_BPF")), "{denied:?}");
        let refused = Error::bpf("loading", Syscall(io::Error::from_raw_os_error(libc::EACCES)));
        assert_eq!(refused.to_string(), "loading: bpf_prog_load failed");
    }
}
