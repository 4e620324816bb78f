//! Every reply the proxy makes itself, as one enum: its flag (the
//! `x-trefoil-flag` header and the access log's `flag`), its status, its
//! one-line body and whether sending the same request again may succeed.
//! The flags were string literals written twice at each site (header and
//! log), and the table in `docs/proxy-config.md` a third copy; now a test
//! keeps that table and this enum in step.

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::http::body;
use crate::upstream::ProxyBody;

/// 499 is no standard status, but `from_u16` accepts any three digits.
const CLIENT_GONE: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

static FLAG_HEADER: HeaderName = HeaderName::from_static("x-trefoil-flag");

/// Defines the enum, its list and its flags from one list, so that a kind
/// cannot be added without its flag or be left out of the documentation check.
macro_rules! local_replies {
    ($($kind:ident => $flag:literal,)*) => {
        /// Why the proxy answered a request itself.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum LocalReply {
            $($kind,)*
        }

        impl LocalReply {
            /// Every kind, for the documentation check and for tests.
            #[cfg(test)]
            pub(crate) const ALL: &'static [LocalReply] = &[$(LocalReply::$kind,)*];

            /// The `x-trefoil-flag` value and the access log's `flag`.
            pub(crate) const fn flag(self) -> &'static str {
                match self {
                    $(LocalReply::$kind => $flag,)*
                }
            }
        }
    };
}

local_replies! {
    ConnectUnsupported => "connect_unsupported",
    InvalidHost => "invalid_host",
    MissingHost => "missing_host",
    InvalidPath => "invalid_path",
    EscapedSlash => "escaped_slash",
    NoRoute => "no_route",
    RbacDenied => "rbac_denied",
    RateLimited => "rate_limited",
    FaultAbort => "fault_abort",
    ChainBodyTooLarge => "chain_body_too_large",
    ChainDenied => "chain_denied",
    ChainUnavailable => "chain_unavailable",
    ChainHopFailed => "chain_hop_failed",
    ChainLoop => "chain_loop",
    ChainResumeLate => "chain_resume_late",
    NoBackend => "no_backend",
    RequestBodyTimeout => "request_body_timeout",
    DownstreamReset => "downstream_reset",
    Timeout => "timeout",
    Overflow => "overflow",
    NoHealthyUpstream => "no_healthy_upstream",
    NoOriginalDestination => "no_original_destination",
    ConnectFailure => "connect_failure",
    PerTryTimeout => "per_try_timeout",
    UpstreamReset => "upstream_reset",
    BadRequest => "bad_request",
    BodyConsumed => "body_consumed",
    ListenerRemoved => "listener_removed",
    DownstreamCancelled => "downstream_cancelled",
    DownstreamTimeout => "downstream_timeout",
}

