//! The harness of Trefoil's black-box tests: real processes on loopback,
//! each behind a wrapper that starts it, waits until it is ready, reads its
//! logs, signals it and kills it when the test is done with it.
//!
//! - processes of this workspace: [`Proxy`] and [`StreamProxy`] (`trefoil
//!   proxy` from a file or a control plane), [`Control`] (`trefoil control`),
//!   [`Up`] (`trefoil up`), [`Nf`] (`trefoil nf`), [`TestServer`] (the
//!   scriptable upstream);
//! - third-party ones: [`Nginx`], [`Clamd`], [`Prometheus`], the Python
//!   functions and gRPC server ([`Function`], [`ScriptServer`]) and traffic
//!   client ([`Load`]);
//! - around them: free ports, scratch directories, bounded waits, a blocking
//!   HTTP/1.1 client and raw exchanges, curl, signals and resource limits,
//!   and resources as typed `trefoil_model` values ([`resources`]).
//!
//! ```no_run
//! use trefoil_testkit::resources::{listener, route_all, service};
//! use trefoil_testkit::{free_addr, http_get, Proxy, TestServer};
//!
//! let a = TestServer::spawn(&["--name", "a", "--fail-every", "3"]);
//! let public = free_addr();
//! let proxy = Proxy::start(vec![listener("public", public), service("web", &[(a.addr(), "v1")]), route_all("web")]);
//! let (status, headers, body) = http_get(public, "svc.test", "/");
//! assert_eq!((status, body.as_str(), headers["x-served-by"].as_str()), (200, "a\n", "a"));
//! assert_eq!(proxy.metric_sum("trefoil_requests_total", &["status_code=\"200\""]), 1.0);
//! ```
//!
//! Everything here is blocking std code on purpose: tests that use it stay
//! synchronous and need no async runtime. Helpers panic with a descriptive
//! message on failure: they are for tests.
//!
//! The binaries are found beside the test executable (see [`trefoil_path`],
//! [`testserver_path`]): Cargo builds `trefoil` for `trefoil-cli`'s tests and
//! `trefoil-testserver` for this crate's, so other test runs need
//!
//! ```text
//! cargo build --workspace --bins && cargo test --workspace
//! ```
//!
//! or `TREFOIL_BIN` and `TREFOIL_TESTSERVER` pointing at them.

mod binaries;
mod clamd;
mod client;
/// `Control`, and how long its waits may take.
pub mod control;
mod curl;
mod etcd;
mod load;
mod nf;
mod nginx;
mod process;
mod prometheus;
mod proxy;
/// Typed resources and what writes them as YAML.
pub mod resources;
mod scratch;
mod scripts;
mod testserver;
/// `Up`, and how long start-up may take.
pub mod up;
mod wait;

pub use binaries::{command_exists, find_command, repo_root, testserver_path, trefoil_command, trefoil_path};
pub use clamd::{eicar, Clamd};
pub use client::{http_get, http_request, json, raw_exchange, raw_request, request, Headers, RawReply};
pub use control::Control;
pub use curl::{count, curl_many};
pub use etcd::{EtcdCluster, EtcdMember};
pub use load::Load;
pub use nf::Nf;
pub use nginx::Nginx;
pub use process::{alive, is_root, limit_before_exec, log_file, run_with_timeout, send_signal, set_limit, Process};
pub use prometheus::Prometheus;
pub use proxy::{proxy_resource, Proxy, StreamProxy};
pub use resources::ToYaml;
pub use scratch::scratch_dir;
pub use scripts::{grpc_server, Function, ScriptServer};
pub use testserver::{echoed, TestServer};
pub use up::{pids, quickstart_mesh, quickstart_resources, Up};
pub use wait::{free_addr, free_port, wait_for_port, wait_until};
