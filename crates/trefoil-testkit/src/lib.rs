//! Helpers for Trefoil's integration tests: free ports, a managed
//! `trefoil-testserver` child process, and a tiny blocking HTTP/1.1 client.
//!
//! Everything here is blocking std code (serde_json aside) on purpose: tests
//! that use it stay synchronous and need no async runtime.
//!
//! `TestServer` runs the `trefoil-testserver` binary, which Cargo only builds
//! for *this* crate's tests. Other crates' tests therefore need it built first:
//!
//! ```text
//! cargo build --workspace --bins && cargo test --workspace
//! ```
//!
//! or point `TREFOIL_TESTSERVER` at the binary.
//!
//! Helpers panic with a descriptive message on failure: they are for tests.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Response headers with lowercase names; repeated headers are joined with ", ".
pub type Headers = BTreeMap<String, String>;

/// How long the blocking client waits for any single read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `TestServer` waits for the `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago on 127.0.0.1. Another process may take it
/// before the caller binds it; prefer letting servers bind port 0 where they can.
pub fn free_port() -> u16 {
    // Below the kernel's range for outgoing connections' local ports, so a
    // port released here is not taken by a connection before its user binds it.
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let listener = (0..64)
        .filter(|_| ephemeral_start > 21000)
        .find_map(|_| TcpListener::bind(("127.0.0.1", fastrand::u16(20000..ephemeral_start))).ok())
        .unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port"));
    listener.local_addr().expect("reading local address of probe listener").port()
}

