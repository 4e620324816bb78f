//! `inspect`: multi-pattern content inspection. All signatures are searched
//! at once (Aho-Corasick), in one pass over each of the path, every header
//! (`name: value`) and the body, so the cost does not grow with the number
//! of signatures. A match denies with the signature's name.
//!
//! Signature file: one `name: pattern` per line; `#` starts a comment line;
//! the pattern is everything after the first `: ` taken literally (no
//! escapes, no wildcards), matched as bytes.

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::json;
use trefoil_chain::json::JsonVerdict;

use crate::request::Request;
use crate::server::Function;
use crate::verdict;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: expected `name: pattern`")]
    Syntax { path: String, line: usize },
    #[error("{path}: no signatures")]
    Empty { path: String },
    #[error("building the matcher: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// One signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub pattern: String,
}

/// Parses a signature file's text; `path` is only for messages.
pub fn parse_signatures(path: &str, text: &str) -> Result<Vec<Signature>, InspectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (name, pattern) = trimmed.split_once(": ").ok_or(InspectError::Syntax { path: path.to_string(), line: i + 1 })?;
        // A pattern ends at the line's end; trailing spaces are usually accidents, so they go.
        let pattern = pattern.trim_end();
        if name.trim().is_empty() || pattern.is_empty() {
            return Err(InspectError::Syntax { path: path.to_string(), line: i + 1 });
        }
        out.push(Signature { name: name.trim().to_string(), pattern: pattern.to_string() });
    }
    if out.is_empty() {
        return Err(InspectError::Empty { path: path.to_string() });
    }
    Ok(out)
}

/// Where a signature was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub signature: String,
    /// `path`, `body`, or `header <name>`.
    pub location: String,
}

/// The function.
#[derive(Debug)]
pub struct Inspect {
    signatures: Vec<Signature>,
    matcher: AhoCorasick,
    deny_status: u16,
}

impl Inspect {
    pub fn load(path: &Path, case_insensitive: bool, deny_status: u16) -> Result<Self, InspectError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InspectError::Read { path: shown.clone(), source })?;
        Self::new(parse_signatures(&shown, &text)?, case_insensitive, deny_status)
    }

    pub fn new(signatures: Vec<Signature>, case_insensitive: bool, deny_status: u16) -> Result<Self, InspectError> {
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(case_insensitive)
            // Of overlapping signatures, the one listed first is reported, as an operator expects.
            .match_kind(MatchKind::LeftmostFirst)
            .build(signatures.iter().map(|s| s.pattern.as_bytes()))?;
        Ok(Inspect { signatures, matcher, deny_status })
    }

    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    /// The first signature found, looking at the path, the headers, then the
    /// body. On the response phase the headers and body are the response's.
    pub fn scan(&self, call: &Request) -> Option<Finding> {
        let found = |haystack: &[u8], location: String| {
            self.matcher.find(haystack).map(|m| Finding { signature: self.signatures[m.pattern().as_usize()].name.clone(), location })
        };
        if let Some(f) = found(call.path.as_bytes(), "path".into()) {
            return Some(f);
        }
        let headers = call.response.as_ref().map_or(&call.headers, |r| &r.headers);
        for (name, value) in headers {
            // Name and value together, so a signature can pin a header (`user-agent: sqlmap`).
            if let Some(f) = found(format!("{name}: {value}").as_bytes(), format!("header {name}")) {
                return Some(f);
            }
        }
        call.body.as_ref().and_then(|b| found(b, "body".into()))
    }
}

impl Function for Inspect {
    fn kind(&self) -> &'static str {
        "inspect"
    }

    async fn decide(&self, call: Request) -> Result<JsonVerdict, String> {
        let body_bytes = call.body.as_ref().map_or(0, |b| b.len());
        Ok(match self.scan(&call) {
            None => verdict::allow(vec![verdict::event(
                "inspect_done",
                json!({"cnf": call.cnf, "phase": call.phase(), "result": "clean", "bodyBytes": body_bytes}),
            )]),
            Some(f) => verdict::deny(
                self.deny_status,
                format!("blocked by content inspection: {}\n", f.signature),
                vec![verdict::event(
                    "inspect_done",
                    json!({"cnf": call.cnf, "phase": call.phase(), "result": "match", "signature": f.signature, "location": f.location, "bodyBytes": body_bytes}),
                )],
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const FILE: &str = "# test signatures\n\nsql-union: UNION SELECT\n  traversal: ../..\nscanner: user-agent: sqlmap\nshell: /bin/sh \n";

    #[test]
    fn signature_files_parse_names_and_literal_patterns() {
        let sigs = parse_signatures("s.txt", FILE).unwrap();
        let names: Vec<(&str, &str)> = sigs.iter().map(|s| (s.name.as_str(), s.pattern.as_str())).collect();
        assert_eq!(names, [("sql-union", "UNION SELECT"), ("traversal", "../.."), ("scanner", "user-agent: sqlmap"), ("shell", "/bin/sh")]);
        assert_eq!(parse_signatures("s.txt", "ok: a\nno colon here\n").unwrap_err().to_string(), "s.txt:2: expected `name: pattern`");
        assert!(parse_signatures("s.txt", "empty: \n").is_err());
        assert!(parse_signatures("s.txt", "# nothing\n").is_err());
    }

    fn inspect(case_insensitive: bool) -> Inspect {
        Inspect::new(parse_signatures("s", FILE).unwrap(), case_insensitive, 403).unwrap()
    }

    fn call(path: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Request {
        Request {
            path: path.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Some(Bytes::from_static(body)),
            ..Default::default()
        }
    }

    #[test]
    fn finds_signatures_in_path_headers_and_body() {
        let i = inspect(false);
        let finding = |c: &Request| i.scan(c).map(|f| (f.signature, f.location));
        assert_eq!(finding(&call("/a/../../etc", &[], b"")), Some(("traversal".into(), "path".into())));
        assert_eq!(finding(&call("/", &[("user-agent", "sqlmap/1.7")], b"")), Some(("scanner".into(), "header user-agent".into())));
        assert_eq!(finding(&call("/", &[], b"id=1 UNION SELECT pw")), Some(("sql-union".into(), "body".into())));
        assert_eq!(finding(&call("/", &[], b"id=1 union select pw")), None, "case matters by default");
        assert_eq!(i.scan(&call("/", &[], b"id=1 union select pw")).map(|f| f.signature), None);
        assert_eq!(inspect(true).scan(&call("/", &[], b"id=1 union select pw")).map(|f| f.signature), Some("sql-union".into()));
        assert_eq!(finding(&call("/fine", &[("accept", "*/*")], b"hello")), None);
    }

    #[tokio::test]
    async fn a_match_denies_with_the_signature_name() {
        let v = inspect(false).decide(call("/", &[], b"x UNION SELECT y")).await.unwrap();
        assert_eq!((v.verdict.as_str(), v.status), ("deny", Some(403)));
        assert!(v.reason.unwrap().contains("sql-union"));
        assert_eq!(v.events[0].data["signature"], "sql-union");
        let v = inspect(false).decide(call("/", &[], b"fine")).await.unwrap();
        assert_eq!(v.verdict, "allow");
        assert_eq!(v.events[0].name, "inspect_done");
        assert_eq!(v.events[0].data["result"], "clean");
    }
}
