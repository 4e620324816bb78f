//! Operator event handlers: Lua scripts a CNF attaches to the events its
//! functions publish, run in a sandbox when a verdict carries such an event.
//!
//! Scripts are compiled when a snapshot compiles ([`Handlers::compile`]), so a
//! syntax error is a located configuration error, never a runtime surprise.
//! Each run gets a fresh Lua state ([`sandbox`]): nothing leaks between
//! requests, and a state is never shared across threads. What a script may do
//! is the SDK ([`sdk`]); the proxy performs its effects ([`Effects`]).

mod budget;
mod convert;
mod guards;
mod luaapi;
mod pattern;
mod sandbox;
mod sdk;
mod strlib;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::call::{Event, Verdict};

pub use sandbox::Limits;

/// Why a handler did not finish normally.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("the sandbox could not be set up: {0}")]
    Sandbox(String),
    #[error("script error: {0}")]
    Runtime(String),
    #[error("stopped after {0} Lua instructions")]
    InstructionLimit(u64),
    #[error("stopped at its memory limit of {0} bytes")]
    MemoryLimit(usize),
    #[error("stopped after {0:?}")]
    Deadline(Duration),
    /// A function the script called failed and its failure policy is closed.
    #[error("network function {0} is unavailable")]
    Unavailable(String),
}

impl HandlerError {
    /// A short, bounded name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Syntax(_) | HandlerError::Runtime(_) | HandlerError::Sandbox(_) => "error",
            HandlerError::InstructionLimit(_) => "cpu_limit",
            HandlerError::MemoryLimit(_) => "memory_limit",
            HandlerError::Deadline(_) => "deadline",
            HandlerError::Unavailable(_) => "unavailable",
        }
    }

    /// How many lines below its YAML key the script line a syntax error
    /// names is: Lua counts the script's own lines (`cnf/event:3:`), and a
    /// script written as a block scalar (`event: |`, the way handlers are
    /// written, and the only way one ends in a newline) starts on the line
    /// after its key. 0 for a one-line script or an error naming no line.
    pub fn lines_below_key(&self, cnf: &str, event: &str, script: &str) -> usize {
        let HandlerError::Syntax(message) = self else { return 0 };
        let tag = format!("{cnf}/{event}:");
        let Some(at) = message.find(&tag) else { return 0 };
        let digits: String = message[at + tag.len()..].chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<usize>() {
            Ok(line) if script.ends_with('\n') => line.min(script.lines().count().max(1)),
            _ => 0,
        }
    }
}

/// One compiled handler: the script, checked for syntax, with its chunk name.
#[derive(Debug)]
pub struct Handler {
    /// `cnf/event`, shown in Lua error messages and tracebacks.
    chunk_name: String,
    source: Arc<str>,
}

/// A CNF's handlers by event name.
#[derive(Debug, Default)]
pub struct Handlers {
    by_event: HashMap<String, Handler>,
    pub limits: Limits,
}

