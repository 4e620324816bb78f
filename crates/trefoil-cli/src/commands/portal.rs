//! `trefoil portal login-link`: a one-time login link for the portal, as
//! `trefoil up` and `trefoil demo` print one.

use std::process::ExitCode;

use trefoil_api::{CreateLoginCode, Role};

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, time_until, Format};

pub(crate) const ABOUT: &str = "The operator portal, served by the control plane at its API's address.

`trefoil portal login-link` asks the control plane (admin token) for a one-time
login code and prints the portal's address with it: opening the link logs the
browser in with a session token of the code's role that lasts 12 hours, and
takes the code out of the address bar. The code is good once, for 10 minutes
unless --ttl says otherwise (at most 1h), and the control plane keeps at most
16 unused; a reused or expired link is refused on the portal's login form.

Exit codes: 0 printed; 1 the control plane refused (e.g. too many codes
outstanding) or could not be reached; 2 bad arguments.";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print a one-time login link for the portal (needs an admin token).
    LoginLink {
        /// The session's role: viewer, editor or admin.
        #[arg(long, default_value_t = Role::Admin)]
        role: Role,
        /// How long the link may be used, e.g. 10m (at most 1h) [default: 10m].
        #[arg(long)]
        ttl: Option<trefoil_model::Duration>,
        #[command(flatten)]
        server: Server,
        /// json/yaml: {url, id, role, expiresMs, code}.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// The portal's address with a login code in its fragment, which the
/// browser never sends to a server.
pub(crate) fn link(server: &str, code: &str) -> String {
    format!("{}/#login={code}", server.trim_end_matches('/'))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Printed {
    url: String,
    #[serde(flatten)]
    code: trefoil_api::LoginCode,
}

pub(crate) fn run(args: Args) -> ExitCode {
    run_async(async move {
        match args.command {
            Command::LoginLink { role, ttl, server, output } => {
                let ttl_seconds = ttl.map(|t| t.get().as_secs().max(1));
                match server.client().create_login_code(&CreateLoginCode { role: Some(role), ttl_seconds }).await {
                    Err(e) => report(&server.url(), &e),
                    Ok(code) if output == Format::Table => {
                        eprintln!("a one-time login link ({}, good once, expires {}):", code.role, time_until(code.expires_ms));
                        println!("{}", link(&server.url(), &code.code));
                        exit::ok()
                    }
                    Ok(code) => {
                        print_structured(output, &Printed { url: link(&server.url(), &code.code), code });
                        exit::ok()
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_code_rides_in_the_fragment() {
        assert_eq!(super::link("http://127.0.0.1:7070/", "ab12"), "http://127.0.0.1:7070/#login=ab12");
        assert_eq!(super::link("http://127.0.0.1:7070", "ab12"), "http://127.0.0.1:7070/#login=ab12");
    }
}
