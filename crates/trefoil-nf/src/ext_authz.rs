//! The functions over Envoy's ext_authz gRPC API as well: the same decision
//! code, reached through a `CheckRequest` and answered with a
//! `CheckResponse` (the messages of `trefoil-chain`). gRPC framing is done
//! here by hand (one unary method does not need a gRPC framework): a message
//! is a compression flag byte, a 4-byte big-endian length and the protobuf
//! bytes; the status goes in the trailers.

use bytes::{BufMut, Bytes, BytesMut};
use trefoil_chain::ext_authz::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse, RpcStatus,
    EXT_CNF, EXT_FUNCTION, EXT_PHASE, EXT_RESPONSE_HEADER_PREFIX, EXT_RESPONSE_STATUS, EXT_TRACE_ID,
};
use trefoil_chain::json::JsonVerdict;

use crate::request::Request;

/// gRPC status codes used here.
pub const GRPC_OK: i32 = 0;
pub const GRPC_PERMISSION_DENIED: i32 = 7;
pub const GRPC_UNIMPLEMENTED: i32 = 12;
pub const GRPC_INVALID_ARGUMENT: i32 = 3;
pub const GRPC_UNAVAILABLE: i32 = 14;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC message shorter than its 5-byte prefix")]
    Short,
    #[error("gRPC message length {declared} but {actual} bytes follow")]
    Length { declared: usize, actual: usize },
    #[error("compressed gRPC messages are not supported")]
    Compressed,
    #[error("invalid CheckRequest: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl GrpcError {
    pub fn code(&self) -> i32 {
        match self {
            GrpcError::Compressed => GRPC_UNIMPLEMENTED,
            _ => GRPC_INVALID_ARGUMENT,
        }
    }
}

/// The one message of a unary request body.
pub fn unframe(body: &[u8]) -> Result<&[u8], GrpcError> {
    let (prefix, rest) = body.split_at_checked(5).ok_or(GrpcError::Short)?;
    if prefix[0] != 0 {
        return Err(GrpcError::Compressed);
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared != rest.len() {
        return Err(GrpcError::Length { declared, actual: rest.len() });
    }
    Ok(rest)
}

/// `message` with its gRPC prefix (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    // Messages here are small verdicts, far below 4 GiB.
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Decodes a framed `CheckRequest` into the call the functions decide on.
pub fn decode_check(body: &[u8]) -> Result<Request, GrpcError> {
    let check: CheckRequest = prost::Message::decode(unframe(body)?)?;
    Ok(request_from_check(check))
}

/// What a `CheckRequest` says, as a [`Request`]. The CNF, function and trace
/// id come from `context_extensions` (the trace id falls back to the request id).
pub fn request_from_check(check: CheckRequest) -> Request {
    let attributes = check.attributes.unwrap_or_default();
    let mut ext = attributes.context_extensions;
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let source = attributes.source.and_then(|p| p.address).and_then(|a| a.socket_address).and_then(|s| {
        let ip: std::net::IpAddr = s.address.parse().ok()?;
        Some(std::net::SocketAddr::new(ip, u16::try_from(s.port_value).ok()?))
    });
    let body = if !http.raw_body.is_empty() {
        Some(Bytes::from(http.raw_body))
    } else if !http.body.is_empty() {
        Some(Bytes::from(http.body))
    } else {
        // ext_authz cannot tell "no body sent" from "empty body"; empty is the safe reading.
        Some(Bytes::new())
    };
    let response = (ext.get(EXT_PHASE).map(String::as_str) == Some("response")).then(|| crate::request::Response {
        status: ext.get(EXT_RESPONSE_STATUS).and_then(|s| s.parse().ok()).unwrap_or_default(),
        headers: ext
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(EXT_RESPONSE_HEADER_PREFIX).map(|name| (name.to_string(), v.clone())))
            .collect(),
    });
    Request {
        response,
        cnf: ext.remove(EXT_CNF).unwrap_or_default(),
        function: ext.remove(EXT_FUNCTION).unwrap_or_default(),
        trace_id: ext.remove(EXT_TRACE_ID).unwrap_or(http.id),
        method: http.method,
        path: http.path,
        host: http.host,
        headers: http.headers.into_iter().collect(),
        source,
        body,
    }
}

