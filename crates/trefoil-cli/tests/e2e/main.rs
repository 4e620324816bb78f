//! Trefoil's black-box tests: the `trefoil` binary as real processes on
//! loopback (proxies, control planes, `trefoil up` meshes), against real
//! upstreams and clients (the test server, nginx, clamd, curl, h2load, wrk,
//! Python gRPC and traffic clients). One module per topic, all in one test
//! binary, so Cargo compiles and links the shared helpers once instead of
//! once per file. The harness they share, process wrappers and all, is
//! `trefoil-testkit`; nothing here is a helper another module copies.

mod applied_status;
mod authz_e2e;
mod chain_callout;
mod chain_events;
mod chain_handlers;
mod chain_inline;
mod chain_response;
mod cli_observe;
mod config_stream;
mod control_api;
mod control_auth;
mod datapath_agent;
mod datapath_rules;
mod edgesecurity_e2e;
mod etcd_ha;
mod hardening;
mod identity_ca_e2e;
mod identity_e2e;
mod mesh_e2e;
mod mtls_e2e;
mod nf_e2e;
mod portal;
mod proxy_lifecycle;
mod proxy_protocols;
mod proxy_routing;
mod rollout_e2e;
mod runtime_up;
mod scoped_config;
mod stream_auth_e2e;
mod trace_e2e;

/// The harness finds `trefoil` beside the test executable, Cargo says where
/// it built it: the same file, or every test here would run a stale binary.
#[test]
fn the_harness_runs_the_trefoil_cargo_built() {
    let found = trefoil_testkit::trefoil_path().canonicalize().expect("the harness finds trefoil");
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_trefoil")).canonicalize().expect("Cargo built trefoil");
    assert_eq!(found, built);
}
