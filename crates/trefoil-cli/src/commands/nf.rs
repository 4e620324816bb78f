//! `trefoil nf <function>`: runs one of the sample network functions of
//! `trefoil-nf` as a service, so the local runtime can run it with
//! `command: trefoil`. Argument parsing only; the functions live in the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use trefoil_nf::antivirus::{Antivirus, ClamdAddr};
use trefoil_nf::inspect::Inspect;
use trefoil_nf::policy::Policy;
use trefoil_nf::ratelimit::{Limits, RateLimit};
use trefoil_nf::Function;

use crate::output::{current_thread_runtime, exit, listen_address, stop_signal};

pub(crate) const ABOUT: &str = "Run a sample network function: a service answering the proxy's HTTP/JSON call-out \
(POST / with a call, a JSON verdict back; GET /healthz for probes), and, on the same port, Envoy's \
ext_authz Check over gRPC. Name it in a NetworkFunction (api: http, or extAuthz with a grpc Service port) \
whose Service has this process as endpoint, and put it in a CNF's chain.

Functions:
  policy     allow/deny rules by client address or CIDR, path prefix, header and method (YAML --config)
  inspect    multi-pattern search of path, headers and body for signatures (--signatures FILE)
  antivirus  scans the body with a ClamAV daemon over INSTREAM (--clamd); needs sendBody
  ratelimit  a token bucket per client address or header value; refuses with 429

Listens on --listen, or on 127.0.0.1 and the port in PORT (as the local runtime sets it).
Events each publishes are listed in the CNF documentation, section \"Sample functions\".";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    function: NfCommand,
}

#[derive(clap::Args)]
struct Listen {
    /// Address to listen on; defaults to 127.0.0.1 and the port in `PORT`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(clap::Subcommand)]
enum NfCommand {
    /// An access list: rules by client address/CIDR, path prefix, header and method; the first match wins.
    #[command(
        long_about = "An access list. The YAML config:\n\n  default: allow          # allow | deny, when no rule matches\n  denyStatus: 403\n  denyReason: \"denied by policy\\n\"\n  rules:\n  - name: office-admin    # optional; shown in the policy_check event\n    action: allow\n    sources: [10.0.0.0/8]  # any of these (address or CIDR)\n    paths: [/admin]        # any of these prefixes (query excluded)\n    methods: [GET]         # any of these\n    headers: [{name: x-role, value: admin}]   # all; no value: presence\n\nEvery given condition of a rule must hold; rules are tried in order."
    )]
    Policy {
        #[command(flatten)]
        listen: Listen,
        /// The rules (YAML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Content inspection: denies when a signature occurs in the path, a header (`name: value`) or the body.
    #[command(long_about = "Content inspection. The signature file has one `name: pattern` per line (`#` comments); \
patterns are literal bytes, searched all at once in the path, each header as `name: value`, and the body \
(when the NetworkFunction uses sendBody). A match denies with the signature's name.")]
    Inspect {
        #[command(flatten)]
        listen: Listen,
        /// The signature file.
        #[arg(long, value_name = "FILE")]
        signatures: PathBuf,
        /// Match ASCII letters regardless of case.
        #[arg(long)]
        case_insensitive: bool,
        /// Status of a refusal.
        #[arg(long, default_value_t = 403, value_parser = clap::value_parser!(u16).range(200..=599))]
        deny_status: u16,
    },
    /// Anti-virus: scans the request body with a ClamAV daemon (clamd) and denies when it finds something.
    #[command(long_about = "Anti-virus: an adapter to a ClamAV daemon. Each call's body is scanned with clamd's \
INSTREAM command on a new connection; `FOUND` denies, `OK` allows. If clamd is unreachable, slow or answers an \
error, the function answers 502 and the NetworkFunction's failurePolicy decides. Its NetworkFunction needs \
sendBody, and a timeout longer than a scan.")]
    Antivirus {
        #[command(flatten)]
        listen: Listen,
        /// Where clamd listens: HOST:PORT, unix:PATH or an absolute socket path.
        #[arg(long, value_name = "ADDR")]
        clamd: ClamdAddr,
        /// Bound on one scan, connection included, e.g. `5s`.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        clamd_timeout: Duration,
        /// Status of a refusal.
        #[arg(long, default_value_t = 403, value_parser = clap::value_parser!(u16).range(200..=599))]
        deny_status: u16,
    },
    /// Rate limiting: a token bucket per client; refusals are 429 with retry-after.
    Ratelimit {
        #[command(flatten)]
        listen: Listen,
        /// Requests per second each client may sustain.
        #[arg(long)]
        rate: f64,
        /// Requests a client may make at once after a quiet period (the bucket size).
        #[arg(long, default_value_t = 1.0)]
        burst: f64,
        /// Key buckets by this header's value when present (e.g. an API key), else by client address.
        #[arg(long, value_name = "NAME")]
        key_header: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trefoil_model::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

pub(crate) fn run(args: Args) -> ExitCode {
    match args.function {
        NfCommand::Policy { listen, config } => match Policy::load(&config) {
            Ok(policy) => start(listen, policy),
            Err(e) => bad_input(e),
        },
        NfCommand::Inspect { listen, signatures, case_insensitive, deny_status } => {
            match Inspect::load(&signatures, case_insensitive, deny_status) {
                Ok(inspect) => start(listen, inspect),
                Err(e) => bad_input(e),
            }
        }
        NfCommand::Antivirus { listen, clamd, clamd_timeout, deny_status } => {
            start(listen, Antivirus { clamd, timeout: clamd_timeout, deny_status })
        }
        NfCommand::Ratelimit { listen, rate, burst, key_header } => match Limits::new(rate, burst) {
            Ok(limits) => start(listen, RateLimit::new(limits, key_header)),
            Err(e) => bad_input(e),
        },
    }
}

fn bad_input(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    exit::bad_input()
}

fn start<F: Function>(listen: Listen, function: F) -> ExitCode {
    let Some(addr) = listen_address(listen.listen) else { return bad_input("give --listen ADDR or set PORT") };
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let kind = function.kind();
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(address = %addr, function = kind, "network function listening");
        trefoil_nf::serve(listener, Arc::new(function), stop_signal()).await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => exit::ok(),
        Err(e) => {
            eprintln!("error: listening on {addr}: {e}");
            exit::failure()
        }
    }
}
