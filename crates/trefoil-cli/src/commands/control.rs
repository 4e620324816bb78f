//! `trefoil control`: the control plane's store, REST API and config stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trefoil_control::ControlOptions;

use crate::output::{current_thread_runtime, exit, stop_signal};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory for the store file (with the embedded store), the admin
    /// token and the mesh CA; created if missing.
    #[arg(long, default_value = ".trefoil")]
    data: PathBuf,
    /// Where resources are kept: `embedded` (the default: `store.db` in
    /// --data, one control plane) or `etcd://host:port,host:port,...` (an
    /// etcd v3 cluster shared by several control-plane replicas, each
    /// serving reads, watches and config streams; writes are etcd
    /// transactions; rollouts and rule expiry run on one elected leader,
    /// shown by `GET /api/v1/status/controlplane`). Plain-text gRPC to etcd.
    #[arg(long, default_value = "embedded", value_name = "embedded|etcd://HOST:PORT,...")]
    store: trefoil_control::store::Location,
    /// REST API address (`/api/v1/<kind>[/<name>]`, `/api/v1/openapi.json`).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Config stream address (gRPC): proxies started with `trefoil proxy --control ADDR` connect here.
    #[arg(long, default_value = trefoil_control::DEFAULT_GRPC_LISTEN)]
    grpc_listen: SocketAddr,
    /// REST connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = trefoil_control::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Watch and follow streams open at once; more are answered 503.
    #[arg(long, default_value_t = trefoil_control::server::DEFAULT_MAX_WATCHES)]
    max_watches: usize,
    /// Repair a damaged store file, report what was kept and dropped, and exit
    /// (start again without it, once the report is checked): every intact
    /// record is kept, the damaged file is kept as `store.db.corrupt-<unix time>`.
    #[arg(long)]
    repair: bool,
    /// Serve requests without a bearer token as admin, for local experiments;
    /// refused unless --listen is a loopback address. Requests with a token are
    /// still checked. Without it, the admin token is in `<data>/admin.token`.
    #[arg(long)]
    insecure_local: bool,
    /// The mesh's SPIFFE trust domain: proxies are `spiffe://<domain>/ns/<namespace>/sa/<workload>`.
    /// Its CA root is made on first start under `<data>/ca/<domain>/` (key mode 0600) and kept.
    #[arg(long, default_value = "trefoil.local")]
    trust_domain: trefoil_control::identity::TrustDomain,
    /// How long the SVIDs issued to proxies are valid (5s to 30d); proxies renew at two thirds.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    svid_lifetime: std::time::Duration,
    /// Sign SVIDs with this CA certificate (PEM) instead of a generated root:
    /// an intermediate (or a root) the operator made, optionally followed by
    /// the certificates above it. Checked at start: a CA (basicConstraints),
    /// valid now, chaining to a root. Needs --ca-key. Not rotated by `trefoil ca rotate`.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (unencrypted PKCS#8 PEM). Read at each
    /// start from this file and never copied; a mode others can read is warned about.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The root(s) to trust (PEM) when --ca-cert is an intermediate whose
    /// file does not hold its root, or the roots --ca-external-command's
    /// chains end at (then required): the trust bundle proxies are sent.
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Sign each certificate with this command (an external CA: Vault,
    /// cert-manager, a corporate CA), run without a shell: the CSR in PEM on
    /// its stdin; TREFOIL_SPIFFE_ID, TREFOIL_LIFETIME_SECONDS,
    /// TREFOIL_TRUST_DOMAIN and TREFOIL_SUBJECT_ALT_NAMES (openssl syntax) in
    /// its environment; the chain in PEM (leaf first) on its stdout, within
    /// 10 s and 64 KiB. The answer is verified (the CSR's key, exactly the
    /// names asked, not a CA, valid now, chaining to --ca-bundle) before any
    /// proxy gets it. Needs --ca-bundle; not with --ca-cert.
    #[arg(long, value_name = "PATH", requires = "ca_bundle", conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_external_command: Option<PathBuf>,
    /// Serve the config stream without TLS, taking each proxy's Hello at its
    /// word (refused unless --grpc-listen is loopback). Without it the stream
    /// is TLS with a certificate from the mesh CA: proxies present their SVID,
    /// or only trade a join token for one.
    #[arg(long)]
    insecure_plaintext_stream: bool,
}

pub(crate) fn run(args: Args) -> ExitCode {
    if args.repair {
        if args.store != trefoil_control::store::Location::Embedded {
            eprintln!("error: --repair mends the embedded store file; an etcd store is repaired with etcd's own tools");
            return exit::bad_input();
        }
        return repair(&args.data);
    }
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let stop = async {
        stop_signal().await;
        tracing::info!("shutting down");
    };
    // Said where an operator looks first, before any log line scrolls it away.
    if let Some(warning) = trefoil_control::exposure_warning(args.listen, args.grpc_listen, args.insecure_plaintext_stream) {
        eprintln!("WARNING: {warning}");
    }
    let limits = trefoil_control::server::Limits {
        max_connections: args.max_connections.max(1),
        max_watches: args.max_watches,
        ..Default::default()
    };
    if args.ca_bundle.is_some() && args.ca_cert.is_none() && args.ca_external_command.is_none() {
        eprintln!("error: --ca-bundle goes with --ca-cert or --ca-external-command: it is the roots their certificates chain to");
        return exit::bad_input();
    }
    let external_ca = match (args.ca_external_command, &args.ca_bundle) {
        (Some(command), Some(bundle)) => Some(trefoil_control::identity::ExternalCa { command, bundle: bundle.clone() }),
        _ => None,
    };
    let operator_ca = match (args.ca_cert, args.ca_key) {
        (Some(cert), Some(key)) => Some(trefoil_control::identity::OperatorCa { cert, key, bundle: args.ca_bundle }),
        _ => None,
    };
    let identity =
        trefoil_control::IdentityOptions { trust_domain: args.trust_domain, svid_lifetime: args.svid_lifetime, operator_ca, external_ca };
    let options = ControlOptions {
        data_dir: args.data,
        store: args.store,
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        limits,
        insecure_local: args.insecure_local,
        identity,
        plaintext_stream: args.insecure_plaintext_stream,
    };
    match runtime.block_on(trefoil_control::run(options, stop)) {
        Ok(()) => exit::ok(),
        Err(e @ trefoil_control::ControlError::OperatorCa(_)) => {
            eprintln!("error: {e}");
            exit::bad_input()
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}

/// `--repair`: exits rather than serving, so that an operator reads what was
/// lost before proxies get snapshots compiled from the repaired store.
fn repair(data: &std::path::Path) -> ExitCode {
    match trefoil_control::store::repair(&trefoil_control::store_path(data)) {
        Ok(report) => {
            print!("{report}");
            if report.aside.is_some() {
                println!("start `trefoil control` again without --repair to serve the repaired store");
            }
            exit::ok()
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}
