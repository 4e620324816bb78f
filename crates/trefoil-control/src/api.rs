//! The REST API over the store: `/api/v1/<kind>[/<name>]` with list, get,
//! create, apply, delete and watch; every write validated by
//! `trefoil-model`, optimistic by `metadata.resourceVersion`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use trefoil_api::{Deleted, ErrorBody, List, WatchEvent};
use trefoil_chain::handlers::{Handlers, Limits};
use trefoil_model::resource::{kind_named, CONTROLLER_KINDS, KINDS};
use trefoil_model::{Diagnostic, Resource, ResourceVersion, SourcedResource, Spec};

use crate::auth::Actor;
use crate::store::{Event, Store, StoreError, Stored};

/// How many times an unconditional apply retries when a concurrent write
/// changed the object between its read and its write.
const APPLY_RETRIES: usize = 5;

pub fn router(store: Arc<Store>) -> Router {
    router_with_applied(store, None)
}

/// Where reads find `status.applied`: the compiler, which knows who needs
/// what and what each proxy acked. Without it objects are read without status.
#[derive(Clone)]
pub struct AppliedSource(pub Option<Arc<crate::config_stream::Compiler>>);

/// [`router`], with `status.applied` on every object read.
pub fn router_with_applied(store: Arc<Store>, applied: Option<Arc<crate::config_stream::Compiler>>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/validate", post(validate))
        .route("/api/v1/{kind}", get(list).post(create))
        .route("/api/v1/watch/{kind}", get(watch_kind))
        .route("/api/v1/{kind}/{name}", get(read).put(apply).delete(remove))
        .layer(Extension(AppliedSource(applied)))
        .with_state(store)
}

/// An error as the API answers it: a status and the contract's error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody::new(message) }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn body(&self) -> &ErrorBody {
        &self.body
    }

    fn invalid(errors: Vec<Diagnostic>) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body: ErrorBody { error: "invalid resource".into(), errors } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Answers every error the same way, whoever made it: axum's own rejections
/// (a malformed query string, a body over the limit, an unknown path) come
/// as plain text or nothing; they become the JSON error body the OpenAPI
/// document promises, with their status and text.
pub async fn rescue(response: Response) -> Response {
    let status = response.status();
    let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are a line or two; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let body = serde_json::to_vec(&ErrorBody::new(message)).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Conflict { .. } => StatusCode::CONFLICT,
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            // Damaged and Locked come from opening the store, not from a request.
            StoreError::Io { .. } | StoreError::Damaged { .. } | StoreError::Locked { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            // etcd down or without quorum: try again later; reads still answer.
            StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The canonical kind for a path segment: `Route`, `route` or `routes`.
fn kind_of(segment: &str) -> Result<&'static str, ApiError> {
    kind_named(segment)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown kind {segment:?}; kinds: {}", KINDS.join(", "))))
}

/// Refuses client writes to kinds only the control plane writes, so a
/// rollout's recorded progress and its events stay the controller's word.
fn writable(kind: &'static str) -> Result<&'static str, ApiError> {
    if CONTROLLER_KINDS.contains(&kind) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("{kind} is written by the control plane only")));
    }
    Ok(kind)
}

/// A stored object as clients see it: with its `resourceVersion`.
fn present(stored: &Stored) -> Value {
    let mut v = stored.value.clone();
    v["metadata"]["resourceVersion"] = json!(stored.resource_version.to_string());
    v
}

/// [`present`], with `status.applied` when the compiler is at hand.
fn present_status(stored: &Stored, applied: &AppliedSource) -> Value {
    let mut v = present(stored);
    if let Some(status) = applied.0.as_ref().and_then(|c| c.applied(stored)) {
        v["status"] = json!({ "applied": status });
    }
    v
}

async fn list(
    State(store): State<Arc<Store>>,
    Extension(applied): Extension<AppliedSource>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    if q.watch {
        return Ok(watch(store, kind));
    }
    let items: Vec<Value> = store.list(kind).iter().map(|s| present_status(s, &applied)).collect();
    Ok(Json(List { kind: format!("{kind}List"), resource_version: ResourceVersion::new(store.revision()), items }).into_response())
}

async fn watch_kind(State(store): State<Arc<Store>>, Path(kind): Path<String>) -> Result<Response, ApiError> {
    Ok(watch(store, kind_of(&kind)?))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    watch: bool,
}

