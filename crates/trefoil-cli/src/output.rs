//! Machine-readable and human output shared by every command.

use clap::ValueEnum;
use serde::Serialize;

/// `-o` choices.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; `table` is the caller's job.
pub(crate) fn print_structured<T: Serialize>(format: Format, value: &T) {
    // Through a JSON value: YAML is then what JSON would say, without enum tags.
    let json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default()),
        Format::Yaml => print!("{}", trefoil_model::located_yaml::to_string(&json)),
        Format::Table => {}
    }
}

/// Exit codes of the design contract.
pub(crate) mod exit {
    use std::process::ExitCode;
    pub(crate) fn ok() -> ExitCode {
        ExitCode::SUCCESS
    }
    pub(crate) fn failure() -> ExitCode {
        ExitCode::from(1)
    }
    pub(crate) fn bad_input() -> ExitCode {
        ExitCode::from(2)
    }
    /// A wait (`apply --wait`) whose time ran out first.
    pub(crate) fn timed_out() -> ExitCode {
        ExitCode::from(3)
    }
}

/// The single-threaded async runtime commands run on; `None` after telling the user why not.
pub(crate) fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Resolves once the process is asked to stop: Ctrl-C or SIGTERM. Create it
/// once per command and poll that one future: a listener made anew inside a
/// loop misses a signal sent between two iterations.
pub(crate) async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM listener, Ctrl-C still stops it.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}

/// Where a service started by the local runtime listens: `--listen`, else
/// 127.0.0.1 and the port in `PORT`; `None` when neither is given.
pub(crate) fn listen_address(listen: Option<std::net::SocketAddr>) -> Option<std::net::SocketAddr> {
    listen.or_else(|| {
        let port: u16 = std::env::var("PORT").ok()?.parse().ok()?;
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    })
}

/// How long until a deadline the control plane wrote (Unix milliseconds),
/// in whole seconds rounded up: `in 599s`.
pub(crate) fn time_until(deadline_ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("in {}", trefoil_model::Duration::from_secs(deadline_ms.saturating_sub(now).div_ceil(1000)))
}
