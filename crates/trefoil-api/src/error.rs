//! The body of every error answer, `{"error", "errors"}`: one message and
//! the located problems behind it (a refused resource's file, line, column
//! and field). The server writes it for every 4xx and 5xx, axum's own
//! rejections included; clients read it instead of poking at `v["error"]`.

use serde::{Deserialize, Serialize};
use trefoil_model::Diagnostic;

/// An error answer's JSON body (the OpenAPI document's `Error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub errors: Vec<Diagnostic>,
}

impl ErrorBody {
    /// A message with no located problems.
    pub fn new(error: impl Into<String>) -> Self {
        ErrorBody { error: error.into(), errors: Vec::new() }
    }

    /// What a client makes of an error answer: the API's body when it is
    /// one, else the start of whatever came (a proxy in between, another
    /// server on the port), else `request failed`.
    pub fn from_bytes(body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
            return parsed;
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let error = match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None if text.is_empty() => "request failed".to_string(),
            None => text.to_string(),
        };
        ErrorBody::new(error)
    }

    /// The message, then each located problem on its own indented line
    /// (`file:line:column: field: message`), as a terminal shows it.
    pub fn with_locations(&self) -> String {
        let mut out = self.error.clone();
        for e in &self.errors {
            out.push_str(&format!("\n  {}:{}:{}: {}: {}", e.file, e.line, e.column, e.field, e.message));
        }
        out
    }

    /// The message and each problem's field and message on one line, as a
    /// log or an event shows it.
    pub fn one_line(&self) -> String {
        let mut out = self.error.clone();
        for e in &self.errors {
            out.push_str(&format!("; {}: {}", e.field, e.message));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_body_or_the_start_of_anything_else() {
        let body =
            br#"{"error":"invalid resource","errors":[{"file":"f.yaml","line":3,"column":5,"field":"spec.port","message":"too big"}]}"#;
        let e = ErrorBody::from_bytes(body);
        assert_eq!(e.with_locations(), "invalid resource\n  f.yaml:3:5: spec.port: too big");
        assert_eq!(e.one_line(), "invalid resource; spec.port: too big");
        assert_eq!(ErrorBody::from_bytes(b"{\"error\":\"gone\"}").errors, []);
        assert_eq!(ErrorBody::from_bytes(b"  bad gateway\n").error, "bad gateway");
        assert_eq!(ErrorBody::from_bytes(b"").error, "request failed");
        assert_eq!(ErrorBody::from_bytes("x".repeat(300).as_bytes()).error.len(), 203);
    }
}
