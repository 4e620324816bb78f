//! Where the programs the tests start are: the workspace's own binaries
//! (`trefoil`, `trefoil-testserver`) beside the test executable, third-party
//! tools on PATH or in sbin, and the repository's scripts and examples.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root, for its examples and test scripts.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary of this workspace: `$env_var` if set, else `name` in the profile
/// directory above the running test executable (`target/debug/deps/x-hash`
/// → `target/debug/NAME`), where Cargo puts the binaries it builds.
fn workspace_binary(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("locating the current test executable");
    let dir = exe.parent().expect("test executable has a parent directory");
    let name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates = [dir.join("..").join(&name), dir.join(&name)];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates[0].clone())
}

/// Where `TestServer` finds the server binary: `$TREFOIL_TESTSERVER`, else
/// `trefoil-testserver` in the profile directory above the running test
/// executable (`target/debug/deps/x-hash` → `target/debug/trefoil-testserver`).
pub fn testserver_path() -> PathBuf {
    workspace_binary("TREFOIL_TESTSERVER", "trefoil-testserver")
}

/// The `trefoil` binary: `$TREFOIL_BIN`, else `trefoil` in the profile
/// directory above the running test executable. Cargo builds it before the
/// integration tests of `trefoil-cli`, the crate that owns it; other crates'
/// tests need `cargo build --workspace --bins` first.
pub fn trefoil_path() -> PathBuf {
    workspace_binary("TREFOIL_BIN", "trefoil")
}

/// A `Command` for `trefoil`; panics at once, saying how to build it, when it is missing.
pub fn trefoil_command() -> Command {
    let path = trefoil_path();
    assert!(path.is_file(), "trefoil not found at {}; build it with `cargo build -p trefoil-cli` or set TREFOIL_BIN", path.display());
    let mut cmd = Command::new(path);
    // The CLI's config (contexts `up` writes) goes to a file of this test
    // run, never the developer's; their server and token stay out too.
    cmd.env("TREFOIL_CONFIG", test_config()).env_remove("TREFOIL_TOKEN").env_remove("TREFOIL_TOKEN_FILE").env_remove("TREFOIL_SERVER");
    cmd
}

/// The CLI config file every `trefoil` a test starts uses, one per test process.
fn test_config() -> PathBuf {
    std::env::temp_dir().join(format!("trefoil-test-{}-config", std::process::id()))
}

/// Finds an executable by name on PATH, also looking in the sbin directories
/// (nginx and haproxy live there and a non-root PATH may lack them).
/// A name containing `/` is checked as a path.
pub fn find_command(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// Whether `find_command(name)` finds it; for skipping tests that need a
/// third-party tool (`scripts/install-test-deps` installs them).
pub fn command_exists(name: &str) -> bool {
    find_command(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lookup() {
        assert!(command_exists("sh"));
        assert!(command_exists("/bin/sh"));
        assert!(!command_exists("definitely-not-a-command-trefoil"));
    }

    #[test]
    fn the_repository_root_holds_the_test_scripts() {
        assert!(repo_root().join("tests/chain/json_function.py").is_file());
    }
}
