//! The rollout controller: drives each `Rollout` by rewriting its Route's
//! backends through the store (so proxies get a new snapshot like after any
//! write, and hot reload fails no request), judges the canary every analysis
//! interval from the proxies' own metrics and optional Prometheus queries,
//! and records its progress in `RolloutStatus/<name>` and every transition
//! as `Event/<name>-<n>`.
//!
//! All state lives in the store, so a restarted control plane resumes where
//! the last one stopped (only the metrics window starts over). Decisions are
//! made by the pure `plan`, `route` and `judge`; this module reads and
//! writes.

pub mod actions;
mod judge;
mod plan;
mod route;
mod scrape;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use trefoil_model::spec::{EventSpec, RolloutSpec, RolloutStatusSpec, RouteSpec};
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

use crate::proxies::Proxies;
use crate::store::{Store, StoreError, Stored};

pub use plan::{Action, NotApplicable};

/// How often every rollout is looked at; checks run at their own interval.
pub const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("Route/{0} does not exist")]
    RouteMissing(String),
    #[error("{kind}/{name} holds an unreadable object: {source}")]
    Unreadable { kind: &'static str, name: String, source: serde_json::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the controller until the task is dropped.
pub async fn run(store: Arc<Store>, proxies: Arc<Proxies>) {
    let mut scraper = scrape::Scraper::default();
    // The last problem of each rollout: logged when it appears, not every tick.
    let mut problems: HashMap<String, String> = HashMap::new();
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let admins: Vec<String> =
            proxies.status(&[]).into_iter().filter(|p| p.connected && p.node.is_none()).filter_map(|p| p.admin_address).collect();
        for stored in store.list("Rollout") {
            let name = stored.name.clone();
            match reconcile(&store, &mut scraper, &admins, stored).await {
                Ok(()) => {
                    problems.remove(&name);
                }
                Err(e) => {
                    let text = e.to_string();
                    if problems.get(&name) != Some(&text) {
                        tracing::warn!(rollout = %name, "{text}");
                        problems.insert(name, text);
                    }
                }
            }
        }
        forget_deleted(&store, &mut scraper);
    }
}

