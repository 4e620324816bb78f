//! The proxy's end of the config stream: connect to the control plane, say
//! Hello, hand each snapshot to the lifecycle loop (`lifecycle.rs`) to apply,
//! answer Ack or Nack, and reconnect with capped back-off when the stream
//! breaks. The proxy keeps serving its last good snapshot meanwhile. A stream refused because
//! another proxy holds the name is retried on a slower back-off of its own:
//! quick retries would only fill both logs while the other stays connected.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use trefoil_model::{Diagnostic, Diagnostics, SourcedResource};
use trefoil_wire::{ConfigStreamClient, Hello, ProxyMessage, Snapshot};

use crate::config::on_demand::OnDemand;
use crate::identity::Identity;

/// First wait before reconnecting; doubled after each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First wait after the control plane refused the name; doubled up to
/// [`REFUSED_BACKOFF_MAX`]. The cap bounds how long a proxy waits once the
/// holder is gone (the control plane notices a vanished one within 15 s).
const REFUSED_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REFUSED_BACKOFF_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A snapshot for the lifecycle loop to put in force; `done` gets the outcome (the
/// error text, with locations, on rejection).
pub(crate) struct Apply {
    pub version: u64,
    pub sources: Result<Vec<SourcedResource>, Diagnostics>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The snapshot in force, as the control plane named it.
#[derive(Clone, Copy, Default)]
struct InForce {
    version: u64,
    hash: u64,
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error(transparent)]
    Client(#[from] trefoil_wire::ClientError),
    #[error("stream broken: {0}")]
    Broken(trefoil_wire::Status),
    #[error("the control plane closed the stream")]
    Closed,
    /// Another proxy with this name is connected.
    #[error("{0}")]
    NameTaken(String),
    /// The proxy is shutting down.
    #[error("the proxy is stopping")]
    Stopping,
    /// The trust bundle does not make a TLS client.
    #[error("{0}")]
    Tls(String),
    /// The first SVID came on a connection without one: reconnect with it.
    #[error("took its first SVID; reconnecting with it as the client certificate")]
    Identified,
}

impl From<trefoil_wire::Status> for StreamEnd {
    fn from(status: trefoil_wire::Status) -> Self {
        match status.code() {
            tonic::Code::AlreadyExists => StreamEnd::NameTaken(status.message().to_string()),
            _ => StreamEnd::Broken(status),
        }
    }
}

/// Keeps a stream to the control plane open for as long as the lifecycle
/// loop listens on `applies`. `addresses` are the control plane's replicas
/// (one or more, `a,b,c`): after a stream ends the proxy tries the same one
/// once more, then the next, round the list, so a replica's death moves it
/// to another while it serves its last good snapshot.
pub(crate) async fn run(
    addresses: Vec<String>,
    name: String,
    admin_address: String,
    identity: Arc<Identity>,
    bundle: Option<String>,
    applies: mpsc::Sender<Apply>,
    on_demand: Arc<OnDemand>,
) {
    let mut in_force = InForce::default();
    let mut backoff = BACKOFF_MIN;
    let mut refused_backoff = REFUSED_BACKOFF_MIN;
    if addresses.is_empty() {
        tracing::error!(proxy = %name, "no control plane address given; serving what it has");
        return;
    }
    let mut at = 0;
    loop {
        let address = &addresses[at % addresses.len()];
        let mut connected = false;
        let link = Link { identity: &identity, on_demand: &on_demand, applies: &applies };
        let end = stream(address, &name, &admin_address, bundle.as_deref(), &link, &mut in_force, &mut connected).await;
        match end {
            StreamEnd::Stopping => return,
            StreamEnd::Identified => {
                tracing::info!(control = %address, proxy = %name, "{end}");
                continue;
            }
            StreamEnd::NameTaken(reason) => {
                tracing::error!(control = %address, proxy = %name, retry_in = ?refused_backoff, "the control plane refuses this proxy: {reason}");
                tokio::time::sleep(refused_backoff).await;
                refused_backoff = (refused_backoff * 2).min(REFUSED_BACKOFF_MAX);
                continue;
            }
            _ => {}
        }
        if !connected {
            // Unreachable: the next replica (a stream that worked is tried
            // on the same one first).
            at = (at + 1) % addresses.len();
        }
        if connected {
            refused_backoff = REFUSED_BACKOFF_MIN;
            // It worked for a while: start the back-off over.
            backoff = BACKOFF_MIN;
            tracing::warn!(control = %address, reason = %end, version = in_force.version, "lost the control plane; serving the last good config and reconnecting");
        } else {
            tracing::warn!(control = %address, reason = %end, retry_in = ?backoff, "control plane unreachable; retrying");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What a stream talks to inside the proxy.
struct Link<'a> {
    identity: &'a Identity,
    on_demand: &'a OnDemand,
    applies: &'a mpsc::Sender<Apply>,
}

/// One stream, from connect to its end. With a trust bundle it is TLS and
/// presents the SVID held; a proxy without one yet only asks for it (the
/// control plane answers nothing else) and reconnects once it has it.
async fn stream(
    address: &str,
    name: &str,
    admin_address: &str,
    bundle: Option<&str>,
    link: &Link<'_>,
    in_force: &mut InForce,
    connected: &mut bool,
) -> StreamEnd {
    let Link { identity, on_demand, applies } = *link;
    let held = identity.current();
    let bootstrap = bundle.is_some() && held.is_none();
    // The bundle the control plane sent last, once there is one: after a
    // root rotation it holds the new root, which the file read at start
    // does not.
    let sent = bundle.and(identity.bundle());
    let bundle = sent.as_ref().map(|b| b.pem.as_str()).or(bundle);
    let tls = match bundle.map(|b| trefoil_wire::ClientTls::new(b, held.map(|s| s.certified.clone()))).transpose() {
        Ok(tls) => tls,
        Err(e) => return StreamEnd::Tls(e),
    };
    let mut client = match ConfigStreamClient::connect_with(address, CONNECT_TIMEOUT, tls).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let (say, said) = mpsc::unbounded_channel();
    let hello = Hello {
        proxy: name.to_string(),
        admin_address: admin_address.to_string(),
        version: in_force.version,
        hash: in_force.hash,
        pid: std::process::id(),
        kind: String::new(),
        looked_up: on_demand.looked_up(),
    };
    let _ = say.send(ProxyMessage::hello(hello));
    let mut snapshots = match client.stream(UnboundedReceiverStream::new(said)).await {
        Ok(s) => s,
        Err(trefoil_wire::ClientError::Refused(status)) => return status.into(),
        Err(e) => return e.into(),
    };
    *connected = true;
    tracing::info!(control = %address, proxy = %name, version = in_force.version, "connected to the control plane");
    // A request unanswered when a stream broke is asked again on this one.
    identity.resume();
    let mut asked = false;
    loop {
        let due = if asked { None } else { identity.due() };
        let message = tokio::select! {
            m = snapshots.message() => m,
            lookups = on_demand.pending() => {
                for service in lookups {
                    tracing::debug!(%service, "looking a service up on demand");
                    if say.send(ProxyMessage::lookup(service)).is_err() {
                        return StreamEnd::Closed;
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                if let Some(request) = identity.request() {
                    let proof = if request.join_token.is_empty() { "current SVID" } else { "join token" };
                    tracing::info!(%proof, "asking the control plane for an SVID");
                    asked = say.send(ProxyMessage::csr(request)).is_ok();
                }
                continue;
            }
        };
        let snapshot = match message {
            Ok(Some(s)) => s,
            Ok(None) => return StreamEnd::Closed,
            Err(status) => return status.into(),
        };
        if let Some(answer) = snapshot.identity {
            asked = false;
            match identity.accept(answer) {
                Ok(svid) => {
                    tracing::info!(identity = %svid.spiffe_id, serial = %svid.serial, not_after = %humantime::format_rfc3339_seconds(svid.not_after), "SVID in force");
                    if bootstrap {
                        return StreamEnd::Identified;
                    }
                }
                Err(e) => tracing::error!(error = %e, "no SVID issued"),
            }
            continue;
        }
        if !snapshot.lookup_miss.is_empty() {
            tracing::debug!(service = %snapshot.lookup_miss, "the mesh has no such service");
            on_demand.missed(&snapshot.lookup_miss, in_force.version);
            continue;
        }
        identity.set_bundle(&snapshot.trust_bundle_pem);
        let (done, outcome) = oneshot::channel();
        let apply = Apply { version: snapshot.version, sources: sources(&snapshot), done };
        if applies.send(apply).await.is_err() {
            return StreamEnd::Stopping;
        }
        let Ok(outcome) = outcome.await else { return StreamEnd::Stopping };
        let reply = match outcome {
            Ok(()) => {
                *in_force = InForce { version: snapshot.version, hash: snapshot.hash };
                on_demand.snapshot_applied();
                tracing::info!(version = snapshot.version, "snapshot applied; ACK sent");
                ProxyMessage::ack(snapshot.version, snapshot.hash)
            }
            Err(error) => {
                tracing::error!(version = snapshot.version, keeping = in_force.version, "snapshot rejected; NACK sent");
                ProxyMessage::nack(snapshot.version, snapshot.hash, error)
            }
        };
        if say.send(reply).is_err() {
            return StreamEnd::Closed;
        }
    }
}

/// The snapshot's resources as a config file would give them: each resource
/// one YAML document (JSON is YAML), so errors carry `snapshot <version>`,
/// a line and a column like a file's do.
pub(crate) fn sources(snapshot: &Snapshot) -> Result<Vec<SourcedResource>, Diagnostics> {
    let file: Arc<str> = Arc::from(format!("snapshot {}", snapshot.version));
    let documents: Vec<serde_json::Value> = serde_json::from_str(&snapshot.resources_json).map_err(|e| {
        let at = trefoil_model::located_yaml::Position { line: e.line(), column: e.column() };
        Diagnostics(vec![Diagnostic::new(&file, at, "", format!("the snapshot is not a JSON array of resources: {e}"))])
    })?;
    let mut text = String::new();
    for doc in &documents {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string_pretty(doc).unwrap_or_default());
        text.push('\n');
    }
    trefoil_model::load_str(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(json: &str) -> Snapshot {
        Snapshot { version: 12, hash: 1, resources_json: json.to_string(), ..Default::default() }
    }

    #[test]
    fn resources_become_documents_with_located_errors() {
        let ok = sources(&snapshot(r#"[{"apiVersion":"trefoil.dev/v1alpha1","kind":"Listener","metadata":{"name":"a"},"spec":{"address":"127.0.0.1:1"}},{"apiVersion":"trefoil.dev/v1alpha1","kind":"Service","metadata":{"name":"web"},"spec":{}}]"#)).unwrap();
        assert_eq!(ok.iter().map(|s| s.resource.name()).collect::<Vec<_>>(), ["a", "web"]);
        let err = sources(&snapshot(r#"[{"apiVersion":"trefoil.dev/v1alpha1","kind":"Listener","metadata":{"name":"a"},"spec":{"address":"127.0.0.1:1","protocol":"smtp"}}]"#)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("snapshot 12:") && text.contains("spec.protocol"), "{text}");
        assert!(sources(&snapshot("{not json")).unwrap_err().to_string().starts_with("snapshot 12:1:"));
        assert!(sources(&snapshot("[]")).unwrap().is_empty());
    }
}
