//! The last phase of every request: one access-log line, one
//! `trefoil_requests_total` sample and one span. The record owns what it
//! writes, so a request whose client cancels it or times out before the
//! response headers (the server then drops the request's work) is still
//! recorded when the record is dropped: status 499 with the flag
//! `downstream_cancelled`, or `downstream_timeout` when the request's
//! `grpc-timeout` had passed. gRPC's interop cases `cancel_after_begin` and
//! `timeout_on_sleeping_server` left no trace before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderName};
use http::{HeaderMap, Method, Response, Uri, Version};

use crate::config::snapshot::ListenerConfig;
use crate::config::state::{ProxyState, TelemetrySinks};
use crate::http::body::Observed;
use crate::http::local_reply::LocalReply;
use crate::http::proxy::Connection;
use crate::telemetry::access_log::{now_rfc3339, AccessRecord};
use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::metrics::{GrpcLabels, Label, LocalReplyLabels, SeriesKey};
use crate::telemetry::otlp::SpanRecord;
use crate::telemetry::trace_context::{hex, TraceContext};
use crate::upstream::ProxyBody;

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The status recorded for a request its client gave up on before the response headers.
const CLIENT_GONE: u16 = LocalReply::DownstreamCancelled.status().as_u16();

/// What the request was routed to and how it went, filled in by the phases.
#[derive(Default)]
pub(crate) struct Outcomes {
    pub(crate) route: Option<Label>,
    pub(crate) service: Option<Label>,
    pub(crate) version: Option<Label>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) attempts: u32,
    /// Why the proxy answered itself, if it did.
    pub(crate) flag: Option<LocalReply>,
    /// The CNF whose chain the request went through.
    pub(crate) cnf: Option<Label>,
    /// The authorization rules that refused or audited the request.
    pub(crate) authz: String,
    /// Where the spans of the chain's steps and the upstream attempts go,
    /// when the request is traced.
    pub(crate) spans: Option<HopSpans>,
}

/// Everything the record phase writes; written once, by [`Record::finish`]
/// or, if the request was abandoned, on drop.
pub(crate) struct Record {
    pub(crate) state: Arc<ProxyState>,
    pub(crate) telemetry: Arc<TelemetrySinks>,
    pub(crate) config_version: u64,
    pub(crate) listener: Arc<ListenerConfig>,
    pub(crate) client: SocketAddr,
    /// Where the client addressed a redirected connection: with `client`,
    /// the 5-tuple the datapath recorded the flow under.
    pub(crate) original_destination: Option<SocketAddr>,
    pub(crate) peer_identity: Option<Arc<str>>,
    pub(crate) trace: TraceContext,
    pub(crate) method: Method,
    /// Only when a log line or a span will be written.
    pub(crate) uri: Option<Uri>,
    pub(crate) http_version: Version,
    pub(crate) host: String,
    pub(crate) started: Instant,
    pub(crate) wall_start: Option<SystemTime>,
    /// The client's deadline, from `grpc-timeout`.
    pub(crate) grpc_timeout: Option<Duration>,
    pub(crate) out: Outcomes,
    /// The gRPC status the response ended with.
    grpc_status: Option<u32>,
    /// The series counted and the time to the response headers, until written.
    counted: Option<(SeriesKey, Duration)>,
    /// Whether the log line and span are out.
    written: bool,
}

/// What is known of a request as it arrives, before its head is read.
pub(crate) struct Arrival {
    pub(crate) started: Instant,
    pub(crate) wall_start: Option<SystemTime>,
    pub(crate) telemetry: Arc<TelemetrySinks>,
    pub(crate) config_version: u64,
}