/// A stream of JSON lines: the current objects as `ADDED`, then every change.
fn watch(store: Arc<Store>, kind: &'static str) -> Response {
    // Subscribe before listing, so no change falls between the two.
    let rx = store.subscribe();
    // Listed now, not when the stream is first polled.
    #[allow(clippy::needless_collect)]
    let initial: Vec<Bytes> = store.list(kind).iter().map(|s| line(&WatchEvent::Added { object: present(s) })).collect();
    let changes = futures_util::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(Event::Put(s)) if s.kind == kind => {
                    return Some((Ok::<_, std::convert::Infallible>(line(&WatchEvent::Modified { object: present(&s) })), Some(rx)))
                }
                Ok(Event::Deleted(s)) if s.kind == kind => return Some((Ok(line(&WatchEvent::Deleted { object: present(&s) })), Some(rx))),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // The watcher fell behind and missed changes: tell it to
                    // list again, and end (going on would show it a state
                    // with holes; ending also frees its buffers and slot).
                    return Some((Ok(line(&WatchEvent::Error { error: "watch fell behind; list again".into() })), None));
                }
                Err(_) => return None,
            }
        }
    });
    let stream = futures_util::stream::iter(initial.into_iter().map(Ok)).chain(changes);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn line(event: &WatchEvent<Value>) -> Bytes {
    let mut out = serde_json::to_vec(event).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

async fn read(
    State(store): State<Arc<Store>>,
    Extension(applied): Extension<AppliedSource>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&kind)?;
    store
        .get(kind, &name)
        .map(|s| Json(present_status(&s, &applied)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("{kind}/{name} not found")))
}

/// Parses and validates one resource from a request body (YAML or JSON),
/// by itself and against the stored resources it must agree with: what
/// every proxy would refuse is refused here, where the user sees it.
pub(crate) fn parse(store: &Store, kind: &str, name: Option<&str>, body: &[u8]) -> Result<(Value, Option<u64>), ApiError> {
    let checked = check(store, body)?;
    if checked.kind != kind {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body is a {}, the path says {kind}", checked.kind)));
    }
    if let Some(name) = name.filter(|n| *n != checked.name) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body names {:?}, the path says {name:?}", checked.name)));
    }
    Ok((checked.value, checked.expected))
}

/// One resource from a request body, valid alone and with what is stored.
struct Checked {
    kind: &'static str,
    name: String,
    /// As it would be stored: no `resourceVersion`.
    value: Value,
    /// The `resourceVersion` the writer read, if it gave one.
    expected: Option<u64>,
}

fn check(store: &Store, body: &[u8]) -> Result<Checked, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
    // Every problem in one answer: the shape errors, and the checks on what could be read.
    let loaded = trefoil_model::load_all_str(&Arc::from("request body"), text);
    if !loaded.problems.is_empty() {
        return Err(ApiError::invalid(trefoil_model::check_all(&loaded, false)));
    }
    let sources = loaded.resources;
    let [source] = sources.as_slice() else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body must hold exactly one resource, not {}", sources.len())));
    };
    trefoil_model::validate_each(&sources).map_err(|d| ApiError::invalid(d.0))?;
    handler_syntax(source)?;
    let mut stored = Vec::new();
    for s in trefoil_model::validate::related_kinds(source.resource.kind()).iter().flat_map(|k| store.list(k)) {
        match serde_json::from_value::<Resource>(s.value) {
            Ok(r) => stored.push(r),
            // Skipped as the config stream skips it: no proxy is sent it.
            Err(e) => tracing::warn!(kind = %s.kind, name = %s.name, error = %e, "skipping a stored object this build cannot read"),
        }
    }
    trefoil_model::validate_against(&sources, &stored).map_err(|d| ApiError::invalid(d.0))?;
    let resource = &source.resource;
    let expected = match &resource.metadata.resource_version {
        None => None,
        Some(rv) => Some(
            rv.parse::<ResourceVersion>()
                .map_err(|_| {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("metadata.resourceVersion {rv:?} is not a version this server issued"))
                })?
                .get(),
        ),
    };
    let mut value = serde_json::to_value(resource).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Ok(Checked { kind: resource.kind(), name: resource.name().to_string(), value, expected })
}

