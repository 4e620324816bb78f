//! `trefoil token create | list | revoke`: the API's bearer tokens. A secret
//! is printed once, when created; lists show ids, roles and expiry only.

use std::process::ExitCode;

use trefoil_api::{CreateToken, Role, TokenInfo};

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, time_until, Format};

pub(crate) const ABOUT: &str = "Bearer tokens for the control plane's REST API (admin only).

Roles: viewer reads; editor reads and writes resources; admin does everything,
tokens and the audit log (`trefoil get events --audit`) included. The control
plane keeps a hash of each token, so a lost secret cannot be shown again:
revoke it and create another. The first admin token is in the control plane's
data directory (`admin.token`, mode 0600); `trefoil up` puts it in the CLI's
config (see `trefoil config --help`).";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create a token and print its secret (shown this once).
    Create {
        /// viewer, editor or admin.
        #[arg(long)]
        role: Role,
        /// Lifetime, e.g. 24h or 30m; none: until revoked.
        #[arg(long)]
        ttl: Option<trefoil_model::Duration>,
        #[command(flatten)]
        server: Server,
        /// json/yaml: {id, role, creator, createdMs, expiresMs, token}.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List tokens: id, role, creator and expiry, never a secret.
    List {
        #[command(flatten)]
        server: Server,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revoke a token by its id; its next request is refused.
    Revoke {
        id: String,
        #[command(flatten)]
        server: Server,
    },
}

fn expiry(info: &TokenInfo) -> String {
    info.expires_ms.map_or_else(|| "never".to_string(), time_until)
}

pub(crate) fn run(args: Args) -> ExitCode {
    run_async(async move {
        match args.command {
            Command::Create { role, ttl, server, output } => {
                let ttl_seconds = ttl.map(|t| t.get().as_secs().max(1));
                match server.client().create_token(&CreateToken { role, ttl_seconds }).await {
                    Err(e) => report(&server.url(), &e),
                    Ok(created) if output == Format::Table => {
                        eprintln!(
                            "token {} ({}, expires {}); the secret is shown this once:",
                            created.info.id,
                            role,
                            expiry(&created.info)
                        );
                        println!("{}", created.token);
                        exit::ok()
                    }
                    Ok(created) => {
                        print_structured(output, &created);
                        exit::ok()
                    }
                }
            }
            Command::List { server, output } => match server.client().tokens().await {
                Err(e) => report(&server.url(), &e),
                Ok(list) if output == Format::Table => {
                    println!("{:<18} {:<8} {:<18} EXPIRES", "ID", "ROLE", "CREATOR");
                    for t in &list.items {
                        println!("{:<18} {:<8} {:<18} {}", t.id, t.role, t.creator, expiry(t));
                    }
                    exit::ok()
                }
                Ok(list) => {
                    print_structured(output, &list);
                    exit::ok()
                }
            },
            Command::Revoke { id, server } => match server.client().revoke_token(&id).await {
                Err(e) => report(&server.url(), &e),
                Ok(revoked) => {
                    println!("token {} revoked", revoked.revoked);
                    exit::ok()
                }
            },
        }
    })
}