impl Record {
    /// Starts the record of a request whose head is `parts`.
    pub(crate) fn new(
        state: Arc<ProxyState>,
        arrival: Arrival,
        listener: Arc<ListenerConfig>,
        conn: &Connection,
        trace: TraceContext,
        parts: &http::request::Parts,
        host: String,
    ) -> Self {
        let Arrival { started, wall_start, telemetry, config_version } = arrival;
        // Cheap copies (reference-counted) of what telemetry needs after the request moves on.
        let logged = telemetry.access_log.enabled() || wall_start.is_some();
        let out = Outcomes { spans: HopSpans::new(telemetry.spans.as_ref(), &trace, &state.name), ..Outcomes::default() };
        Record {
            config_version,
            listener,
            client: conn.client,
            original_destination: conn.original_destination,
            peer_identity: conn.peer_identity.clone(),
            trace,
            method: parts.method.clone(),
            uri: logged.then(|| parts.uri.clone()),
            http_version: parts.version,
            host,
            started,
            wall_start,
            grpc_timeout: grpc_timeout(&parts.headers),
            out,
            grpc_status: None,
            counted: None,
            written: false,
            state,
            telemetry,
        }
    }

    /// Records the request as answered with `response`, and returns it.
    /// A gRPC response's status usually comes in its trailers: its log line
    /// and span wait for them (the body carries the record until then).
    pub(crate) fn respond(mut self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        self.count(status);
        let grpc =
            status == 200 && response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            self.write();
            return response;
        }
        match grpc_status(response.headers()) {
            // Trailers-only: the status is in the headers.
            Some(code) => {
                self.grpc_status = Some(code);
                self.write();
                response
            }
            // The body carries the record until the trailers say how the
            // call ended (or it ends or is dropped without them).
            None => {
                let mut record = Some(self);
                response.map(|body| {
                    Observed::wrap(body, move |frame| match frame {
                        Some(Ok(frame)) => {
                            if let Some(trailers) = frame.trailers_ref() {
                                if let Some(mut record) = record.take() {
                                    record.grpc_status = grpc_status(trailers);
                                    record.write();
                                }
                            }
                        }
                        // Dropping the record writes it, without a gRPC status.
                        Some(Err(_)) | None => drop(record.take()),
                    })
                })
            }
        }
    }

    /// Counts the request in `trefoil_requests_total` once its status is known.
    fn count(&mut self, status: u16) {
        let elapsed = self.started.elapsed();
        let out = &mut self.out;
        let key = SeriesKey {
            direction: self.listener.direction.clone(),
            route: out.route.take().unwrap_or_default(),
            service: out.service.take().unwrap_or_default(),
            version: out.version.take().unwrap_or_default(),
            cnf: out.cnf.take().unwrap_or_default(),
            status_code: status,
        };
        let metrics = &self.state.shared.metrics;
        metrics.record_request(self.config_version, &key, elapsed);
        if let Some(flag) = out.flag {
            metrics.local_replies.get_or_create(&LocalReplyLabels { direction: key.direction.clone(), flag }).inc();
        }
        self.counted = Some((key, elapsed));
    }

    /// Writes the access-log line and the span (and counts a gRPC status).
    fn write(&mut self) {
        let Some((key, elapsed)) = self.counted.take() else { return };
        self.written = true;
        let status = key.status_code;
        let out = &self.out;
        let SeriesKey { route, service, version, cnf, .. } = &key;
        if let Some(code) = self.grpc_status {
            let labels = GrpcLabels {
                direction: key.direction.clone(),
                route: route.clone(),
                service: service.clone(),
                version: version.clone(),
                grpc_status: code,
            };
            self.state.shared.metrics.grpc_responses.get_or_create(&labels).inc();
        }
        let path = self.uri.as_ref().map_or("", |u| u.path());
        let trace = &self.trace;
        if self.telemetry.access_log.enabled() {
            let trace_id = trace.trace_id_hex();
            let span_id = hex(&trace.span_id);
            self.telemetry.access_log.write(&AccessRecord {
                time: now_rfc3339(),
                trace_id: &trace_id,
                span_id: &span_id,
                direction: &self.listener.direction,
                listener: &self.listener.name,
                client: self.client.to_string(),
                peer_identity: self.peer_identity.as_deref(),
                protocol: version_name(self.http_version),
                method: self.method.as_str(),
                authority: &self.host,
                path,
                status,
                grpc_status: self.grpc_status,
                route,
                service,
                version,
                cnf,
                upstream: out.upstream.map(|a| a.to_string()),
                attempts: out.attempts,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                flag: out.flag.map_or("", LocalReply::flag),
                authz: &out.authz,
            });
        }
        if let (Some(spans), Some(wall_start), true) = (&self.telemetry.spans, self.wall_start, trace.sampled) {
            let method = &self.method;
            let mut attributes = vec![
                ("http.request.method", method.to_string()),
                ("url.path", path.to_string()),
                ("server.address", self.host.clone()),
                ("http.response.status_code", status.to_string()),
                ("trefoil.direction", self.listener.direction.to_string()),
                ("trefoil.route", route.to_string()),
                ("trefoil.service", service.to_string()),
                ("trefoil.version", version.to_string()),
                ("trefoil.cnf", cnf.to_string()),
                ("trefoil.upstream", out.upstream.map(|a| a.to_string()).unwrap_or_default()),
                ("trefoil.attempts", out.attempts.to_string()),
                ("trefoil.proxy", self.state.name.clone()),
                ("client.address", self.client.ip().to_string()),
                ("client.port", self.client.port().to_string()),
            ];
            attributes.extend(self.original_destination.map(|to| ("trefoil.original_destination", to.to_string())));
            attributes.extend(self.grpc_status.map(|code| (GRPC_STATUS_ATTRIBUTE, code.to_string())));
            spans.send(SpanRecord {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_span_id: trace.parent_span_id,
                name: format!("{method} {route}"),
                start: wall_start,
                end: wall_start + elapsed,
                error: failed(status, self.grpc_status),
                attributes,
                extra_attributes: Vec::new(),
                events: Vec::new(),
            });
        }
    }

    /// Why a request was abandoned `elapsed` after it arrived: its
    /// `grpc-timeout` passed, or the client cancelled it. The client's clock
    /// started before the proxy's, so its deadline falls a little before
    /// `grpc-timeout` by the proxy's: a tenth of it is allowed for.
    fn abandoned(&self, elapsed: Duration) -> LocalReply {
        match self.grpc_timeout {
            Some(limit) if elapsed + limit / 10 >= limit => LocalReply::DownstreamTimeout,
            _ => LocalReply::DownstreamCancelled,
        }
    }
}