/// Polls `connect()` every 20 ms until `addr` accepts or `timeout` passes.
/// Returns whether it became reachable.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let attempt = (deadline - now).min(Duration::from_millis(200));
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// `GET path` with `Host: host` and `Connection: close`; panics if the exchange
/// fails. Returns (status, headers, body as lossy UTF-8).
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, Headers, String) {
    let (status, headers, body) =
        http_request(addr, "GET", host, path, &[], b"").unwrap_or_else(|e| panic!("GET http://{addr}{path} (Host: {host}) failed: {e}"));
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`.
/// `Content-Length` is added when `body` is non-empty or the method usually
/// carries a body. Understands Content-Length, chunked and read-to-EOF bodies.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Headers, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);

    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: &[u8], head_only: bool) -> io::Result<(u16, Headers, Vec<u8>)> {
    let mut raw = raw;
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad(format!("no end of headers in {} byte response", raw.len())))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("response head is not UTF-8"))?;
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 =
            status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        // Interim responses (100 Continue) precede the real one.
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let mut headers = Headers::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if headers.get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            dechunk(rest)?
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.parse().map_err(|_| bad(format!("bad content-length {len:?}")))?;
            if rest.len() < len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("body truncated: got {} of {len} bytes", rest.len())));
            }
            rest[..len].to_vec()
        } else {
            rest.to_vec()
        };
        return Ok((status, headers, body));
    }
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or_else(|| bad("truncated chunk size line"))?;
        let size_line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("chunk size is not UTF-8"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers, if any, are not reported.
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated chunk"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Where `TestServer` finds the server binary: `$TREFOIL_TESTSERVER`, else
/// `trefoil-testserver` in the profile directory above the running test
/// executable (`target/debug/deps/x-hash` → `target/debug/trefoil-testserver`).
pub fn testserver_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TREFOIL_TESTSERVER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("locating the current test executable");
    let dir = exe.parent().expect("test executable has a parent directory");
    let name = format!("trefoil-testserver{}", std::env::consts::EXE_SUFFIX);
    let candidates = [dir.join("..").join(&name), dir.join(&name)];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates[0].clone())
}

/// A running `trefoil-testserver`, killed when dropped.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    // Held open so the server (started with --exit-on-stdin-close) exits when
    // this test process dies without running Drop.
    _stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts a server on a free loopback port with `--name name`.
    pub fn named(name: &str) -> Self {
        Self::spawn(&["--name", name])
    }

    /// Starts a server with extra command-line arguments (see `trefoil-testserver
    /// --help`). Adds `--listen 127.0.0.1:0` unless `args` has `--listen`.
    /// Panics if the binary is missing or does not report readiness in 20 s.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_binary(&testserver_path(), args)
    }

    /// Like [`TestServer::spawn`] with an explicit binary path.
    pub fn spawn_binary(binary: &Path, args: &[&str]) -> Self {
        if !binary.is_file() {
            panic!(
                "trefoil-testserver not found at {}; build it first with \
                 `cargo build -p trefoil-testkit --bins` (or `cargo build --workspace --bins`), \
                 or set TREFOIL_TESTSERVER to its path",
                binary.display()
            );
        }
        let mut cmd = Command::new(binary);
        if !args.iter().any(|a| *a == "--listen" || a.starts_with("--listen=")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args).arg("--exit-on-stdin-close").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", binary.display()));

        let stderr = Arc::new(Mutex::new(String::new()));
        // Drain both pipes for the child's whole life so it never blocks on a
        // full pipe; stderr is kept for failure messages.
        let err_pipe = child.stderr.take().expect("child stderr is piped");
        let err_buf = stderr.clone();
        let err_thread = thread::spawn(move || {
            let mut reader = BufReader::new(err_pipe);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                err_buf.lock().unwrap_or_else(|e| e.into_inner()).push_str(&line);
                line.clear();
            }
        });
        let out_pipe = child.stdout.take().expect("child stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });

        let addr = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = err_thread.join();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no `listening on` line within {STARTUP_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited before listening ({status:?})")
                    }
                };
                panic!("trefoil-testserver {args:?}: {why}; stderr:\n{}", stderr.lock().unwrap_or_else(|e| e.into_inner()));
            }
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("trefoil-testserver printed unparsable address {addr:?}: {e}"));
        let stdin = child.stdin.take();
        TestServer { child, addr, _stdin: stdin, stderr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for configs that take a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET /__stats`: `{"requests": N, "by_path": {path: N}}`, where N excludes
    /// `/healthz` and `/__*` control paths.
    pub fn stats(&self) -> serde_json::Value {
        let (status, _, body) = self.control("GET", "/__stats");
        assert_eq!(status, 200, "GET /__stats on {} answered {status}", self.addr);
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("GET /__stats on {} returned invalid JSON ({e}): {}", self.addr, String::from_utf8_lossy(&body)))
    }

    /// Total counted requests (`stats()["requests"]`).
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().expect("stats has a numeric `requests`")
    }

    /// Counted requests for one path (0 if never requested).
    pub fn requests_for(&self, path: &str) -> u64 {
        self.stats()["by_path"][path].as_u64().unwrap_or(0)
    }

    /// `POST /__stats/reset`; also restarts the `--fail-every` sequence.
    pub fn reset_stats(&self) {
        let (status, _, _) = self.control("POST", "/__stats/reset");
        assert_eq!(status, 200, "POST /__stats/reset on {} answered {status}", self.addr);
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        let path = if healthy { "/__health/ok" } else { "/__health/fail" };
        let (status, _, _) = self.control("POST", path);
        assert_eq!(status, 200, "POST {path} on {} answered {status}", self.addr);
    }

    fn control(&self, method: &str, path: &str) -> (u16, Headers, Vec<u8>) {
        http_request(self.addr, method, &self.addr.to_string(), path, &[], b"")
            .unwrap_or_else(|e| panic!("{method} {path} on testserver {}: {e}; stderr:\n{}", self.addr, self.stderr()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds an executable by name on PATH, also looking in the sbin directories
/// (nginx and haproxy live there and a non-root PATH may lack them).
/// A name containing `/` is checked as a path.
pub fn find_command(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcextra";
        let (status, headers, body) = parse_response(raw, false).unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["x-a"], "1, 2");
        assert_eq!(body, b"abc");
    }

    #[test]
    fn parses_chunked_body_and_skips_interim() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
        let (status, _, body) = parse_response(raw, false).unwrap();
        assert_eq!(status, 201);
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn truncated_body_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(parse_response(raw, false).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // HEAD responses announce a length they do not send.
        assert!(parse_response(raw, true).unwrap().2.is_empty());
    }

    #[test]
    fn read_to_eof_body() {
        let (_, _, body) = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it", false).unwrap();
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn command_lookup() {
        assert!(command_exists("sh"));
        assert!(command_exists("/bin/sh"));
        assert!(!command_exists("definitely-not-a-command-trefoil"));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("free port can be bound");
    }

    #[test]
    fn wait_for_port_reports_both_outcomes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(wait_for_port(addr, Duration::from_secs(1)));
        drop(listener);
        let start = Instant::now();
        assert!(!wait_for_port(addr, Duration::from_millis(150)));
        assert!(start.elapsed() < Duration::from_secs(2), "wait_for_port overran its timeout");
    }
}
