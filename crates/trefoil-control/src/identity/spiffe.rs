//! SPIFFE identities as parsed values: a trust domain and the workload ids
//! Trefoil issues under it, `spiffe://<trust-domain>/ns/<namespace>/sa/<workload>`.
//! Parsed once (the SPIFFE ID rules: lowercase trust domain, non-empty path
//! segments of `[A-Za-z0-9._-]`, no `.`/`..`, no query, fragment, port or
//! user), so everything downstream compares values, never strings.

use std::fmt;
use std::str::FromStr;

/// The SPIFFE limit for a whole id; the trust domain's is 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a trust domain or SPIFFE id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("a SPIFFE id starts with spiffe://, got {0:?}")]
    Scheme(String),
    #[error("trust domain {0:?}: 1 to 255 characters of lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    #[error("SPIFFE id {0:?} is longer than 2048 bytes")]
    TooLong(String),
    #[error("SPIFFE id {id:?}: path segment {segment:?} must be non-empty [A-Za-z0-9._-], not '.' or '..'")]
    Segment { id: String, segment: String },
    #[error("SPIFFE id {0:?}: Trefoil issues spiffe://<trust-domain>/ns/<namespace>/sa/<workload>")]
    Shape(String),
}

/// A SPIFFE trust domain, e.g. `trefoil.local` (the default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain("trefoil.local".to_string())
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, SpiffeError> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
        if s.is_empty() || s.len() > MAX_TRUST_DOMAIN_LEN || !s.chars().all(allowed) {
            return Err(SpiffeError::TrustDomain(s.to_string()));
        }
        Ok(TrustDomain(s.to_string()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload's identity: the only shape Trefoil issues.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: TrustDomain,
    pub namespace: String,
    pub workload: String,
}

impl SpiffeId {
    /// The id of `workload` in `namespace`; the names must be valid path segments.
    pub fn workload(trust_domain: TrustDomain, namespace: &str, workload: &str) -> Result<Self, SpiffeError> {
        let id = SpiffeId { trust_domain, namespace: namespace.to_string(), workload: workload.to_string() };
        // One parser decides what is valid: build the text and read it back.
        id.to_string().parse()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, SpiffeError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeError::TooLong(s.chars().take(64).collect()));
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| SpiffeError::Scheme(s.to_string()))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| SpiffeError::Shape(s.to_string()))?;
        let trust_domain: TrustDomain = domain.parse()?;
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if segment.is_empty() || *segment == "." || *segment == ".." || !segment.chars().all(allowed) {
                return Err(SpiffeError::Segment { id: s.to_string(), segment: segment.to_string() });
            }
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", workload] => {
                Ok(SpiffeId { trust_domain, namespace: namespace.to_string(), workload: workload.to_string() })
            }
            _ => Err(SpiffeError::Shape(s.to_string())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.workload)
    }
}
