//! The policy route that makes redirect work on a router. The classifier
//! marks a redirected packet; a packet addressed to another host would be
//! forwarded, never reaching the listener the program assigned, so a rule
//! sends marked packets to a table whose one route says "everything is local"
//! (the route TPROXY setups use). Unmarked traffic keeps its normal routes.
//!
//! Done with iproute2's `ip`, which every node that runs network functions
//! has; netlink by hand would be more code for the same two lines.

use std::process::Command;

use crate::abi::REDIRECT_MARK;
use crate::error::Error;

/// The routing table and rule priority the agent owns (0x7ef1, as the mark).
const TABLE: &str = "32497";

/// The mark the classifier sets, under the mask of the bits it owns.
fn mark() -> String {
    format!("{REDIRECT_MARK:#x}/0xffff0000")
}

fn ip(args: &[&str]) -> Result<String, Error> {
    let output = Command::new("ip").args(args).output().map_err(|e| Error::io("running `ip` (iproute2)", e))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installs the rule and route in the calling thread's network namespace, once.
pub(crate) fn install() -> Result<(), Error> {
    for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let result = (|| {
            if ip(&[family, "rule", "show", "table", TABLE])?.trim().is_empty() {
                ip(&[family, "rule", "add", "fwmark", &mark(), "lookup", TABLE, "priority", TABLE])?;
            }
            ip(&[family, "route", "replace", "local", any, "dev", "lo", "table", TABLE]).map(drop)
        })();
        match (family, result) {
            (_, Ok(())) => {}
            // A namespace without IPv6 cannot carry IPv6 flows either.
            ("-6", Err(error)) => tracing::warn!(%error, "no IPv6 policy route for redirect"),
            (_, Err(error)) => return Err(error),
        }
    }
    Ok(())
}

/// Removes the rule and the table's route, leaving the namespace as found.
pub(crate) fn remove() -> Result<(), Error> {
    for family in ["-4", "-6"] {
        // Bounded: `install` adds one rule; a second loop turn covers a racing agent.
        for _ in 0..4 {
            match ip(&[family, "rule", "show", "table", TABLE]) {
                Ok(rules) if !rules.trim().is_empty() => {
                    ip(&[family, "rule", "del", "fwmark", &mark(), "lookup", TABLE, "priority", TABLE])?;
                }
                _ => break,
            }
        }
        // The table may already be empty; only a real failure matters here.
        if let Err(error) = ip(&[family, "route", "flush", "table", TABLE]) {
            tracing::debug!(%error, "flushing the redirect table");
        }
    }
    Ok(())
}
