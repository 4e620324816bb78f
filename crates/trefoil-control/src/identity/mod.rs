//! Mesh identity: SPIFFE ids and the certificate authority that issues
//! X.509-SVIDs to proxies. The root key stays in the control plane; proxies
//! send a CSR (their keys never leave them) and get back a certificate for
//! the identity they proved, plus the trust bundle.

pub mod api;
mod authority;
pub mod external;
mod issuer;
pub mod join;
pub mod keep;
pub mod operator;
mod spiffe;
pub mod stream_tls;
#[cfg(test)]
mod tests;

pub use authority::{Authority, AuthorityError, IssueError, Issued, MAX_CSR_BYTES, MAX_LIFETIME, MIN_LIFETIME, ROOT_LIFETIME};
pub use external::ExternalCa;
pub use issuer::{bundle_at, next_drop, CaStatus, CertificateStatus, Issuer, RotateError, DEFAULT_LIFETIME, DEFAULT_OVERLAP};
pub use keep::Retiring;
pub use operator::{OperatorCa, OperatorCaError};
pub use spiffe::{SpiffeError, SpiffeId, TrustDomain};
