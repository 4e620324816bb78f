//! The upstream side: which endpoint gets a request ([`balancer`], whose
//! live state is [`endpoint`] and [`health`]) and the connections to it
//! ([`h1`] for plain HTTP/1; here, pooled hyper clients for TLS and HTTP/2).
//!
//! The hyper clients are shared across config snapshots so that keep-alive
//! connections survive reloads.

pub(crate) mod balancer;
pub(crate) mod endpoint;
pub(crate) mod h1;
pub(crate) mod health;

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use trefoil_model::spec::{TlsMode, UpstreamTls};

use crate::tls::{self, TlsError};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every hop of the proxy speaks.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Everything that makes two upstream clients different.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClientKey {
    pub http2: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// TLS origination and the server name to verify.
    pub tls: Option<(UpstreamTls, String)>,
    /// Hash of the TLS files' contents: rotated certificates make a new client.
    pub tls_files: u64,
    /// Mesh TLS towards endpoints that are other proxies' mesh listeners
    /// (`https://` URIs); the rest stay `http://`.
    pub mesh: Option<MeshClient>,
}

/// The mesh's client TLS settings, one per proxy: equal when the same.
#[derive(Clone)]
pub(crate) struct MeshClient(pub Arc<rustls::ClientConfig>);

impl PartialEq for MeshClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClient")
    }
}

/// A hash of the contents of the files a TLS setting names (missing files hash as empty).
pub(crate) fn tls_files_hash(tls: Option<&UpstreamTls>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(tls) = tls {
        for path in [&tls.ca, &tls.certificate, &tls.key].into_iter().flatten() {
            std::fs::read(path).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}

thread_local! {
    /// Which data-plane worker this thread is; `usize::MAX` for control threads.
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as data-plane worker `index`.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// One client per worker thread plus one for control tasks. A client's
/// connections are driven by tasks on the runtime that opened them, so
/// each worker keeping its own pool keeps a request and its upstream
/// connection on one thread, as nginx and HAProxy do.
#[derive(Clone)]
pub(crate) struct ClientSet(Arc<[HttpClient]>);

impl ClientSet {
    /// The client of the calling thread.
    pub(crate) fn current(&self) -> &HttpClient {
        let i = WORKER.with(|w| w.get()).min(self.0.len() - 1);
        &self.0[i]
    }
}

/// Client sets by key; a reload reuses a set (and its pools) whose key is unchanged.
pub(crate) struct ClientCache {
    workers: usize,
    clients: Mutex<Vec<(ClientKey, ClientSet)>>,
}

impl Default for ClientCache {
    fn default() -> Self {
        ClientCache::new(1)
    }
}

impl ClientCache {
    pub(crate) fn new(workers: usize) -> Self {
        ClientCache { workers: workers.max(1), clients: Mutex::default() }
    }

    pub(crate) fn get(&self, key: &ClientKey) -> Result<ClientSet, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = clients.iter().find(|(k, _)| k == key) {
            return Ok(c.clone());
        }
        let set = ClientSet((0..=self.workers).map(|_| build(key)).collect::<Result<Vec<_>, _>>()?.into());
        clients.push((key.clone(), set.clone()));
        Ok(set)
    }

    /// Drops clients no current service uses, closing their idle connections.
    pub(crate) fn retain<'a>(&self, used: impl IntoIterator<Item = &'a ClientKey>) {
        let used: Vec<&ClientKey> = used.into_iter().collect();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|(k, _)| used.contains(&k));
    }
}

fn build(key: &ClientKey) -> Result<HttpClient, TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    let tls_config = match (&key.tls, &key.mesh) {
        (Some((tls, _)), _) if tls.mode != TlsMode::Disable => tls::client_config(tls)?,
        (_, Some(mesh)) => mesh.0.clone(),
        // Never used for `http://` URIs, but the connector type wants one.
        (_, None) => Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    let builder = HttpsConnectorBuilder::new().with_tls_config((*tls_config).clone()).https_or_http();
    let builder = match (&key.tls, &key.mesh) {
        (Some((_, name)), _) => builder.with_server_name_resolver(FixedServerNameResolver::new(tls::server_name(name)?)),
        // SVIDs carry no names: the mesh verifier checks the SPIFFE id, and
        // this name only fills the handshake's SNI.
        (None, Some(_)) => builder.with_server_name_resolver(FixedServerNameResolver::new(tls::server_name("mesh.trefoil.invalid")?)),
        (None, None) => builder,
    };
    let connector = if key.http2 { builder.enable_http2().wrap_connector(http) } else { builder.enable_http1().wrap_connector(http) };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(1024)
        .http2_only(key.http2)
        // The proxy decides about retries itself; a silent retry would skew them.
        .retry_canceled_requests(false)
        .set_host(false);
    if key.http2 {
        client.http2_adaptive_window(true).http2_keep_alive_interval(Duration::from_secs(30)).http2_keep_alive_while_idle(true);
    }
    Ok(client.build(connector))
}

/// Which scheme to use towards an endpoint.
pub(crate) fn scheme(key: &ClientKey) -> &'static str {
    match &key.tls {
        Some((tls, _)) if tls.mode != TlsMode::Disable => "https",
        _ => "http",
    }
}
