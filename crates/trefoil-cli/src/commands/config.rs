//! The CLI's config file, like a kubeconfig: named contexts, each a control
//! plane's URL and the token to show it, and the current one; and `trefoil
//! config get-contexts | use-context`.
//!
//! ```yaml
//! current-context: local
//! contexts:
//! - name: local
//!   server: http://127.0.0.1:7070
//!   tokenFile: /home/me/mesh/.trefoil/data/admin.token   # or token: trf_...
//! ```
//!
//! A token goes only to its own context's server: `--server` naming another
//! control plane is sent no token from the file (`--token` then), so a typo
//! in an address never hands a credential to whoever listens there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::output::{exit, print_structured, Format};

/// The file: `TREFOIL_CONFIG`, else `$XDG_CONFIG_HOME/trefoil/config`, else `~/.config/trefoil/config`.
pub(crate) fn path() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("TREFOIL_CONFIG")
        .or_else(|| set("XDG_CONFIG_HOME").map(|d| d.join("trefoil").join("config")))
        .or_else(|| set("HOME").map(|h| h.join(".config").join("trefoil").join("config")))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(rename = "current-context", default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Context {
    pub name: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Context {
    /// Its token: inline, or read from its file.
    pub(crate) fn token(&self) -> Result<Option<String>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(file) = &self.token_file else { return Ok(None) };
        std::fs::read_to_string(file)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("context {:?}: cannot read tokenFile {}: {e}", self.name, file.display()))
    }
}

/// Reads the file; a missing file is an empty config.
pub(crate) fn load(path: &Path) -> Result<ConfigFile, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    trefoil_model::from_yaml(&Arc::from(path.display().to_string()), &text).map_err(|d| d.to_string())
}

/// Writes the file, owner-only (it may hold tokens), replacing it whole.
pub(crate) fn save(path: &Path, config: &ConfigFile) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let value = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let text = trefoil_model::located_yaml::to_string(&value);
    trefoil_api::tokens::write_secret(path, text.trim_end()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl ConfigFile {
    fn named(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// Adds or replaces context `context` and makes it the current one.
    pub(crate) fn set_current(&mut self, context: Context) {
        self.current_context = Some(context.name.clone());
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(slot) => *slot = context,
            None => self.contexts.push(context),
        }
    }
}

/// Adds or updates context `name` for a control plane this machine runs
/// (`trefoil up`, `trefoil demo`), pointing at its admin token file, and
/// makes it current. Returns the file written and the context it replaced
/// as current (for the demo to put back).
pub(crate) fn remember(name: &str, server: &str, token_file: &Path) -> Result<(PathBuf, Option<String>), String> {
    let path = path().ok_or("no config file: set TREFOIL_CONFIG, XDG_CONFIG_HOME or HOME")?;
    let mut config = load(&path)?;
    let previous = config.current_context.clone();
    config.set_current(Context { name: name.into(), server: server.into(), token: None, token_file: Some(token_file.to_path_buf()) });
    save(&path, &config)?;
    Ok((path, previous))
}

/// Removes context `name` and makes `current` the current one again.
pub(crate) fn forget(name: &str, current: Option<String>) -> Result<(), String> {
    let path = path().ok_or("no config file")?;
    let mut config = load(&path)?;
    config.contexts.retain(|c| c.name != name);
    config.current_context = current.filter(|c| config.named(c).is_some());
    save(&path, &config)
}

/// Where a command sends its calls, and with which token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub server: String,
    pub token: Option<String>,
}

/// What the command line and environment said.
pub(crate) struct Asked<'a> {
    pub server: Option<&'a str>,
    pub token: Option<&'a str>,
    pub token_file: Option<&'a Path>,
    pub context: Option<&'a str>,
}

