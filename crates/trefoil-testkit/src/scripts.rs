//! The repository's Python test servers as child processes: the network
//! functions under `tests/chain` and the gRPC echo server under
//! `tests/grpc`. Each prints `listening on ADDR` once it accepts connections.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::binaries::repo_root;
use crate::client::http_request;
use crate::process::Process;

/// `python3 SCRIPT ARGS` for a script under the repository root; killed when dropped.
pub struct ScriptServer {
    _process: Process,
    pub addr: SocketAddr,
}

impl ScriptServer {
    /// Starts `script` (a path from the repository root) with `args` and
    /// waits for the address it prints; its stderr goes to the test's.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut process = Process::spawn(
            &format!("python3 {script}"),
            Command::new("python3").arg(repo_root().join(script)).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()),
        );
        // The script prints its address once it accepts connections (or exits, closing stdout).
        let stdout = process.take_stdout().expect("the script's stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap_or_else(|e| panic!("reading {script}'s address: {e}"));
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{script} said {line:?}, not `listening on ADDR`"));
        ScriptServer { _process: process, addr }
    }
}

/// A network function under `tests/chain`, run by python3; killed when dropped.
pub struct Function {
    server: ScriptServer,
    pub addr: SocketAddr,
}

impl Function {
    /// Starts `tests/chain/SCRIPT` with `args`.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let server = ScriptServer::start(&format!("tests/chain/{script}"), args);
        Function { addr: server.addr, server }
    }

    /// `tests/chain/json_function.py` named `name`.
    pub fn json(name: &str) -> Self {
        Self::start("json_function.py", &["--name", name])
    }

    /// How many calls a json_function.py has received (its `GET /calls`).
    pub fn calls(&self) -> u64 {
        self.calls_reply()["calls"].as_u64().expect("calls is a number")
    }

    /// The calls a json_function.py received so far, in order: `{cnf, function, path, status}` each.
    pub fn received(&self) -> Vec<Value> {
        self.calls_reply()["received"].as_array().cloned().unwrap_or_default()
    }

    fn calls_reply(&self) -> Value {
        let (status, _, body) = http_request(self.server.addr, "GET", "fn", "/calls", &[], b"").expect("GET /calls");
        assert_eq!(status, 200, "GET /calls: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("GET /calls answers JSON")
    }
}

/// `tests/grpc/grpc_server.py`, the gRPC echo server, reporting `name` as served_by.
pub fn grpc_server(name: &str) -> ScriptServer {
    ScriptServer::start("tests/grpc/grpc_server.py", &["--listen", "127.0.0.1:0", "--name", name])
}