/// A deleted Rollout's status goes with it; its events stay as history.
fn forget_deleted(store: &Store, scraper: &mut scrape::Scraper) {
    for status in store.list("RolloutStatus") {
        if store.get("Rollout", &status.name).is_none() {
            scraper.forget(&status.name);
            if let Err(e) = store.delete("RolloutStatus", &status.name, Some(status.resource_version)) {
                tracing::debug!(rollout = %status.name, "status not removed yet: {e}");
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn decode(stored: &Stored, kind: &'static str) -> Result<Resource, RolloutError> {
    serde_json::from_value(stored.value.clone()).map_err(|source| RolloutError::Unreadable { kind, name: stored.name.clone(), source })
}

/// The Rollout's spec and generation.
pub(crate) fn rollout_of(stored: &Stored) -> Result<(RolloutSpec, u64), RolloutError> {
    let r = decode(stored, "Rollout")?;
    let generation = r.metadata.generation.unwrap_or(1);
    match r.spec {
        Spec::Rollout(spec) => Ok((spec, generation)),
        _ => {
            Err(RolloutError::Unreadable { kind: "Rollout", name: stored.name.clone(), source: serde::de::Error::custom("not a Rollout") })
        }
    }
}

/// The stored status and its resourceVersion (0 when there is none).
pub(crate) fn status_of(store: &Store, name: &str) -> Result<(Option<RolloutStatusSpec>, u64), RolloutError> {
    let Some(stored) = store.get("RolloutStatus", name) else { return Ok((None, 0)) };
    match decode(&stored, "RolloutStatus")?.spec {
        Spec::RolloutStatus(s) => Ok((Some(s), stored.resource_version)),
        _ => Ok((None, stored.resource_version)),
    }
}

fn resource(name: &str, spec: Spec) -> Resource {
    Resource {
        api_version: API_VERSION.to_string(),
        metadata: Metadata { name: name.to_string(), generation: Some(1), ..Default::default() },
        spec,
    }
}

/// Writes the events for `notes`, then the status, only if nobody wrote the
/// status since it was read at `expected`. Events go first: a crash between
/// the two rewrites the same event names from the same status next time.
pub(crate) fn persist(
    store: &Store,
    name: &str,
    status: &mut RolloutStatusSpec,
    notes: Vec<plan::Note>,
    expected: u64,
) -> Result<(), RolloutError> {
    for n in notes {
        let event = EventSpec {
            regarding: format!("Rollout/{name}"),
            reason: n.reason.to_string(),
            message: n.message,
            time_ms: now_ms(),
            figures: n.figures,
        };
        let event_name = format!("{name}-{}", status.events);
        tracing::info!(rollout = %name, reason = %event.reason, "{}", event.message);
        put(store, "Event", &event_name, resource(&event_name, Spec::Event(event)), None)?;
        status.events += 1;
    }
    put(store, "RolloutStatus", name, resource(name, Spec::RolloutStatus(status.clone())), Some(expected))?;
    Ok(())
}

fn put(store: &Store, kind: &'static str, name: &str, r: Resource, expected: Option<u64>) -> Result<u64, RolloutError> {
    let value = serde_json::to_value(&r).map_err(|source| RolloutError::Unreadable { kind, name: name.to_string(), source })?;
    Ok(store.put(kind, name, value, expected)?)
}

/// One look at one rollout: start or resume it, check, advance, shape the Route.
async fn reconcile(store: &Store, scraper: &mut scrape::Scraper, admins: &[String], stored: Stored) -> Result<(), RolloutError> {
    let name = stored.name.clone();
    let (spec, generation) = rollout_of(&stored)?;
    let now = now_ms();
    let (current, expected) = status_of(store, &name)?;
    let mut notes = Vec::new();
    let mut status = match current.clone() {
        Some(s) if s.observed_generation == generation => s,
        _ => {
            // New, or its spec changed: a changed rollout starts over.
            scraper.forget(&name);
            let (s, started) = plan::start(generation, now);
            notes.push(started);
            s
        }
    };
    if status.settled {
        return Ok(());
    }
    let Some(route) = store.get("Route", &spec.route) else {
        // Say so where people look; nothing moves until the Route exists.
        let waiting = format!("waiting for Route/{}", spec.route);
        if status.message != waiting {
            status.message = waiting;
            persist(store, &name, &mut status, notes, expected)?;
        }
        return Err(RolloutError::RouteMissing(spec.route.clone()));
    };

    // Traffic to a canary with no ready replica would fail: wait for one
    // before the first shift. Later, a canary that stops serving is judged
    // (and rolled back) by its failing checks instead.
    if plan::before_traffic(&status) && !canary_ready(store, &spec) {
        let waiting = format!("waiting for a ready endpoint of {} {}", spec.service, spec.canary);
        if status.message != waiting || !notes.is_empty() {
            status.message = waiting;
            persist(store, &name, &mut status, notes, expected)?;
        }
        return Ok(());
    }

    if let Some(analysis) = spec.analysis.as_ref().filter(|_| plan::canary_has_traffic(&spec, &status)) {
        if now.saturating_sub(status.last_check_ms) >= analysis.interval.get().as_millis() as u64 {
            match scraper.measure(&name, &spec, analysis, admins).await {
                Some(measured) => notes.extend(plan::record_check(&spec, &mut status, judge::judge(analysis, &measured), now)),
                None => status.last_check_ms = now,
            }
        }
    }
    notes.extend(plan::advance(&spec, &mut status, now));

    let shaped = shape_route(&route, &spec, &status)?;
    if status.phase.is_final() {
        scraper.forget(&name);
        // Settled once a look finds the Route already as the final phase wants it.
        status.settled = shaped.is_none();
    }
    if current.as_ref() != Some(&status) || !notes.is_empty() {
        persist(store, &name, &mut status, notes, expected)?;
    }
    if let Some(value) = shaped {
        store.put("Route", &spec.route, value, Some(route.resource_version))?;
    }
    Ok(())
}

/// Whether the canary version has an endpoint to serve: a ready one the
/// runtime discovered, or a static one of the Service.
fn canary_ready(store: &Store, spec: &RolloutSpec) -> bool {
    let spec_of = |kind: &'static str| store.get(kind, &spec.service).and_then(|s| decode(&s, kind).ok()).map(|r| r.spec);
    let discovered =
        matches!(spec_of("Endpoints"), Some(Spec::Endpoints(e)) if e.endpoints.iter().any(|e| e.ready && e.version == spec.canary));
    discovered || matches!(spec_of("Service"), Some(Spec::Service(s)) if s.endpoints.iter().any(|e| e.version == spec.canary))
}

/// The Route's new value with its generation bumped, or `None` when it
/// already sends traffic where `status` wants it.
fn shape_route(route: &Stored, spec: &RolloutSpec, status: &RolloutStatusSpec) -> Result<Option<Value>, RolloutError> {
    let mut r = decode(route, "Route")?;
    let Spec::Route(current) = &r.spec else { return Err(RolloutError::RouteMissing(spec.route.clone())) };
    let wanted: RouteSpec = route::shape(current, spec, &plan::traffic(spec, status));
    if &wanted == current {
        return Ok(None);
    }
    r.spec = Spec::Route(wanted);
    r.metadata.generation = Some(r.metadata.generation.unwrap_or(1) + 1);
    r.metadata.resource_version = None;
    serde_json::to_value(&r).map(Some).map_err(|source| RolloutError::Unreadable { kind: "Route", name: spec.route.clone(), source })
}