impl Handlers {
    /// Checks every script's syntax; errors come back per event name.
    pub fn compile(cnf: &str, scripts: &BTreeMap<String, String>, limits: Limits) -> Result<Self, Vec<(String, HandlerError)>> {
        let mut by_event = HashMap::new();
        let mut problems = Vec::new();
        for (event, script) in scripts {
            let chunk_name = format!("{cnf}/{event}");
            match sandbox::check_syntax(&chunk_name, script) {
                Ok(()) => {
                    by_event.insert(event.clone(), Handler { chunk_name, source: Arc::from(script.as_str()) });
                }
                Err(e) => problems.push((event.clone(), e)),
            }
        }
        if problems.is_empty() {
            Ok(Handlers { by_event, limits })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_event.is_empty()
    }

    pub fn get(&self, event: &str) -> Option<&Handler> {
        self.by_event.get(event)
    }

    /// Whether any of `events` has a handler: the proxy's cheap check before doing anything else.
    pub fn handles_any(&self, events: &[Event]) -> bool {
        events.iter().any(|e| self.by_event.contains_key(&e.name))
    }
}

/// The request as a handler sees it (copied: a run outlives no borrow).
#[derive(Clone, Debug, Default)]
pub struct RequestView {
    pub method: String,
    pub path: String,
    pub host: String,
    /// Names lower-case; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The client's address as the proxy saw it (not a header a client can set).
    pub source: Option<std::net::SocketAddr>,
}

/// Everything one run is told.
#[derive(Clone, Debug)]
pub struct RunInput {
    pub cnf: String,
    pub trace_id: String,
    pub event: Event,
    pub request: Arc<RequestView>,
}

/// What a called function answered, as far as a handler is concerned.
#[derive(Debug)]
pub enum CallOutcome {
    Verdict(Verdict),
    /// The call failed and the function's failure policy is open: the script gets `nil, reason`.
    FailedOpen(String),
    /// The call failed and the policy is closed: the run stops and the request is refused.
    FailedClosed,
}

/// Boxed so the trait stays object-safe; one allocation per call is nothing next to a call-out.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<CallOutcome, String>> + Send>>;

/// A datapath change a handler asks for (`trefoil.datapath.*`); the proxy
/// sends it to the control plane's Datapath service, which checks it exactly
/// as `trefoil datapath add` would.
#[derive(Clone, Debug, PartialEq)]
pub enum DatapathChange {
    Add(DatapathRule),
    /// Deletes the rule of this name.
    Remove(String),
}

/// A rule as the Datapath service takes it: the seed's compact form plus
/// what that form leaves out, and where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatapathRule {
    /// `"10.0.2.0/24 80 : redirect => app=http-proxy"`, `"* * : drop"`.
    pub compact: String,
    /// Source addresses or networks; empty: any source.
    pub source: Vec<String>,
    /// `"10m"`: the rule is deleted this long after its last write.
    pub ttl: Option<String>,
    pub priority: i32,
    /// The run that asked: recorded in the rule's `origin`.
    pub origin_cnf: String,
    pub origin_handler: String,
    pub origin_trace_id: String,
}

/// The rule's name once stored, or why it was not.
pub type DatapathFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// How a handler reaches the world outside its sandbox: other network
/// functions and the datapath. The proxy makes the calls.
pub trait Caller: Send + Sync + 'static {
    /// Calls the NetworkFunction `function` about the current request; `Err` names an unknown function.
    fn call(&self, function: &str) -> CallFuture;
    /// Adds or removes a datapath rule; `Err` says why it was refused or could not be sent.
    fn datapath(&self, change: DatapathChange) -> DatapathFuture;
}

/// The effects a run asks for, applied by the proxy afterwards.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// The request is refused with this status and body.
    pub deny: Option<(u16, String)>,
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// Events emitted by the script, and those published by functions it called.
    pub events: Vec<Event>,
    /// Span attributes.
    pub tags: Vec<(String, String)>,
}

impl Effects {
    /// Folds a called function's verdict in, as the chain would have applied it.
    fn absorb(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Allow { set_headers, remove_headers, events } => {
                self.remove_headers.extend(remove_headers.iter().cloned());
                self.set_headers.extend(set_headers.iter().cloned());
                self.events.extend(events.iter().cloned());
            }
            Verdict::Deny { status, reason, events, .. } => {
                if self.deny.is_none() {
                    self.deny = Some((*status, reason.clone()));
                }
                self.events.extend(events.iter().cloned());
            }
        }
    }
}

/// Runs `handler` once in a fresh sandbox.
pub async fn run(handler: &Handler, limits: &Limits, input: RunInput, caller: Arc<dyn Caller>) -> Result<Effects, HandlerError> {
    sandbox::run(&handler.chunk_name, &handler.source, limits, input, caller).await
}

#[cfg(test)]
mod strlib_tests;
#[cfg(test)]
mod tests;