impl Drop for Record {
    /// A request dropped before its status was known was abandoned by its
    /// client; one dropped before its gRPC trailers is written without them.
    fn drop(&mut self) {
        if !self.written && self.counted.is_none() {
            self.out.flag = Some(self.abandoned(self.started.elapsed()));
            self.count(CLIENT_GONE);
        }
        self.write();
    }
}

/// Whether a span shows an error: a 5xx, a client that gave up, or a gRPC
/// status other than OK (gRPC errors travel in an HTTP 200).
fn failed(status: u16, grpc_status: Option<u32>) -> bool {
    status >= 500 || status == CLIENT_GONE || grpc_status.is_some_and(|code| code != 0)
}

/// The span attribute OpenTelemetry's RPC conventions name for a gRPC status.
const GRPC_STATUS_ATTRIBUTE: &str = "rpc.grpc.status_code";

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` of headers or trailers, if they carry a valid one.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes()).ok()?.parse().ok()
}

/// The deadline a gRPC client sent (`grpc-timeout`: up to 8 digits and a
/// unit); `None` without one or when it is malformed.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(&GRPC_TIMEOUT, http::HeaderValue::from_static(value));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_errors_are_span_errors_though_sent_as_200() {
        assert!(!failed(200, Some(0)));
        assert!(failed(200, Some(5)));
        assert!(!failed(200, None));
        assert!(failed(503, None));
        assert!(failed(CLIENT_GONE, None));
        let mut trailers = HeaderMap::new();
        trailers.insert(&GRPC_STATUS, http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&trailers), Some(14));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("1S"), Some(Duration::from_secs(1)));
        assert_eq!(timeout_of("999m"), Some(Duration::from_millis(999)));
        assert_eq!(timeout_of("5u"), Some(Duration::from_micros(5)));
        assert_eq!(timeout_of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
    }
}