/// A write's checks without the write: the portal's editor shows errors at
/// their line and field, and the change, before anything is stored. A
/// `resourceVersion` that is no longer current is a 409 here already.
async fn validate(State(store): State<Arc<Store>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let Checked { kind, name, mut value, expected } = check(&store, &body)?;
    writable(kind)?;
    if let Some(expected) = expected {
        let current = store.get(kind, &name).map(|s| s.resource_version);
        if current != Some(expected) {
            let now = current.map_or_else(|| "deleted".to_string(), |rv| format!("at version {rv}"));
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{kind}/{name} is {now}, not {expected}: it changed since it was read"),
            ));
        }
        value["metadata"]["resourceVersion"] = json!(ResourceVersion::new(expected).to_string());
    }
    Ok(Json(value))
}

/// A CNF's handler scripts must compile: a syntax error is refused here, at
/// `spec.handlers.EVENT` with the script's line, instead of being NACKed by
/// every proxy after it was stored.
fn handler_syntax(source: &SourcedResource) -> Result<(), ApiError> {
    let Spec::Cnf(cnf) = &source.resource.spec else { return Ok(()) };
    let name = source.resource.name();
    match Handlers::compile(name, &cnf.handlers, Limits::default()) {
        Ok(_) => Ok(()),
        Err(problems) => Err(ApiError::invalid(
            problems
                .into_iter()
                .map(|(event, e)| {
                    let mut d = source.diagnostic(&format!("spec.handlers.{event}"), e.to_string());
                    d.line += e.lines_below_key(name, &event, &cnf.handlers[&event]);
                    d
                })
                .collect(),
        )),
    }
}

/// Writes `value`, bumping `generation` when the spec changed; the new
/// version, and the one it replaced (none: it was created).
pub(crate) fn write(
    store: &Store,
    kind: &str,
    name: &str,
    mut value: Value,
    expected: Option<u64>,
) -> Result<(u64, Option<u64>), ApiError> {
    for _ in 0..APPLY_RETRIES {
        let current = store.get(kind, name);
        let generation = match &current {
            Some(c) if c.value["spec"] == value["spec"] => c.value["metadata"]["generation"].as_u64().unwrap_or(1),
            Some(c) => c.value["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
            None => 1,
        };
        value["metadata"]["generation"] = json!(generation);
        // Without a client version, still write against what was just read,
        // so the generation computed above cannot go stale.
        let guard = expected.or(Some(current.as_ref().map_or(0, |c| c.resource_version)));
        match store.put(kind, name, value.clone(), guard) {
            Ok(rv) => return Ok((rv, current.map(|c| c.resource_version))),
            Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("{kind}/{name} kept changing; try again")))
}

async fn create(
    State(store): State<Arc<Store>>,
    actor: Option<Extension<Actor>>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = writable(kind_of(&kind)?)?;
    let (value, _) = parse(&store, kind, None, &body)?;
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut value = value;
    value["metadata"]["generation"] = json!(1);
    let rv = store.put(kind, &name, value, Some(0)).map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, format!("{kind}/{name} already exists; use PUT to replace it")),
        e => e.into(),
    })?;
    if let Some(Extension(actor)) = &actor {
        actor.record("create", &format!("{kind}/{name}"), None, Some(rv));
    }
    let stored = store.get(kind, &name).filter(|s| s.resource_version == rv);
    Ok((StatusCode::CREATED, Json(stored.map(|s| present(&s)).unwrap_or(Value::Null))).into_response())
}

async fn apply(
    State(store): State<Arc<Store>>,
    actor: Option<Extension<Actor>>,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = writable(kind_of(&kind)?)?;
    let (value, expected) = parse(&store, kind, Some(&name), &body)?;
    let (rv, before) = write(&store, kind, &name, value, expected)?;
    if let Some(Extension(actor)) = &actor {
        actor.record("apply", &format!("{kind}/{name}"), before, Some(rv));
    }
    let stored = store.get(kind, &name).filter(|s| s.resource_version == rv);
    let status = if before.is_none() { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(stored.map(|s| present(&s)).unwrap_or(Value::Null))).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<u64>,
}

