//! The HTTP/JSON call-out: the proxy POSTs a [`JsonCall`] and the function
//! answers with a [`JsonVerdict`]. Header maps join repeated headers with
//! ", " (RFC 9110 §5.3), as ext_authz does.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::call::{deny_status, Call, Event, Verdict};
use crate::DecodeError;

/// The JSON document a function receives. Text fields are `Cow` so a
/// function can decode a call without copying, and still decode one whose
/// strings carry JSON escapes (a path may hold `"` or `\`), which cannot be
/// borrowed from the input.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JsonCall<'a> {
    #[serde(borrow)]
    pub cnf: Cow<'a, str>,
    #[serde(borrow)]
    pub function: Cow<'a, str>,
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    #[serde(borrow)]
    pub headers: BTreeMap<Cow<'a, str>, String>,
    /// The client's `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(borrow)]
    pub trace_id: Cow<'a, str>,
    /// The body, when asked for and valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body, when asked for and not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Present on the response phase only: the upstream's answer (`body` is then the response's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<JsonResponse>,
}

/// The upstream's status and headers, for a response-phase call.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JsonResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
}

/// Repeated headers joined with ", " (RFC 9110 §5.3).
fn joined<'a, K: From<&'a str> + Ord>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<K, String> {
    let mut headers: BTreeMap<K, String> = BTreeMap::new();
    for (name, value) in pairs {
        headers
            .entry(K::from(*name))
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    headers
}

/// Encodes a call as the JSON body of the POST.
pub fn encode(call: &Call<'_>) -> Vec<u8> {
    let headers: BTreeMap<Cow<'_, str>, String> = joined(&call.headers);
    let (body, body_base64) = match &call.body {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(b))),
        },
    };
    let doc = JsonCall {
        cnf: call.cnf.into(),
        function: call.function.into(),
        method: call.method.into(),
        path: call.path.into(),
        host: call.host.into(),
        headers,
        source: call.source.map(|a| a.to_string()),
        trace_id: call.trace_id.into(),
        body,
        body_base64,
        response: call.response.as_ref().map(|r| JsonResponse { status: r.status, headers: joined(&r.headers) }),
    };
    // Serializing plain strings and maps cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The JSON document a function answers with.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JsonVerdict {
    /// `allow` or `deny`.
    pub verdict: String,
    /// Status of a deny (default 403).
    #[serde(default)]
    pub status: Option<u32>,
    /// Body of a deny.
    #[serde(default)]
    pub reason: Option<String>,
    /// On allow: headers set on the request going upstream; on deny: on the refusal.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// On allow: headers removed from the request going upstream.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// Decodes a function's answer.
pub fn decode(body: &[u8]) -> Result<Verdict, DecodeError> {
    let v: JsonVerdict = serde_json::from_slice(body)?;
    let set_headers = v.set_headers.into_iter().collect();
    match v.verdict.as_str() {
        "allow" => Ok(Verdict::Allow { set_headers, remove_headers: v.remove_headers, events: v.events }),
        "deny" => Ok(Verdict::Deny {
            status: deny_status(v.status),
            reason: v.reason.unwrap_or_default(),
            headers: set_headers,
            events: v.events,
        }),
        other => Err(DecodeError::Invalid(format!("verdict {other:?} is neither \"allow\" nor \"deny\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_encode_with_joined_headers_and_the_body_as_text_or_base64() {
        let mut call = Call {
            cnf: "edge",
            function: "acl",
            method: "POST",
            path: "/a?b=1",
            host: "web.local",
            headers: vec![("accept", "text/plain"), ("x-tag", "1"), ("x-tag", "2")],
            source: Some("127.0.0.1:5000".parse().unwrap()),
            destination: None,
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            body: Some(bytes::Bytes::from_static(b"hi")),
            response: None,
        };
        let text = String::from_utf8(encode(&call)).unwrap();
        assert_eq!(
            text,
            r#"{"cnf":"edge","function":"acl","method":"POST","path":"/a?b=1","host":"web.local","headers":{"accept":"text/plain","x-tag":"1, 2"},"source":"127.0.0.1:5000","traceId":"0af7651916cd43dd8448eb211c80319c","body":"hi"}"#
        );
        call.body = Some(bytes::Bytes::from_static(&[0xff, 0x00]));
        assert!(String::from_utf8(encode(&call)).unwrap().ends_with(r#""bodyBase64":"/wA="}"#));
        call.body = Some(bytes::Bytes::from_static(b"<html>"));
        call.response = Some(crate::ResponseHead {
            status: 200,
            headers: vec![("content-type", "text/html"), ("set-cookie", "a"), ("set-cookie", "b")],
        });
        assert!(String::from_utf8(encode(&call))
            .unwrap()
            .ends_with(r#""body":"<html>","response":{"status":200,"headers":{"content-type":"text/html","set-cookie":"a, b"}}}"#));
    }

    #[test]
    fn verdicts_decode() {
        let allow =
            decode(br#"{"verdict":"allow","setHeaders":{"x-user":"ann"},"removeHeaders":["authorization"],"events":[{"name":"seen"}]}"#)
                .unwrap();
        assert_eq!(
            allow,
            Verdict::Allow {
                set_headers: vec![("x-user".into(), "ann".into())],
                remove_headers: vec!["authorization".into()],
                events: vec![Event { name: "seen".into(), data: serde_json::Value::Null }],
            }
        );
        let deny = decode(br#"{"verdict":"deny","status":451,"reason":"blocked"}"#).unwrap();
        assert!(matches!(deny, Verdict::Deny { status: 451, ref reason, .. } if reason == "blocked"));
        assert!(matches!(decode(br#"{"verdict":"deny","status":42}"#).unwrap(), Verdict::Deny { status: 403, .. }));
        assert!(decode(br#"{"verdict":"maybe"}"#).is_err());
        assert!(decode(b"not json").is_err());
    }

    proptest::proptest! {
        /// A function's answer is untrusted: any bytes decode or fail, never panic.
        #[test]
        fn arbitrary_answers_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&body);
        }

        #[test]
        fn arbitrary_json_never_panics(text in "\\{(\"[a-z]{1,8}\":(\"[a-z]{0,8}\"|[0-9]{1,4}|\\[\\]|null|true),?){0,6}\\}") {
            let _ = decode(text.as_bytes());
        }
    }
}
