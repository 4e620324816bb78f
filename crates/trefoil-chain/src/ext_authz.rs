//! The gRPC call-out, compatible with Envoy's external authorization API
//! (`envoy.service.auth.v3.Authorization/Check`): the subset of its messages
//! the proxy sends and reads, as prost structs written by hand. Field numbers
//! and package names follow the Envoy API exactly, so an existing ext_authz
//! service decodes them unchanged; fields left out are ones Trefoil neither
//! sets nor reads (protobuf skips unknown fields).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::call::{deny_status, Call, Verdict};

/// The gRPC service name.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// The path of the one method, `Check`.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Keys of `context_extensions` the proxy sets.
pub const EXT_CNF: &str = "cnf";
pub const EXT_FUNCTION: &str = "function";
pub const EXT_TRACE_ID: &str = "traceId";
/// Set to `response` on a response-phase call.
pub const EXT_PHASE: &str = "phase";
/// The upstream's status, on a response-phase call.
pub const EXT_RESPONSE_STATUS: &str = "response.status";
/// Followed by a lower-case name: an upstream response header, on a response-phase call.
pub const EXT_RESPONSE_HEADER_PREFIX: &str = "response.header.";

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// Free-form context; Trefoil puts the CNF, function and trace id here.
    #[prost(btree_map = "string, string", tag = "10")]
    pub context_extensions: BTreeMap<String, String>,
}

/// `envoy.service.auth.v3.AttributeContext.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    /// Verified identity (e.g. a SPIFFE id), when known.
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `envoy.config.core.v3.Address` (socket addresses only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

/// `envoy.service.auth.v3.AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `envoy.service.auth.v3.AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// Request id; Trefoil sends the trace id.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub method: String,
    /// Lower-case names; repeated headers joined with ",".
    #[prost(btree_map = "string, string", tag = "3")]
    pub headers: BTreeMap<String, String>,
    /// Path and query.
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(string, tag = "6")]
    pub scheme: String,
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// The body when it is UTF-8 text.
    #[prost(string, tag = "11")]
    pub body: String,
    /// The body when it is not.
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
}

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    /// `google.rpc.Status`: code 0 allows, anything else denies.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(oneof = "HttpResponse", tags = "2, 3")]
    pub http_response: Option<HttpResponse>,
}

/// The `http_response` oneof of [`CheckResponse`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HttpResponse {
    #[prost(message, tag = "2")]
    DeniedResponse(DeniedHttpResponse),
    #[prost(message, tag = "3")]
    OkResponse(OkHttpResponse),
}

/// `google.rpc.Status` (without details).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus` (the enum read as its number).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
}

/// `envoy.config.core.v3.HeaderValueOption` (the header only: Trefoil sets, never appends).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    /// Used instead of `value` by newer Envoy-compatible servers.
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

fn peer(addr: Option<SocketAddr>) -> Option<Peer> {
    addr.map(|a| Peer {
        address: Some(Address { socket_address: Some(SocketAddress { address: a.ip().to_string(), port_value: u32::from(a.port()) }) }),
        principal: String::new(),
    })
}

/// The `CheckRequest` for a call; `scheme` and `protocol` describe the client's request.
pub fn check_request(call: &Call<'_>, scheme: &str, protocol: &str) -> CheckRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &call.headers {
        headers
            .entry(name.to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    let (body, raw_body) = match &call.body {
        None => (String::new(), Vec::new()),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => (text.to_string(), Vec::new()),
            Err(_) => (String::new(), b.to_vec()),
        },
    };
    let mut context_extensions: BTreeMap<String, String> =
        [(EXT_CNF, call.cnf), (EXT_FUNCTION, call.function), (EXT_TRACE_ID, call.trace_id)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    // ext_authz has no response fields: the upstream's answer rides in the
    // extensions, and `body` is the response's.
    if let Some(response) = &call.response {
        context_extensions.insert(EXT_PHASE.to_string(), "response".to_string());
        context_extensions.insert(EXT_RESPONSE_STATUS.to_string(), response.status.to_string());
        for (name, value) in &response.headers {
            context_extensions
                .entry(format!("{EXT_RESPONSE_HEADER_PREFIX}{name}"))
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_string());
        }
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(call.source),
            destination: peer(call.destination),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: call.trace_id.to_string(),
                    method: call.method.to_string(),
                    headers,
                    path: call.path.to_string(),
                    host: call.host.to_string(),
                    scheme: scheme.to_string(),
                    protocol: protocol.to_string(),
                    body,
                    raw_body,
                }),
            }),
            context_extensions,
        }),
    }
}