async fn remove(
    State(store): State<Arc<Store>>,
    actor: Option<Extension<Actor>>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let kind = writable(kind_of(&kind)?)?;
    let before = store.get(kind, &name).map(|s| s.resource_version);
    let rv = store.delete(kind, &name, q.resource_version)?;
    if let Some(Extension(actor)) = &actor {
        actor.record("delete", &format!("{kind}/{name}"), before, None);
    }
    Ok(Json(Deleted { deleted: format!("{kind}/{name}"), resource_version: ResourceVersion::new(rv) }).into_response())
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    /// A store of its own for `test`, empty.
    fn fresh_store(test: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("trefoil-api-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store::open(dir.join("store.db")).unwrap()
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_is_told_and_ends() {
        let store = Arc::new(fresh_store("lag"));
        store.put("Route", "first", json!({}), None).unwrap();
        let mut body = watch(store.clone(), "Route").into_body().into_data_stream();
        // More changes than the store keeps for a reader that is not reading.
        for i in 0..1100 {
            store.put("Route", &format!("r{i}"), json!({}), None).unwrap();
        }
        let mut lines = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(chunk) = body.next().await {
                lines.push(String::from_utf8_lossy(&chunk.unwrap()).into_owned());
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream went on after falling behind; last: {:?}", lines.last());
        assert!(lines[0].contains("\"ADDED\""), "{}", lines[0]);
        assert!(lines.last().is_some_and(|l| l.contains("\"ERROR\"") && l.contains("list again")), "{:?}", lines.last());
    }
    #[test]
    fn a_handler_that_does_not_compile_is_refused_at_its_field_and_nothing_is_stored() {
        let store = fresh_store("lua");
        let cnf = |script: &str| {
            format!("apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {{name: guard}}\nspec:\n  chain: [{{function: acl}}]\n  handlers:\n    checked: |\n      {script}\n")
        };
        let err = parse(&store, "CNF", Some("guard"), cnf("if x then").as_bytes()).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let [problem] = err.body().errors.as_slice() else { panic!("one problem: {:?}", err.body()) };
        // The key is line 7; the script's one line is line 8.
        assert_eq!((problem.field.as_str(), problem.line), ("spec.handlers.checked", 8), "{problem:?}");
        assert!(problem.message.contains("syntax error") && problem.message.contains("guard/checked"), "{problem:?}");
        // Lower in a longer script: the line Lua names, counted from the key.
        let err = parse(&store, "CNF", Some("guard"), cnf("trefoil.log('a')\n      trefoil.log(\n      x = = 1").as_bytes()).unwrap_err();
        let [problem] = err.body().errors.as_slice() else { panic!("one problem: {:?}", err.body()) };
        assert!(problem.message.contains("guard/checked:3:"), "{problem:?}");
        assert_eq!(problem.line, 10, "{problem:?}");
        assert!(parse(&store, "CNF", Some("guard"), cnf("trefoil.log('fine')").as_bytes()).is_ok());
        assert!(store.list("CNF").is_empty(), "parse stores nothing");
    }

    #[tokio::test]
    async fn validate_checks_as_a_write_does_and_stores_nothing() {
        let store = Arc::new(fresh_store("validate"));
        let web = |extra: &str| {
            Bytes::from(format!(
                "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\n{extra}spec:\n  endpoints: [{{address: \"127.0.0.1:9001\", version: v1}}]\n"
            ))
        };
        let Json(checked) = validate(State(store.clone()), web("")).await.unwrap();
        assert_eq!((checked["kind"].as_str(), checked["metadata"]["name"].as_str()), (Some("Service"), Some("web")));
        assert!(store.list("Service").is_empty(), "validate stores nothing");

        let typo = Bytes::from("apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoint: []\n");
        let err = validate(State(store.clone()), typo).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let [problem] = err.body().errors.as_slice() else { panic!("one problem: {:?}", err.body()) };
        assert_eq!(problem.line, 5, "{problem:?}");
        assert!(problem.field.contains("endpoint") || problem.message.contains("endpoint"), "{problem:?}");

        let rv = store.put("Service", "web", checked.clone(), None).unwrap();
        let Json(current) = validate(State(store.clone()), web(&format!("  resourceVersion: \"{rv}\"\n"))).await.unwrap();
        assert_eq!(current["metadata"]["resourceVersion"], json!(rv.to_string()));
        let stale = validate(State(store.clone()), web(&format!("  resourceVersion: \"{}\"\n", rv - 1))).await.unwrap_err();
        assert_eq!(stale.status(), StatusCode::CONFLICT, "{:?}", stale.body());
        let controller = Bytes::from("apiVersion: trefoil.dev/v1alpha1\nkind: Event\nmetadata: {name: e}\nspec: {regarding: Service/web, reason: X, message: m, timeMs: 1}\n");
        assert_eq!(validate(State(store), controller).await.unwrap_err().status(), StatusCode::FORBIDDEN);
    }

    /// The whole REST surface on a loopback port, over a fresh store.
    async fn serve_all(test: &str) -> (std::net::SocketAddr, Arc<Store>) {
        let store = Arc::new(fresh_store(test));
        let proxies = Arc::new(crate::proxies::Proxies::default());
        let flows = Arc::new(crate::flows::FlowStore::default());
        let app = router(store.clone())
            .merge(crate::traces::api::router(Arc::new(crate::traces::TraceStore::default()), flows.clone()))
            .merge(crate::flows::api::router(flows))
            .merge(crate::rollout::actions::router(store.clone()))
            .merge(crate::status::router(store.clone(), proxies))
            .layer(axum::middleware::map_response(rescue));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::serve(listener, app, crate::server::Limits::default(), std::future::pending()));
        (addr, store)
    }

    fn service(name: &str) -> trefoil_model::Resource {
        let yaml = format!(
            "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  endpoints: [{{address: \"127.0.0.1:9001\", version: v1}}]\n"
        );
        trefoil_model::load_str(&Arc::from("test"), &yaml).unwrap().remove(0).resource
    }

    #[tokio::test]
    async fn the_typed_client_reads_every_answer_the_server_writes() {
        let (addr, _store) = serve_all("client").await;
        let api = trefoil_api::Client::for_addr(addr).with_timeout(Duration::from_secs(20));
        api.reachable().await.unwrap();

        let written = api.apply(&service("web")).await.unwrap();
        assert!(written.created);
        let first = written.resource_version().unwrap();
        let again = api.apply(&service("web")).await.unwrap();
        assert!(!again.created && again.resource_version() > Some(first));
        assert_eq!(again.resource.as_ref().and_then(|r| r.metadata.generation), Some(1), "same spec, same generation");

        let list = api.list("services").await.unwrap();
        assert_eq!((list.kind.as_str(), list.items.len()), ("ServiceList", 1));
        assert_eq!(list.resource_version, again.resource_version().unwrap());
        assert_eq!(api.get("Service", "web").await.unwrap().name(), "web");
        assert_eq!(api.find("Service", "nope").await.unwrap(), None);

        // A refusal carries its status and the API's error body.
        let taken = api.create(&service("web")).await.unwrap_err();
        assert_eq!(taken.status(), Some(409));
        assert!(taken.body().unwrap().error.contains("already exists"), "{taken}");
        assert!(!api.get("widgets", "x").await.unwrap_err().is_transient());

        let mut watch = api.watch("Service").await.unwrap();
        let added = watch.next().await.unwrap().unwrap();
        assert!(matches!(&added, trefoil_api::WatchEvent::Added { object } if object.name() == "web"), "{added:?}");
        let deleted = api.delete("Service", "web").await.unwrap();
        assert_eq!(deleted.deleted, "Service/web");
        let gone = tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(gone, trefoil_api::WatchEvent::Deleted { .. }), "{gone:?}");

        let status = api.proxies().await.unwrap();
        assert!(status.items.is_empty());
        assert!(api.traces(5).await.unwrap().items.is_empty());
        assert_eq!(api.trace(&"a".repeat(32)).await.unwrap_err().status(), Some(404));
        let missing = api.rollout_action("nope", trefoil_api::RolloutAction::Pause).await.unwrap_err();
        assert_eq!(missing.status(), Some(404), "{missing}");
    }

    #[test]
    fn the_blocking_client_works_without_a_runtime_of_its_own() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (addr, _store) = rt.block_on(serve_all("blocking"));
        let api = trefoil_api::blocking::Client::for_addr(addr).unwrap();
        assert!(api.apply(&service("web")).unwrap().created);
        assert_eq!(api.list("Service").unwrap().items.len(), 1);
        let mut watch = api.watch("Service").unwrap();
        assert!(matches!(watch.next(), Some(Ok(trefoil_api::WatchEvent::Added { .. }))));
    }
}
