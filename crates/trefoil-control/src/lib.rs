//! Trefoil's control plane: the embedded crash-safe resource store, the REST
//! API over it, the config stream that sends each proxy its snapshot, the
//! rollout controller, the datapath rules' expiry, the trace collector and
//! the datapath's flow records, with their metrics.

pub mod api;
pub mod auth;
pub mod compile;
pub mod config_stream;
pub mod datapath_api;
pub mod datapath_expiry;
pub mod datapath_tables;
pub mod flows;
pub mod graph;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod proxies;
pub mod rollout;
pub mod server;
pub mod status;
pub mod store;
pub mod traces;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the control plane keeps its data and listens.
pub struct ControlOptions {
    /// Directory of the store file (`store.db`), the admin token and the mesh CA.
    pub data_dir: PathBuf,
    /// Where the resources are: the embedded file in `data_dir`, or etcd.
    pub store: store::Location,
    /// REST API address.
    pub listen: SocketAddr,
    /// Config stream (gRPC) address, where proxies connect.
    pub grpc_listen: SocketAddr,
    /// What one REST client may cost.
    pub limits: server::Limits,
    /// Lets requests without a token in as admin; refused unless `listen` is loopback.
    pub insecure_local: bool,
    /// The mesh CA's trust domain and the lifetime of the SVIDs it issues.
    pub identity: IdentityOptions,
    /// Serves the config stream without TLS and takes each Hello's name as
    /// said, as before decision 0022: for tests of one process on loopback.
    pub plaintext_stream: bool,
}

/// How the control plane's CA issues proxy identities.
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// `trefoil.local` by default.
    pub trust_domain: identity::TrustDomain,
    /// How long an issued SVID is valid; proxies renew at two thirds of it.
    pub svid_lifetime: Duration,
    /// A CA the operator provides from files, in place of a generated root.
    pub operator_ca: Option<identity::OperatorCa>,
    /// An external CA behind the operator's command, in place of either.
    pub external_ca: Option<identity::ExternalCa>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            trust_domain: identity::TrustDomain::default(),
            svid_lifetime: identity::DEFAULT_LIFETIME,
            operator_ca: None,
            external_ca: None,
        }
    }
}

/// The store file in a data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.db")
}

/// The config stream's default address.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7071";

