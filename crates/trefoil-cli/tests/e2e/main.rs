//! Trefoil's black-box tests: the `trefoil` binary as real processes on
//! loopback (proxies, control planes, `trefoil up` meshes), against real
//! upstreams and clients (the test server, nginx, clamd, curl, h2load, wrk,
//! Python gRPC and traffic clients). One module per topic, all in one test
//! binary, so Cargo compiles and links the shared helpers once instead of
//! once per file.

mod common;

mod chain_callout;
mod chain_events;
mod chain_handlers;
mod chain_inline;
mod chain_response;
mod cli_observe;
mod config_stream;
mod control_api;
mod edgesecurity_e2e;
mod hardening;
mod mesh_e2e;
mod nf_e2e;
mod proxy_lifecycle;
mod proxy_protocols;
mod proxy_routing;
mod rollout_e2e;
mod runtime_up;
mod trace_e2e;
