//! A call as a function sees it: the protocol's `JsonCall`, decoded once into
//! owned values (the body back to bytes), so deciding code never deals with
//! the wire's text-or-base64 split.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use bytes::Bytes;
use trefoil_chain::json::JsonCall;

/// Why a call could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid call: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid bodyBase64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// One request the proxy asks about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    pub cnf: String,
    pub function: String,
    pub method: String,
    /// Path with query, as the client sent it.
    pub path: String,
    pub host: String,
    /// Lower-case names; repeated headers were joined with ", " by the proxy.
    pub headers: Vec<(String, String)>,
    pub source: Option<SocketAddr>,
    pub trace_id: String,
    /// `None` when the function's NetworkFunction does not use `sendBody`.
    /// On the response phase, the response's body.
    pub body: Option<Bytes>,
    /// Set on the response phase: the upstream's answer.
    pub response: Option<Response>,
}

/// The upstream's status and headers, on a response-phase call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Lower-case names; repeated headers joined.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Decodes the JSON body of a call-out.
    pub fn decode(json: &[u8]) -> Result<Self, CallError> {
        let call: JsonCall<'_> = serde_json::from_slice(json)?;
        let body = match (call.body, call.body_base64) {
            (Some(text), _) => Some(Bytes::from(text)),
            (None, Some(b64)) => Some(Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64)?)),
            (None, None) => None,
        };
        Ok(Request {
            cnf: call.cnf.into_owned(),
            function: call.function.into_owned(),
            method: call.method.into_owned(),
            path: call.path.into_owned(),
            host: call.host.into_owned(),
            headers: call.headers.into_iter().map(|(k, v)| (k.into_owned(), v)).collect(),
            // An unparsable source is treated as unknown rather than refusing the call.
            source: call.source.and_then(|s| s.parse().ok()),
            trace_id: call.trace_id.into_owned(),
            body,
            response: call.response.map(|r| Response { status: r.status, headers: r.headers.into_iter().collect() }),
        })
    }

    /// `request` or `response`: which half of the exchange the call is about.
    pub fn phase(&self) -> &'static str {
        if self.response.is_some() {
            "response"
        } else {
            "request"
        }
    }

    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    /// The value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The client's address without its port.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.source.map(|s| s.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trefoil_chain::Call;

    fn encoded(body: Option<&'static [u8]>) -> Vec<u8> {
        trefoil_chain::json::encode(&Call {
            cnf: "edge",
            function: "acl",
            method: "POST",
            path: "/up/load?x=1",
            host: "web.local",
            headers: vec![("x-a", "1"), ("x-a", "2")],
            source: Some("10.1.2.3:4000".parse().unwrap()),
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            body: body.map(Bytes::from_static),
            ..Default::default()
        })
    }

    #[test]
    fn decodes_what_the_proxy_encodes_with_text_and_binary_bodies() {
        let r = Request::decode(&encoded(Some(b"hello"))).unwrap();
        assert_eq!((r.cnf.as_str(), r.function.as_str(), r.method.as_str()), ("edge", "acl", "POST"));
        assert_eq!(r.path_only(), "/up/load");
        assert_eq!(r.header("x-a"), Some("1, 2"));
        assert_eq!(r.client_ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(r.body.as_deref(), Some(&b"hello"[..]));
        let r = Request::decode(&encoded(Some(&[0xff, 0, 1]))).unwrap();
        assert_eq!(r.body.as_deref(), Some(&[0xff, 0, 1][..]));
        assert_eq!(Request::decode(&encoded(None)).unwrap().body, None);
        assert!(Request::decode(b"{}").is_err());
        // Escaped strings decode too (they cannot be borrowed from the input).
        let mut json = String::from_utf8(encoded(None)).unwrap();
        json = json.replace("/up/load?x=1", "/a\\\"b\\\\c");
        assert_eq!(Request::decode(json.as_bytes()).unwrap().path, "/a\"b\\c");
    }
}