/// How long open config streams get to close at shutdown.
const STREAM_CLOSE_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_beyond_loopback_are_warned_about() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(exposure_warning(at("127.0.0.1:7070"), at("[::1]:7071"), true), None);
        assert_eq!(exposure_warning(at("127.0.0.2:7070"), at("[::ffff:127.0.0.1]:7071"), true), None);
        let both = exposure_warning(at("0.0.0.0:7070"), at("10.1.2.3:7071"), true).unwrap();
        assert!(
            both.contains("the REST API's span intake on 0.0.0.0:7070 and the plaintext config stream on 10.1.2.3:7071")
                && both.contains("WITHOUT AUTHENTICATION"),
            "{both}"
        );
        // Over TLS the config stream authenticates its proxies.
        assert_eq!(exposure_warning(at("127.0.0.1:7070"), at("[::]:7071"), false), None);
        let one = exposure_warning(at("127.0.0.1:7070"), at("[::]:7071"), true).unwrap();
        assert!(one.starts_with("the plaintext config stream on [::]:7071 listen"), "{one}");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the mesh CA: {0}")]
    Authority(#[from] identity::keep::KeepError),
    #[error("the operator's CA: {0}")]
    OperatorCa(#[from] identity::OperatorCaError),
    #[error("--svid-lifetime {0:?} is outside 5 seconds to 30 days")]
    Lifetime(Duration),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("config stream server: {0}")]
    Grpc(#[from] trefoil_wire::TransportError),
    #[error(transparent)]
    NotLocal(#[from] auth::NotLocal),
    #[error("the config stream's TLS: {0}")]
    StreamTls(String),
    #[error("--insecure-plaintext-stream is refused unless --grpc-listen is a loopback address (it is {0})")]
    PlaintextNotLocal(SocketAddr),
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControlError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ControlError::Bind { addr, source })
}

/// The warning owed when something unauthenticated listens beyond
/// loopback: the OTLP span intake on the REST address (open by decision
/// 0016), and the config stream when served in plaintext.
pub fn exposure_warning(listen: SocketAddr, grpc_listen: SocketAddr, plaintext_stream: bool) -> Option<String> {
    let stream = plaintext_stream.then_some(("the plaintext config stream", grpc_listen));
    let exposed: Vec<String> = [Some(("the REST API's span intake", listen)), stream]
        .into_iter()
        .flatten()
        .filter(|(_, addr)| !addr.ip().to_canonical().is_loopback())
        .map(|(what, addr)| format!("{what} on {addr}"))
        .collect();
    if exposed.is_empty() {
        return None;
    }
    Some(format!(
        "{} listen beyond loopback WITHOUT AUTHENTICATION: anyone who can reach them can send spans{}; \
         keep them on loopback, or behind a firewall or an authenticating proxy",
        exposed.join(" and "),
        if plaintext_stream { " and pose as any proxy" } else { "" }
    ))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the trust bundle proxies are sent (and its file) the one in
/// force: at each rotation, and when an overlap ends.
async fn publish_bundle(issuer: Arc<identity::Issuer>, proxies: Arc<proxies::Proxies>, data_dir: PathBuf, stop: watch::Receiver<bool>) {
    let mut rotations = issuer.subscribe();
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let bundle = issuer.trust_bundle();
        if proxies.set_trust_bundle(&bundle) {
            let roots = bundle.matches("-----BEGIN CERTIFICATE-----").count();
            tracing::info!(roots, "the trust bundle changed; every proxy gets it with its snapshot");
            if let Err(e) = identity::keep::write_bundle(&data_dir, &issuer.trust_domain(), &bundle) {
                tracing::error!(error = %e, "cannot write the trust bundle file");
            }
        }
        let now = std::time::SystemTime::now();
        // Just past the end of the overlap: the bundle then leaves the old root out.
        let wait = issuer.next_change(now).map(|at| at.duration_since(now).unwrap_or_default() + Duration::from_millis(20));
        tokio::select! {
            changed = rotations.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            _ = &mut stop => return,
        }
    }
}

/// Runs `controller` while this process leads (always, with the embedded
/// store), stopping it when leadership moves elsewhere.
async fn leader_only<F, Fut>(mut leader: watch::Receiver<store::etcd::Leader>, what: &'static str, controller: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        if leader.wait_for(|l| l.me).await.is_err() {
            return;
        }
        tracing::info!("{what}: running here, on the leader");
        let task = tokio::spawn(controller());
        if leader.wait_for(|l| !l.me).await.is_err() {
            // Leadership can no longer change (the embedded store's is fixed
            // for the process's life): the controller runs to the end.
            let _ = task.await;
            return;
        }
        tracing::info!("{what}: stopped here, no longer the leader");
        task.abort();
    }
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(options: ControlOptions, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ControlError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ControlError::DataDir { path: options.data_dir.clone(), source })?;
    let store = Arc::new(store::Store::open_at(&options.store, &options.data_dir)?);
    let auth = Arc::new(auth::Auth::new(store.clone(), options.insecure_local, options.listen)?);
    auth.bootstrap(&options.data_dir)?;
    let lifetime = options.identity.svid_lifetime;
    if !(identity::MIN_LIFETIME..=identity::MAX_LIFETIME).contains(&lifetime) {
        return Err(ControlError::Lifetime(lifetime));
    }
    let now = std::time::SystemTime::now();
    let trust_domain = options.identity.trust_domain.clone();
    let tokens = identity::join::JoinTokens::new(&options.data_dir);
    let issuer = match (&options.identity.operator_ca, &options.identity.external_ca) {
        (Some(_), Some(_)) => return Err(ControlError::OperatorCa(identity::OperatorCaError::both())),
        (_, Some(external)) => identity::Issuer::new(identity::external::load(external, trust_domain.clone())?, tokens, lifetime),
        (Some(files), None) => identity::Issuer::new(identity::operator::load(files, trust_domain.clone(), now)?, tokens, lifetime),
        (None, None) => {
            let authority = identity::keep::load_or_create(&options.data_dir, trust_domain.clone(), now)?;
            let retiring = identity::keep::load_retiring(&options.data_dir, &trust_domain, now)?;
            identity::Issuer::kept(authority, retiring, options.data_dir.clone(), tokens, lifetime)
        }
    };
    let issuer = Arc::new(issuer);
    identity::keep::write_bundle(&options.data_dir, &trust_domain, &issuer.trust_bundle())?;
    if options.plaintext_stream && !options.grpc_listen.ip().to_canonical().is_loopback() {
        return Err(ControlError::PlaintextNotLocal(options.grpc_listen));
    }
    // Both sockets first: a control plane that cannot serve either does not start.
    let rest = bind(options.listen).await?;
    let grpc = bind(options.grpc_listen).await?;
    // The bound addresses, not the requested ones: port 0 picks a free port.
    let local = |l: &tokio::net::TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    tracing::info!(address = %local(&rest, options.listen), grpc = %local(&grpc, options.grpc_listen), data = %options.data_dir.display(), revision = store.revision(), "control plane listening");
    if let Some(warning) = exposure_warning(options.listen, options.grpc_listen, options.plaintext_stream) {
        tracing::warn!("{warning}");
    }
    if options.insecure_local {
        tracing::warn!("--insecure-local: requests without a token are served as admin; anyone on this machine can rewrite the mesh");
    }

    let proxies = Arc::new(proxies::Proxies::default());
    let (stop, stop_rx) = watch::channel(false);
    let closing = proxies.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
        // Streams never end on their own: end ours so the gRPC server can finish.
        closing.close_all();
    });
    // Proxies reach the collector at the REST address; a wildcard listen
    // address is reached over loopback (proxies elsewhere configure tracing).
    let mut collector_addr = local(&rest, options.listen);
    match collector_addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => collector_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => collector_addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    let compiler = Arc::new(config_stream::Compiler::new(store.clone(), proxies.clone(), Some(format!("http://{collector_addr}"))));
    let distributor = tokio::spawn(config_stream::distribute(compiler.clone()));
    proxies.set_trust_bundle(&issuer.trust_bundle());
    tokio::spawn(publish_bundle(issuer.clone(), proxies.clone(), options.data_dir.clone(), stop_rx.clone()));
    let stream_tls = match options.plaintext_stream {
        true => {
            tracing::warn!("--insecure-plaintext-stream: the config stream is plaintext and takes each proxy's name as said");
            None
        }
        false => {
            Some(identity::stream_tls::server_config(issuer.clone(), local(&grpc, options.grpc_listen)).map_err(ControlError::StreamTls)?)
        }
    };
    let ca_api = issuer.clone();
    let service = config_stream::ConfigStreamService::new(compiler.clone(), issuer, auth.clone());
    // Named by the REST address it serves, which is what an operator reaches it by.
    let me = local(&rest, options.listen).to_string();
    let leader = store.elect(me.clone());
    let (controlled, watched) = (store.clone(), proxies.clone());
    let rollouts = tokio::spawn(leader_only(leader.clone(), "rollouts", move || rollout::run(controlled.clone(), watched.clone())));
    let controlled = store.clone();
    let expiry = tokio::spawn(leader_only(leader.clone(), "datapath rule expiry", move || datapath_expiry::run(controlled.clone())));
    let mut registry = prometheus_client::registry::Registry::default();
    let flows = Arc::new(flows::FlowStore::new(flows::Caps::default(), flows::metrics::FlowMetrics::register(&mut registry)));
    let datapath = datapath_api::DatapathService::new(store.clone(), flows.clone(), auth.clone());
    let grpc = match stream_tls {
        None => tokio::spawn(trefoil_wire::serve_with_datapath(grpc, service, datapath, stopped(stop_rx.clone()))),
        Some(tls) => tokio::spawn(trefoil_wire::serve_with_datapath_tls(
            grpc,
            tls,
            service.authenticating(),
            datapath.authenticating(),
            stopped(stop_rx.clone()),
        )),
    };
    let live = Arc::new(live::Live::new(live::LiveLimits::default()));
    let feed = tokio::spawn(live::run(live.clone(), store.clone(), proxies.clone()));
    // Open portal tabs must not hold the server past shutdown.
    let closing = (live.clone(), stop_rx.clone());
    tokio::spawn(async move {
        stopped(closing.1).await;
        closing.0.close();
    });
    let app = api::router_with_applied(store.clone(), Some(compiler))
        .merge(traces::api::router(Arc::new(traces::TraceStore::default()), flows.clone()))
        .merge(flows::api::router(flows))
        .merge(metrics::router(Arc::new(registry)))
        .merge(rollout::actions::router(store.clone()))
        .merge(live::router(live.clone()))
        .merge(live::graph_router(store.clone(), live))
        .merge(status::router(store, proxies))
        .merge(identity::api::router(ca_api))
        .merge(status::control_plane_router(status::ControlPlane { me, store: options.store.clone(), leader }))
        .merge(auth::router(auth.clone()))
        .layer(axum::middleware::from_fn_with_state(auth, auth::authenticate))
        // The portal's pages and script are public; what they show comes from the API, with a token.
        .merge(trefoil_portal::router())
        .layer(axum::middleware::map_response(api::rescue));
    server::serve(rest, app, options.limits, stopped(stop_rx)).await;
    distributor.abort();
    feed.abort();
    rollouts.abort();
    expiry.abort();
    match tokio::time::timeout(STREAM_CLOSE_GRACE, grpc).await {
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(_) => {}
        Err(_) => tracing::warn!("config streams did not close in time"),
    }
    Ok(())
}