impl LocalReply {
    /// The status sent, unless configuration or a function chose another
    /// (see [`LocalReply::status_is_configured`]).
    pub(crate) const fn status(self) -> StatusCode {
        use LocalReply::*;
        match self {
            ConnectUnsupported => StatusCode::NOT_IMPLEMENTED,
            InvalidHost | MissingHost | InvalidPath | EscapedSlash | DownstreamReset | BadRequest => StatusCode::BAD_REQUEST,
            NoRoute => StatusCode::NOT_FOUND,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ChainDenied | RbacDenied => StatusCode::FORBIDDEN,
            ChainBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ChainLoop => StatusCode::LOOP_DETECTED,
            RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ChainResumeLate | Timeout | PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": recorded, never sent (nobody is left to read it).
            DownstreamCancelled | DownstreamTimeout => CLIENT_GONE,
            ChainHopFailed | UpstreamReset | BodyConsumed => StatusCode::BAD_GATEWAY,
            FaultAbort
            | ChainUnavailable
            | NoBackend
            | Overflow
            | NoHealthyUpstream
            | NoOriginalDestination
            | ConnectFailure
            | ListenerRemoved => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the status comes from the configuration (`rateLimit.status`,
    /// `fault.abort.status`) or from a function's verdict; [`LocalReply::status`]
    /// is then only the fallback. Only the documentation check asks.
    #[cfg(test)]
    pub(crate) const fn status_is_configured(self) -> bool {
        matches!(self, LocalReply::RateLimited | LocalReply::FaultAbort | LocalReply::ChainDenied)
    }

    /// Whether the same request, sent again unchanged, may be answered
    /// otherwise: the cause is load, time or an upstream's state, not the
    /// request or the configuration. Only the documentation check asks: the
    /// retry policy decides on the attempt's outcome, not on this.
    #[cfg(test)]
    pub(crate) const fn retryable(self) -> bool {
        use LocalReply::*;
        matches!(
            self,
            RateLimited
                | ChainUnavailable
                | ChainHopFailed
                | ChainResumeLate
                | Timeout
                | Overflow
                | NoHealthyUpstream
                | ConnectFailure
                | PerTryTimeout
                | UpstreamReset
                | ListenerRemoved
                | DownstreamTimeout
        )
    }

    /// The body when the site has nothing more particular to say.
    pub(crate) const fn text(self) -> &'static str {
        use LocalReply::*;
        match self {
            ConnectUnsupported => "CONNECT is not supported\n",
            InvalidHost => "the request's host is not valid\n",
            MissingHost => "an HTTP/1.1 request needs a Host header\n",
            InvalidPath => "the request path is not valid\n",
            EscapedSlash => "the request path has an escaped slash (%2F or %5C)\n",
            NoRoute => "no route for this request\n",
            RbacDenied => "denied by an authorization policy\n",
            RateLimited => "rate limit exceeded\n",
            FaultAbort => "fault injected\n",
            ChainBodyTooLarge => "request body exceeds what the network function accepts\n",
            ChainDenied => "denied by a network function\n",
            ChainUnavailable => "a network function is unavailable\n",
            ChainHopFailed => "an inline network function failed\n",
            ChainLoop => "request went through inline functions too many times\n",
            ChainResumeLate => "the request came back after its hop was given up\n",
            NoBackend => "route has no backend with weight\n",
            RequestBodyTimeout => "the request body stalled\n",
            DownstreamReset => "request body could not be read\n",
            Timeout => "upstream request timeout\n",
            Overflow => "upstream overflow\n",
            NoHealthyUpstream => "no healthy upstream\n",
            NoOriginalDestination => "the connection has no original destination to forward to\n",
            ConnectFailure => "upstream connect error\n",
            PerTryTimeout => "upstream per-try timeout\n",
            UpstreamReset => "upstream reset the request\n",
            BadRequest => "request cannot be forwarded\n",
            BodyConsumed => "request body was already streamed\n",
            ListenerRemoved => "this listener is shutting down\n",
            DownstreamCancelled => "the client cancelled the request\n",
            DownstreamTimeout => "the client's deadline passed\n",
        }
    }

    /// The reply with this kind's status and body.
    pub(crate) fn reply(self) -> Response<ProxyBody> {
        self.reply_with(self.status(), self.text())
    }

    /// The reply with this kind's status and a body saying more.
    pub(crate) fn reply_text(self, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
        self.reply_with(self.status(), text)
    }

    /// The reply with a status chosen by configuration or a function.
    pub(crate) fn reply_with(self, status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp.headers_mut().insert(FLAG_HEADER.clone(), HeaderValue::from_static(self.flag()));
        resp
    }
}

impl EncodeLabelValue for LocalReply {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.flag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The rows of the local-reply table in `docs/proxy-config.md`: flag -> (status column, retryable column).
    fn documented() -> BTreeMap<String, (String, String)> {
        let doc = include_str!("../../../../docs/proxy-config.md");
        let start = doc.find("### Local replies").expect("docs/proxy-config.md has a \"### Local replies\" section");
        let mut rows = BTreeMap::new();
        for line in doc[start..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 3, "local-reply table row has too few cells: {line}");
            let flag = cells[1].trim_matches('`').to_string();
            assert!(rows.insert(flag.clone(), (cells[0].to_string(), cells[2].to_string())).is_none(), "{flag} documented twice");
        }
        rows
    }

    #[test]
    fn the_documented_table_and_the_enum_agree() {
        let rows = documented();
        for kind in LocalReply::ALL {
            let Some((status, retryable)) = rows.get(kind.flag()) else { panic!("{} is not in docs/proxy-config.md", kind.flag()) };
            let number = status.split(|c: char| !c.is_ascii_digit()).find(|n| n.len() == 3);
            match number {
                Some(n) => assert_eq!(n, kind.status().as_str(), "status of {} in the docs", kind.flag()),
                None => assert!(kind.status_is_configured(), "the docs give {} no status", kind.flag()),
            }
            assert_eq!(retryable, if kind.retryable() { "yes" } else { "no" }, "retryable of {} in the docs", kind.flag());
        }
        for flag in rows.keys() {
            assert!(LocalReply::ALL.iter().any(|k| k.flag() == flag), "docs/proxy-config.md names {flag}, which the proxy never sends");
        }
    }

    #[test]
    fn flags_are_distinct_and_replies_carry_them() {
        let mut flags: Vec<_> = LocalReply::ALL.iter().map(|k| k.flag()).collect();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!(flags.len(), LocalReply::ALL.len());
        let reply = LocalReply::NoRoute.reply();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
        assert_eq!(reply.headers()["x-trefoil-flag"], "no_route");
    }
}
