//! The proxy's live state: the snapshot in force and the telemetry sinks.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use trefoil_model::spec::{ProxySpec, TlsMode, TracingSpec, UpstreamTls};

use crate::config::snapshot::{Shared, Snapshot};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::otlp::{self, SpanSink};
use crate::upstream::ClientKey;

/// Sinks derived from the `Proxy` settings.
pub(crate) struct TelemetrySinks {
    pub access_log: AccessLog,
    pub spans: Option<SpanSink>,
    pub sampling_percent: f64,
    /// The settings these sinks were built from, to rebuild only on change.
    built_from: (String, Option<TracingSpec>),
}

impl TelemetrySinks {
    pub(crate) fn build(settings: &ProxySpec, proxy_name: &str, shared: &Shared) -> anyhow::Result<Self> {
        let access_log = AccessLog::open(&settings.access_log, shared.metrics.access_log_dropped.clone())
            .map_err(|e| anyhow::anyhow!("cannot open access log {:?}: {e}", settings.access_log))?;
        let spans = match &settings.tracing {
            Some(t) => {
                let https = t.otlp_endpoint.starts_with("https://");
                let host = t.otlp_endpoint.split('/').nth(2).unwrap_or("").split(':').next().unwrap_or("").to_string();
                let key = ClientKey {
                    http2: false,
                    connect_timeout: std::time::Duration::from_secs(5),
                    idle_timeout: std::time::Duration::from_secs(60),
                    tls: https.then_some((UpstreamTls { mode: TlsMode::Simple, ca: None, certificate: None, key: None, sni: None }, host)),
                    tls_files: 0,
                    mesh: None,
                };
                let client = shared.clients.get(&key)?.current().clone();
                Some(otlp::start(
                    &t.otlp_endpoint,
                    t.service_name.clone().unwrap_or_else(|| proxy_name.to_string()),
                    client,
                    shared.metrics.spans_dropped.clone(),
                ))
            }
            None => None,
        };
        Ok(TelemetrySinks {
            access_log,
            spans,
            sampling_percent: settings.tracing.as_ref().map(|t| t.sampling_percent).unwrap_or(100.0),
            built_from: (settings.access_log.clone(), settings.tracing.clone()),
        })
    }

    pub(crate) fn matches(&self, settings: &ProxySpec) -> bool {
        self.built_from.0 == settings.access_log && self.built_from.1 == settings.tracing
    }
}

pub(crate) struct ProxyState {
    pub name: String,
    pub snapshot: ArcSwap<Snapshot>,
    pub shared: Arc<Shared>,
    pub telemetry: ArcSwap<TelemetrySinks>,
    /// True once every listener is bound.
    pub ready: AtomicBool,
}
