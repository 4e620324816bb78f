//! Resources as YAML text, for the tests that have not moved to typed
//! resources yet.
#![allow(dead_code)]

use std::net::SocketAddr;

pub(crate) const API: &str = "apiVersion: trefoil.dev/v1alpha1";

pub(crate) fn listener(name: &str, addr: SocketAddr) -> String {
    format!("{API}\nkind: Listener\nmetadata: {{name: {name}}}\nspec:\n  address: \"{addr}\"\n---\n")
}

/// A Route named after `service`, for every host, with one rule to it;
/// `rule_extra` adds lines to that rule (indented four spaces).
pub(crate) fn route_all(service: &str, rule_extra: &str) -> String {
    format!("{API}\nkind: Route\nmetadata: {{name: {service}}}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - backends: [{{service: {service}}}]\n{rule_extra}")
}

/// [`route_all`] for Service `web`.
pub(crate) fn web_route(rule_extra: &str) -> String {
    route_all("web", rule_extra)
}

/// A Service with endpoints given as (address, version).
pub(crate) fn service(name: &str, protocol: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|(a, v)| format!("    - {{address: \"{a}\", version: \"{v}\"}}")).collect();
    format!("{API}\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: main, port: 80, protocol: {protocol}}}]\n  endpoints:\n{}\n---\n", eps.join("\n"))
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
