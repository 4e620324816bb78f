//! The `trefoil` command: parses arguments, runs a command, prints results.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad input, 3 a wait timed out.

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trefoil: a service mesh for cloud-native network functions.
#[derive(Parser)]
#[command(
    name = "trefoil",
    version,
    about = "Trefoil: a service mesh for cloud-native network functions",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 bad input (with the error's file:line:column), 3 a wait (`apply --wait`) timed out.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter for messages on stderr, e.g. `info`, `debug`, `trefoil_proxy=debug`.
    #[arg(long, global = true, env = "TREFOIL_LOG", default_value = "info")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the resource store, its REST API and the config stream to proxies.
    Control(commands::control::Args),
    /// Create or replace resources from files in the control plane (validated locally first).
    Apply(commands::client::ApplyArgs),
    /// Show resources of a kind, or one resource, from the control plane.
    Get(commands::client::GetArgs),
    /// Delete a resource from the control plane.
    Delete(commands::client::DeleteArgs),
    /// Run a built-in example mesh: a gateway, two services (one in two versions, 80/20), live traffic and a live tally.
    Demo(commands::demo::Args),
    /// A small HTTP service for examples: answers with its service and version, can call others, fail or be slow.
    DemoApp(commands::demo_app::Args),
    /// Run a proxy from a config file (reloads on SIGHUP or change) or from the control plane (--control).
    #[command(long_about = commands::proxy::LONG_ABOUT)]
    Proxy(commands::proxy::Args),
    /// Check resource files; prints every problem with file:line:column and field (exit 2 if any).
    Validate(commands::validate::Args),
    /// Live requests per second, success rate and p50/p99 latency per service and version.
    #[command(long_about = commands::top::ABOUT)]
    Top(commands::top::Args),
    /// Follow and steer a Rollout: status, promote, abort, pause, resume.
    #[command(long_about = commands::rollout::ABOUT)]
    Rollout(commands::rollout::Args),
    /// Check the control plane, proxies and workloads; one line per check, exit 1 if any fails.
    #[command(long_about = commands::check::ABOUT)]
    Check(commands::check::Args),
    /// Show a resource and what relates to it (endpoints, workloads, routes, status).
    #[command(long_about = commands::describe::ABOUT)]
    Describe(commands::describe::Args),
    /// Run a whole mesh on this machine: control plane, gateways, and each Workload replica with its sidecar.
    #[command(long_about = commands::up::LONG_ABOUT)]
    Up(commands::up::Args),
    /// Print the output of a process started by `trefoil up`.
    Logs(commands::logs::Args),
    /// Run a sample network function for CNF chains: policy, inspect, antivirus (via clamd) or ratelimit.
    #[command(long_about = commands::nf::ABOUT)]
    Nf(commands::nf::Args),
    /// Show a request's whole call sequence by its trace id, list recent traces, or follow spans.
    #[command(long_about = commands::trace::ABOUT)]
    Trace(commands::trace::Args),
    /// Datapath rules in the compact form: add, list, delete, explain which rule decides a connection.
    #[command(long_about = commands::datapath::ABOUT)]
    Datapath(commands::datapath::Args),
    /// Authorization policies: explain which policy and rule decide a request, and why.
    #[command(long_about = commands::authz::ABOUT)]
    Authz(commands::authz::Args),
    /// Bearer tokens for the REST API: create (secret shown once), list, revoke.
    #[command(long_about = commands::token::ABOUT)]
    Token(commands::token::Args),
    /// The mesh CA: status (signer, roots, fingerprints) and rotate (admin).
    #[command(long_about = commands::ca::ABOUT)]
    Ca(commands::ca::Args),
    /// The operator portal: print a one-time login link (login-link).
    #[command(long_about = commands::portal::ABOUT)]
    Portal(commands::portal::Args),
    /// The CLI's contexts (control plane URL and token): get-contexts, use-context.
    #[command(long_about = commands::config::ABOUT)]
    Config(commands::config::Args),
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: never in files, pipes or
    // `.trefoil/logs/`, and never when NO_COLOR is set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A reader that closed our stdout early (`trefoil get routes | head -1`)
/// is not an error of ours: exit quietly with the status a process killed by
/// SIGPIPE has, instead of a panic message. SIGPIPE itself stays ignored, so
/// a write to a closed socket is an error the servers handle, never a kill.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            #[allow(clippy::disallowed_methods)] // inside a panic: there is no return path to main
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    init_logging(&cli);
    // Servers need a descriptor per connection; short commands lose nothing by it.
    match trefoil_proxy::descriptors::raise_limit() {
        Ok((before, after)) if before != after => tracing::debug!(before, after, "raised the open-files limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    match cli.command {
        Command::Control(args) => commands::control::run(args),
        Command::Apply(args) => commands::client::apply(args),
        Command::Get(args) => commands::client::get(args),
        Command::Delete(args) => commands::client::delete(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::DemoApp(args) => commands::demo_app::run(args),
        Command::Proxy(args) => commands::proxy::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Top(args) => commands::top::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Rollout(args) => commands::rollout::run(args),
        Command::Describe(args) => commands::describe::run(args),
        Command::Up(args) => commands::up::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Nf(args) => commands::nf::run(args),
        Command::Trace(args) => commands::trace::run(args),
        Command::Datapath(args) => commands::datapath::run(args),
        Command::Authz(args) => commands::authz::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::Ca(args) => commands::ca::run(args),
        Command::Portal(args) => commands::portal::run(args),
        Command::Config(args) => commands::config::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Catches argument clashes in every subcommand, which clap only reports at run time.
    #[test]
    fn every_command_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
