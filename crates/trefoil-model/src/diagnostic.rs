//! Errors that point at the exact place in the user's file.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::located_yaml::Position;

/// One problem in the user's input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
    /// Field path inside the document, e.g. `spec.rules[0].backends[1].weight`.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Arc<str>, at: Position, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.clone(), line: at.line, column: at.column, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one load; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
