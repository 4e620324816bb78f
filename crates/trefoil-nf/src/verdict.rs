//! Building the protocol's `JsonVerdict`: the functions only say allow or
//! deny and which events they publish.

use std::collections::BTreeMap;

use serde_json::Value;
use trefoil_chain::json::JsonVerdict;
use trefoil_chain::Event;

pub fn event(name: &str, data: Value) -> Event {
    Event { name: name.to_string(), data }
}

pub fn allow(events: Vec<Event>) -> JsonVerdict {
    JsonVerdict { verdict: "allow".into(), events, ..Default::default() }
}

/// A refusal: the client gets `status` with `reason` as the body.
pub fn deny(status: u16, reason: impl Into<String>, events: Vec<Event>) -> JsonVerdict {
    JsonVerdict { verdict: "deny".into(), status: Some(u32::from(status)), reason: Some(reason.into()), events, ..Default::default() }
}

/// `deny` with extra headers on the refusal (e.g. `retry-after`).
pub fn deny_with_headers(status: u16, reason: impl Into<String>, headers: BTreeMap<String, String>, events: Vec<Event>) -> JsonVerdict {
    JsonVerdict { set_headers: headers, ..deny(status, reason, events) }
}