fn header_options(headers: &std::collections::BTreeMap<String, String>) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(k, v)| HeaderValueOption { header: Some(HeaderValue { key: k.clone(), value: v.clone(), raw_value: Vec::new() }) })
        .collect()
}

/// A verdict as a `CheckResponse`. Events have no place in ext_authz and are dropped.
pub fn check_response(verdict: &JsonVerdict) -> CheckResponse {
    if verdict.verdict == "allow" {
        return CheckResponse {
            status: Some(RpcStatus { code: GRPC_OK, message: String::new() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: header_options(&verdict.set_headers),
                headers_to_remove: verdict.remove_headers.clone(),
            })),
        };
    }
    let reason = verdict.reason.clone().unwrap_or_default();
    CheckResponse {
        status: Some(RpcStatus { code: GRPC_PERMISSION_DENIED, message: reason.trim_end().to_string() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: verdict.status.and_then(|s| i32::try_from(s).ok()).unwrap_or(403) }),
            headers: header_options(&verdict.set_headers),
            body: reason,
        })),
    }
}

/// The framed `CheckResponse` for a verdict.
pub fn encode_check_response(verdict: &JsonVerdict) -> Bytes {
    frame(&prost::Message::encode_to_vec(&check_response(verdict)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict;
    use std::collections::BTreeMap;
    use trefoil_chain::{Call, Verdict};

    #[test]
    fn what_the_proxy_sends_decodes_to_the_same_request_as_the_json_call() {
        let call = Call {
            cnf: "edge",
            function: "acl",
            method: "POST",
            path: "/a?b=1",
            host: "web.local",
            headers: vec![("x-a", "1")],
            source: Some("10.0.0.7:5000".parse().unwrap()),
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            body: Some(Bytes::from_static(&[0xff, 1])),
            ..Default::default()
        };
        let wire = frame(&prost::Message::encode_to_vec(&trefoil_chain::ext_authz::check_request(&call, "http", "HTTP/1.1")));
        let from_grpc = decode_check(&wire).unwrap();
        let from_json = Request::decode(&trefoil_chain::json::encode(&call)).unwrap();
        assert_eq!(from_grpc, from_json);
        assert_eq!(from_grpc.phase(), "request");
        // A response-phase call: the upstream's answer reads the same from both encodings.
        let call =
            Call { response: Some(trefoil_chain::ResponseHead { status: 201, headers: vec![("content-type", "text/plain")] }), ..call };
        let wire = frame(&prost::Message::encode_to_vec(&trefoil_chain::ext_authz::check_request(&call, "http", "HTTP/1.1")));
        let from_grpc = decode_check(&wire).unwrap();
        assert_eq!(from_grpc, Request::decode(&trefoil_chain::json::encode(&call)).unwrap());
        assert_eq!(from_grpc.phase(), "response");
        assert_eq!(from_grpc.response.unwrap().headers, vec![("content-type".to_string(), "text/plain".to_string())]);
    }

    #[test]
    fn verdicts_read_back_as_the_proxy_reads_them() {
        let mut allow = verdict::allow(vec![verdict::event("seen", serde_json::Value::Null)]);
        allow.set_headers = BTreeMap::from([("x-user".to_string(), "ann".to_string())]);
        allow.remove_headers = vec!["authorization".into()];
        let read = |v: &JsonVerdict| {
            let wire = encode_check_response(v);
            trefoil_chain::ext_authz::verdict(prost::Message::decode(unframe(&wire).unwrap()).unwrap())
        };
        assert_eq!(
            read(&allow),
            Verdict::Allow {
                set_headers: vec![("x-user".into(), "ann".into())],
                remove_headers: vec!["authorization".into()],
                events: vec![]
            }
        );
        let deny = verdict::deny_with_headers(429, "slow down\n", BTreeMap::from([("retry-after".to_string(), "2".to_string())]), vec![]);
        assert_eq!(
            read(&deny),
            Verdict::Deny { status: 429, reason: "slow down\n".into(), headers: vec![("retry-after".into(), "2".into())], events: vec![] }
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(matches!(unframe(b"\0\0\0"), Err(GrpcError::Short)));
        assert!(matches!(unframe(b"\x01\0\0\0\0"), Err(GrpcError::Compressed)));
        assert!(matches!(unframe(b"\0\0\0\0\x05ab"), Err(GrpcError::Length { declared: 5, actual: 2 })));
        assert_eq!(unframe(&frame(b"abc")).unwrap(), b"abc");
    }
}
