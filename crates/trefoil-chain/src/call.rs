//! The two halves of a call-out, whatever the encoding: what the proxy asks
//! and what the function answers.

use std::net::SocketAddr;

use bytes::Bytes;

/// What a function is told about one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Call<'a> {
    /// The CNF the request belongs to: one function may serve many.
    pub cnf: &'a str,
    pub function: &'a str,
    pub method: &'a str,
    /// Path with query, as the client sent it.
    pub path: &'a str,
    pub host: &'a str,
    /// Request headers, names lower-case; values that are not text are left out.
    pub headers: Vec<(&'a str, &'a str)>,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// The request's trace id (32 hex digits): the correlation id of everything it causes.
    pub trace_id: &'a str,
    /// The body, when the function asked for it: the request's, or on the
    /// response phase the response's.
    pub body: Option<Bytes>,
    /// Set on the response phase: what the upstream answered.
    pub response: Option<ResponseHead<'a>>,
}

/// The upstream's answer, for a response-phase call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseHead<'a> {
    pub status: u16,
    /// Response headers, names lower-case; values that are not text are left out.
    pub headers: Vec<(&'a str, &'a str)>,
}

/// What a function decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The request goes on, with these header edits (on the response phase:
    /// edits of the response).
    Allow { set_headers: Vec<(String, String)>, remove_headers: Vec<String>, events: Vec<Event> },
    /// The request stops here (on the response phase: the upstream's answer is
    /// dropped); the client gets `status` with `reason` as the body.
    Deny { status: u16, reason: String, headers: Vec<(String, String)>, events: Vec<Event> },
}

impl Verdict {
    /// Events published with the verdict.
    pub fn events(&self) -> &[Event] {
        match self {
            Verdict::Allow { events, .. } | Verdict::Deny { events, .. } => events,
        }
    }

    /// The events, taking them out of the verdict.
    pub fn into_events(self) -> Vec<Event> {
        match self {
            Verdict::Allow { events, .. } | Verdict::Deny { events, .. } => events,
        }
    }
}

/// Something a function reports about a request, for the CNF's handlers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub name: String,
    /// Free-form details.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// The status a deny carries when the function named none (or an impossible one).
pub const DEFAULT_DENY_STATUS: u16 = 403;

/// `status` if it can be sent to a client as a refusal, else 403.
pub fn deny_status(status: Option<u32>) -> u16 {
    match status {
        Some(s @ 200..=599) => s as u16,
        _ => DEFAULT_DENY_STATUS,
    }
}
