//! CNF chain pieces for black-box tests: network functions run by python3
//! from tests/chain, and the resources that put them in a route's chain.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::{http_request, repo_root, API};

/// A network function under tests/chain, run by python3; killed when dropped.
pub(crate) struct Function {
    child: Child,
    pub addr: SocketAddr,
}

impl Function {
    /// Starts `script` with `args` and waits for the address it prints once it accepts connections.
    pub(crate) fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/chain").join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 tests/chain/{script}: {e}"));
        // The script prints its address once it accepts connections (or exits, closing stdout).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{script} said {line:?}")).parse().unwrap();
        Function { child, addr }
    }

    /// tests/chain/json_function.py named `name`.
    pub(crate) fn json(name: &str) -> Self {
        Self::start("json_function.py", &["--name", name])
    }

    /// How many calls a json_function.py has received (its `GET /calls`).
    pub(crate) fn calls(&self) -> u64 {
        let (status, _, body) = http_request(self.addr, "GET", "fn", "/calls", &[], b"").expect("GET /calls");
        assert_eq!(status, 200, "GET /calls: {}", String::from_utf8_lossy(&body));
        let calls: serde_json::Value = serde_json::from_slice(&body).expect("a JSON count");
        calls["calls"].as_u64().expect("calls is a number")
    }

    /// The calls a json_function.py received so far, in order: `{cnf, function, path, status}` each.
    pub(crate) fn received(&self) -> Vec<serde_json::Value> {
        let (status, _, body) = http_request(self.addr, "GET", "fn", "/calls", &[], b"").expect("GET /calls");
        assert_eq!(status, 200, "GET /calls: {}", String::from_utf8_lossy(&body));
        let calls: serde_json::Value = serde_json::from_slice(&body).expect("JSON calls");
        calls["received"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NetworkFunction; `extra` continues its spec's flow mapping (`, events: [a]`).
pub(crate) fn network_function(name: &str, service: &str, api: &str, extra: &str) -> String {
    format!("{API}\nkind: NetworkFunction\nmetadata: {{name: {name}}}\nspec: {{service: {service}, api: {api}{extra}}}\n---\n")
}

/// A CNF whose chain is `steps` (YAML flow mappings, e.g. `{function: acl}`).
pub(crate) fn cnf(name: &str, steps: &[&str]) -> String {
    let steps: Vec<String> = steps.iter().map(|s| format!("  - {s}")).collect();
    format!("{API}\nkind: CNF\nmetadata: {{name: {name}}}\nspec:\n  chain:\n{}\n---\n", steps.join("\n"))
}

/// A CNF like [`cnf`] with one handler: `script` (Lua, a line each) for `event`.
pub(crate) fn cnf_with_handler(name: &str, steps: &[&str], event: &str, script: &[&str]) -> String {
    let base = cnf(name, steps);
    let script: String = script.iter().map(|line| format!("      {line}\n")).collect();
    format!("{}  handlers:\n    {event}: |\n{script}---\n", base.trim_end_matches("---\n"))
}

/// A Route for every host to `web`, one rule per (path prefix, CNF).
pub(crate) fn chained_route(rules: &[(&str, &str)]) -> String {
    let rules: Vec<String> = rules
        .iter()
        .map(|(prefix, cnf)| format!("  - matches: [{{path: {{prefix: {prefix}}}}}]\n    backends: [{{service: web}}]\n    chain: {cnf}"))
        .collect();
    format!("{API}\nkind: Route\nmetadata: {{name: web}}\nspec:\n  hosts: [\"*\"]\n  rules:\n{}\n---\n", rules.join("\n"))
}

/// A request through the proxy at `addr` to host `web.local`.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, trefoil_testkit::Headers, String) {
    let (status, headers, body) = http_request(addr, method, "web.local", path, headers, body).expect("request through the proxy");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The headers the upstream received, from its /echo answer.
pub(crate) fn echoed(body: &str) -> serde_json::Value {
    let echo: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    echo["headers"].clone()
}