/// The default server when neither the command line nor a context names one.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Resolves the target: `--server`/`--token` (or their variables) win; else
/// the context (`--context`, else the current one). A context's token goes
/// only to the context's own server.
pub(crate) fn resolve(asked: &Asked<'_>, config: &ConfigFile) -> Result<Target, String> {
    let context = match asked.context {
        Some(name) => Some(config.named(name).ok_or_else(|| format!("no context named {name:?} in the config file"))?),
        None => config.current_context.as_deref().and_then(|name| config.named(name)),
    };
    let server = asked.server.map(str::to_string).or_else(|| context.map(|c| c.server.clone())).unwrap_or_else(|| DEFAULT_SERVER.into());
    let token = match (asked.token, asked.token_file) {
        (Some(token), _) => Some(token.trim().to_string()),
        (None, Some(file)) => {
            Some(std::fs::read_to_string(file).map_err(|e| format!("cannot read token file {}: {e}", file.display()))?.trim().to_string())
        }
        (None, None) => match context.filter(|c| same_server(&c.server, &server)) {
            Some(c) => c.token()?,
            // --server elsewhere: the context whose server it is, if any.
            None => match config.contexts.iter().find(|c| same_server(&c.server, &server)) {
                Some(c) => c.token()?,
                None => None,
            },
        },
    };
    Ok(Target { server, token })
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the contexts of the config file; `*` marks the current one.
    GetContexts {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Make NAME the current context.
    UseContext { name: String },
}

pub(crate) const ABOUT: &str = "The CLI's config file (TREFOIL_CONFIG, else $XDG_CONFIG_HOME/trefoil/config, else
~/.config/trefoil/config) names control planes as contexts: a server URL and a
token (inline, or a tokenFile). `trefoil up` and `trefoil demo` add a context
for the control plane they start and make it current. --server, --token
(TREFOIL_TOKEN) and --token-file (TREFOIL_TOKEN_FILE) override it; a context's
token is only ever sent to that context's server.";

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(path) = path() else {
        eprintln!("error: no config file: set TREFOIL_CONFIG, XDG_CONFIG_HOME or HOME");
        return exit::bad_input();
    };
    let mut config = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::bad_input();
        }
    };
    match args.command {
        Command::GetContexts { output: Format::Table } => {
            println!("{:<8} {:<20} {:<40} TOKEN", "CURRENT", "NAME", "SERVER");
            for c in &config.contexts {
                let current = if config.current_context.as_deref() == Some(c.name.as_str()) { "*" } else { "" };
                // Where the token is, never the token.
                let token = match (&c.token, &c.token_file) {
                    (Some(_), _) => "inline".to_string(),
                    (None, Some(file)) => file.display().to_string(),
                    (None, None) => "-".to_string(),
                };
                println!("{current:<8} {:<20} {:<40} {token}", c.name, c.server);
            }
            exit::ok()
        }
        Command::GetContexts { output } => {
            let shown: Vec<Context> =
                config.contexts.iter().map(|c| Context { token: c.token.as_ref().map(|_| "(set)".into()), ..c.clone() }).collect();
            print_structured(output, &ConfigFile { current_context: config.current_context, contexts: shown });
            exit::ok()
        }
        Command::UseContext { name } => {
            if config.named(&name).is_none() {
                let known: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
                eprintln!("error: no context named {name:?} in {}; contexts: {}", path.display(), known.join(", "));
                return exit::bad_input();
            }
            config.current_context = Some(name.clone());
            match save(&path, &config) {
                Ok(()) => {
                    println!("current context: {name}");
                    exit::ok()
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::failure()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str, server: &str, token: &str) -> Context {
        Context { name: name.into(), server: server.into(), token: Some(token.into()), token_file: None }
    }

    fn asked<'a>(server: Option<&'a str>, token: Option<&'a str>, context: Option<&'a str>) -> Asked<'a> {
        Asked { server, token, token_file: None, context }
    }

    #[test]
    fn a_context_token_goes_only_to_its_own_server() {
        let mut config = ConfigFile::default();
        config.set_current(ctx("a", "http://127.0.0.1:1/", "ta"));
        config.set_current(ctx("b", "http://127.0.0.1:2", "tb"));
        let target = |a: Asked<'_>| resolve(&a, &config).unwrap();
        assert_eq!(target(asked(None, None, None)), Target { server: "http://127.0.0.1:2".into(), token: Some("tb".into()) });
        assert_eq!(target(asked(None, None, Some("a"))), Target { server: "http://127.0.0.1:1/".into(), token: Some("ta".into()) });
        // --server of another context: that context's token, not the current one's.
        assert_eq!(target(asked(Some("http://127.0.0.1:1"), None, None)).token.as_deref(), Some("ta"));
        assert_eq!(target(asked(Some("http://10.0.0.1:7070"), None, None)).token, None);
        assert_eq!(target(asked(Some("http://10.0.0.1:7070"), Some("mine"), None)).token.as_deref(), Some("mine"));
        assert!(resolve(&asked(None, None, Some("c")), &config).unwrap_err().contains("no context named \"c\""));
        assert_eq!(resolve(&asked(None, None, None), &ConfigFile::default()).unwrap().server, DEFAULT_SERVER);
    }

    #[test]
    fn the_file_round_trips_owner_only_and_bad_fields_are_located() {
        let dir = std::env::temp_dir().join(format!("trefoil-cli-config-{}", std::process::id()));
        let path = dir.join("nested").join("config");
        let mut config = ConfigFile::default();
        config.set_current(Context {
            name: "local".into(),
            server: "http://127.0.0.1:7070".into(),
            token: None,
            token_file: Some("/x/admin.token".into()),
        });
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "current-context: a\ncontexts:\n- name: a\n  sever: http://x\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains(":4:") && e.contains("sever"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
