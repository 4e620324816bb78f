//! `trefoil validate -f PATH`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use trefoil_model::{Diagnostic, Diagnostics};

use crate::output::{exit, print_structured, Format};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    resources: Vec<String>,
    errors: &'a [Diagnostic],
}

pub(crate) fn run(args: Args) -> ExitCode {
    // Every problem at once: how each resource reads, then the checks across
    // fields and resources on what could be read. Compiling as a proxy then
    // checks what only the data plane can: certificates that parse, listener
    // route names, upstream TLS settings.
    let loaded = trefoil_model::load_all_path(&args.path);
    let problems = trefoil_model::check_all(&loaded, true);
    let result =
        if problems.is_empty() { trefoil_proxy::check(&loaded.resources).map(|()| loaded.resources) } else { Err(Diagnostics(problems)) };
    let (resources, errors): (Vec<String>, Vec<Diagnostic>) = match &result {
        Ok(sources) => (sources.iter().map(|s| format!("{}/{}", s.resource.kind(), s.resource.name())).collect(), Vec::new()),
        Err(Diagnostics(d)) => (Vec::new(), d.clone()),
    };
    match args.output {
        Format::Table => {
            if errors.is_empty() {
                println!("{}: {} resources valid", args.path.display(), resources.len());
                for r in &resources {
                    println!("  {r}");
                }
            } else {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{} error{} in {}", errors.len(), if errors.len() == 1 { "" } else { "s" }, args.path.display());
            }
        }
        format => print_structured(format, &Report { valid: errors.is_empty(), resources, errors: &errors }),
    }
    if errors.is_empty() {
        exit::ok()
    } else {
        exit::bad_input()
    }
}