fn header_pairs(options: Vec<HeaderValueOption>) -> Vec<(String, String)> {
    options
        .into_iter()
        .filter_map(|o| o.header)
        .map(|h| {
            let value =
                if h.value.is_empty() && !h.raw_value.is_empty() { String::from_utf8_lossy(&h.raw_value).into_owned() } else { h.value };
            (h.key, value)
        })
        .collect()
}

/// The verdict a `CheckResponse` carries: status code 0 allows.
pub fn verdict(response: CheckResponse) -> Verdict {
    let status = response.status.unwrap_or(RpcStatus { code: 0, message: String::new() });
    if status.code == 0 {
        let (set_headers, remove_headers) = match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => (header_pairs(ok.headers), ok.headers_to_remove),
            _ => (Vec::new(), Vec::new()),
        };
        return Verdict::Allow { set_headers, remove_headers, events: Vec::new() };
    }
    let denied = match response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        _ => DeniedHttpResponse::default(),
    };
    Verdict::Deny {
        status: deny_status(denied.status.and_then(|s| u32::try_from(s.code).ok())),
        reason: if denied.body.is_empty() { status.message } else { denied.body },
        headers: header_pairs(denied.headers),
        events: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    // The expected bytes were produced by the protobuf runtime from Envoy's
    // own .proto definitions (deterministic serialization: map keys sorted),
    // so they pin the field numbers and wire types.
    #[test]
    fn check_requests_encode_as_envoy_does() {
        let call = Call {
            cnf: "edge",
            function: "acl",
            method: "GET",
            path: "/a?b=1",
            host: "web",
            headers: vec![("x-a", "1"), ("x-a", "2")],
            source: Some("127.0.0.1:5000".parse().unwrap()),
            destination: None,
            trace_id: "t1",
            body: Some(bytes::Bytes::from_static(b"hi")),
            response: None,
        };
        let bytes = check_request(&call, "http", "HTTP/1.1").encode_to_vec();
        assert_eq!(hex(&bytes), EXPECTED_REQUEST);
    }

    #[test]
    fn response_phase_calls_carry_the_upstream_answer_in_context_extensions() {
        let call = Call {
            cnf: "edge",
            response: Some(crate::ResponseHead { status: 200, headers: vec![("set-cookie", "a"), ("set-cookie", "b")] }),
            ..Default::default()
        };
        let request = check_request(&call, "http", "HTTP/1.1");
        let ext = &request.attributes.unwrap().context_extensions;
        assert_eq!(ext.get(EXT_PHASE).map(String::as_str), Some("response"));
        assert_eq!(ext.get(EXT_RESPONSE_STATUS).map(String::as_str), Some("200"));
        assert_eq!(ext.get("response.header.set-cookie").map(String::as_str), Some("a,b"));
    }

    #[test]
    fn check_responses_decode_into_verdicts() {
        let ok = CheckResponse::decode(&unhex(OK_RESPONSE)[..]).unwrap();
        assert_eq!(
            verdict(ok),
            Verdict::Allow {
                set_headers: vec![("x-user".into(), "ann".into())],
                remove_headers: vec!["authorization".into()],
                events: vec![]
            }
        );
        let denied = CheckResponse::decode(&unhex(DENIED_RESPONSE)[..]).unwrap();
        assert_eq!(
            verdict(denied),
            Verdict::Deny {
                status: 401,
                reason: "no token".into(),
                headers: vec![("www-authenticate".into(), "Bearer".into())],
                events: vec![]
            }
        );
        // A bare non-OK status denies with Forbidden and the status message.
        let bare = CheckResponse { status: Some(RpcStatus { code: 7, message: "nope".into() }), http_response: None };
        assert!(matches!(verdict(bare), Verdict::Deny { status: 403, ref reason, .. } if reason == "nope"));
    }

    const EXPECTED_REQUEST: &str = "0a7b0a120a100a0e12093132372e302e302e31188827223812360a02743112034745541a0a0a03782d611203312c3222062f613f623d312a037765623204687474705208485454502f312e315a026869520b0a03636e66120465646765520f0a0866756e6374696f6e120361636c520d0a077472616365496412027431";
    const OK_RESPONSE: &str = "0a001a20120f0a0d0a06782d757365721203616e6e2a0d617574686f72697a6174696f6e";
    const DENIED_RESPONSE: &str = "0a020807122d0a03089103121c0a1a0a107777772d61757468656e74696361746512064265617265721a086e6f20746f6b656e";
}
