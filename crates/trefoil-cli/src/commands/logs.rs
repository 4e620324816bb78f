//! `trefoil logs NAME`: the output of a process started by `trefoil up`.

use std::path::PathBuf;
use std::process::ExitCode;

use trefoil_runtime::logs;

use crate::output::exit;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Process name: `control`, a gateway's Proxy name, `<workload>-<replica>` (an app)
    /// or `<workload>-<replica>-sidecar`.
    name: String,
    /// The state directory `trefoil up` used.
    #[arg(long, default_value = ".trefoil")]
    state: PathBuf,
    /// Keep printing what the process writes, until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let known = logs::known_names(&args.state);
    if !known.contains(&args.name) {
        eprintln!("error: no process named {:?} in {}", args.name, args.state.display());
        if known.is_empty() {
            eprintln!("no logs there: was `trefoil up` run with this --state?");
        } else {
            eprintln!("known: {}", known.join(", "));
        }
        return exit::bad_input();
    }
    let file = logs::path(&args.state, &args.name);
    let mut out = std::io::stdout().lock();
    match logs::print(&file, args.tail, args.follow, &mut out) {
        Ok(()) => exit::ok(),
        // The reader went away (e.g. `| head`): not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::ok(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            exit::failure()
        }
    }
}
