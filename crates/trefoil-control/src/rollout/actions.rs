//! `POST /api/v1/rollouts/{name}/{promote|abort|pause|resume}`: a person
//! overriding the controller. The action is recorded in the rollout's status
//! (with an event); the controller then shapes the Route accordingly.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use trefoil_api::{ErrorBody, RolloutActed};

use super::{now_ms, persist, plan, rollout_of, status_of, Action, RolloutError};
use crate::auth::Actor;
use crate::store::{Store, StoreError};

/// Attempts when the controller writes the status between our read and write.
const RETRIES: usize = 5;

pub fn router(store: Arc<Store>) -> Router {
    Router::new().route("/api/v1/rollouts/{name}/{action}", post(act)).with_state(store)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

async fn act(State(store): State<Arc<Store>>, actor: Option<Extension<Actor>>, Path((name, verb)): Path<(String, String)>) -> Response {
    let Some(action) = Action::parse(&verb) else {
        return error(StatusCode::NOT_FOUND, format!("unknown action {verb:?}; actions: promote, abort, pause, resume"));
    };
    for _ in 0..RETRIES {
        match try_act(&store, &name, action) {
            Err(Failure::Rollout(RolloutError::Store(StoreError::Conflict { .. }))) => continue,
            Err(Failure::Missing(what)) => return error(StatusCode::NOT_FOUND, what),
            Err(Failure::Refused(e)) => return error(StatusCode::CONFLICT, e.to_string()),
            Err(Failure::Rollout(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Ok((status, before)) => {
                if let Some(Extension(actor)) = &actor {
                    let after = store.get("RolloutStatus", &name).map(|s| s.resource_version);
                    actor.record(&verb, &format!("RolloutStatus/{name}"), Some(before), after);
                }
                return Json(RolloutActed { name, status }).into_response();
            }
        }
    }
    error(StatusCode::CONFLICT, format!("RolloutStatus/{name} kept changing; try again"))
}

enum Failure {
    Missing(String),
    Refused(plan::NotApplicable),
    Rollout(RolloutError),
}

impl From<RolloutError> for Failure {
    fn from(e: RolloutError) -> Self {
        Failure::Rollout(e)
    }
}

/// The status written, and the version it replaced.
fn try_act(store: &Store, name: &str, action: Action) -> Result<(trefoil_model::spec::RolloutStatusSpec, u64), Failure> {
    let stored = store.get("Rollout", name).ok_or_else(|| Failure::Missing(format!("Rollout/{name} not found")))?;
    let (spec, _) = rollout_of(&stored)?;
    let (status, expected) = status_of(store, name)?;
    let mut status = status.ok_or_else(|| Failure::Missing(format!("Rollout/{name} has not started yet; try again in a moment")))?;
    let note = plan::act(&spec, &mut status, action, now_ms()).map_err(Failure::Refused)?;
    persist(store, name, &mut status, vec![note], expected)?;
    Ok((status, expected))
}
