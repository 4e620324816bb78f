//! `trefoil ca status | rotate`: the mesh CA as the control plane shows it
//! (`GET /api/v1/ca`), and rotating its generated root (admin).

use std::process::ExitCode;

use serde_json::Value;

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, Format};

pub(crate) const ABOUT: &str = "The mesh's certificate authority.

`status` shows the certificate that signs proxies' SVIDs and every root in the
trust bundle proxies verify peers with: SHA-256 fingerprint, expiry, which one
signs, and, for a root rotated out, when it leaves the bundle. Never a key.

`rotate` (admin) makes a new root for a control plane that generated its own:
new SVIDs are signed by it at once, proxies renew onto it at two thirds of
their SVID's life, and the old root stays in the bundle for the overlap
(default 24h, at least the SVID lifetime) so that SVIDs it signed keep
verifying until they are renewed. A CA given with `trefoil control --ca-cert`
is rotated by replacing its files and restarting the control plane.

Exit codes: 0 done, 1 the control plane failed or refused, 2 bad input.";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The signing certificate and the roots in the trust bundle.
    Status {
        #[command(flatten)]
        server: Server,
        /// json/yaml: {trustDomain, source, signer, roots[], generation, svidLifetime}.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// A new root; the old one stays trusted for --overlap (admin).
    Rotate {
        /// How long the old root stays in the trust bundle, e.g. 24h; at least the SVID lifetime [default: 24h].
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<std::time::Duration>,
        #[command(flatten)]
        server: Server,
        /// json/yaml: the CA after the rotation, as `status` shows it.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn table(ca: &Value) {
    println!(
        "trust domain {}; CA {}; SVIDs live {}; generation {}",
        text(&ca["trustDomain"]),
        text(&ca["source"]),
        text(&ca["svidLifetime"]),
        ca["generation"]
    );
    let signer = &ca["signer"];
    let signer_is_root = ca["roots"].as_array().into_iter().flatten().any(|r| r["signing"] == true);
    if !signer_is_root {
        println!(
            "signer (intermediate): {}  not after {}  {}",
            text(&signer["subject"]),
            text(&signer["notAfter"]),
            text(&signer["fingerprint"])
        );
    }
    println!("{:<6} {:<9} {:<21} {:<21} {:<24} SHA-256 FINGERPRINT", "SIGNS", "STATE", "NOT AFTER", "LEAVES BUNDLE", "SUBJECT");
    for root in ca["roots"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<9} {:<21} {:<21} {:<24} {}",
            if root["signing"] == true { "yes" } else { "-" },
            text(&root["state"]),
            text(&root["notAfter"]),
            root["dropAt"].as_str().unwrap_or("-"),
            text(&root["subject"]),
            text(&root["fingerprint"])
        );
    }
}

pub(crate) fn run(args: Args) -> ExitCode {
    run_async(async move {
        match args.command {
            Command::Status { server, output } => match server.client().ca_status().await {
                Err(e) => report(&server.url(), &e),
                Ok(ca) => {
                    match output {
                        Format::Table => table(&ca),
                        other => print_structured(other, &ca),
                    }
                    exit::ok()
                }
            },
            Command::Rotate { overlap, server, output } => {
                let overlap = overlap.map(|d| humantime::format_duration(d).to_string());
                match server.client().rotate_ca(overlap.as_deref()).await {
                    Err(e) => report(&server.url(), &e),
                    Ok(ca) => {
                        match output {
                            Format::Table => {
                                eprintln!("rotated: a new root signs; the old one stays in the trust bundle until its overlap ends");
                                table(&ca);
                            }
                            other => print_structured(other, &ca),
                        }
                        exit::ok()
                    }
                }
            }
        }
    })
}
