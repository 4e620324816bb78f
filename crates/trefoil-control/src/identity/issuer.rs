//! The config stream's certificate requests, answered: a join token or the
//! current SVID says who the proxy is, the authority signs the CSR for
//! exactly that identity, and the answer carries the chain, the trust
//! bundle and when to renew. Every refusal is an answer with the reason,
//! logged with the proxy's name, and nothing issued.

use std::time::{Duration, SystemTime};

use trefoil_wire::{CertificateRequest, IdentityAnswer};

use super::authority::{Authority, Issued};
use super::join::JoinTokens;
use super::spiffe::SpiffeId;

/// SVIDs live a day unless the control plane is told otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The CA as the config stream uses it.
pub struct Issuer {
    authority: Authority,
    tokens: JoinTokens,
    lifetime: Duration,
}

impl Issuer {
    pub fn new(authority: Authority, tokens: JoinTokens, lifetime: Duration) -> Self {
        Issuer { authority, tokens, lifetime }
    }

    /// An issuer with a root and tokens under `dir` and SVIDs of an hour, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        let authority = super::keep::load_or_create(dir, Default::default(), SystemTime::now()).unwrap();
        Issuer::new(authority, JoinTokens::new(dir), Duration::from_secs(3600))
    }

    /// The roots proxies verify peers with.
    pub fn trust_bundle(&self) -> &str {
        self.authority.root_pem()
    }

    /// A new serving certificate for the control plane on `key`, of the SVID lifetime.
    pub fn control_certificate(
        &self,
        key: &rcgen::KeyPair,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now: SystemTime,
    ) -> Result<Issued, super::IssueError> {
        self.authority.issue_control(key, dns, ips, self.lifetime, now)
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &super::TrustDomain {
        self.authority.trust_domain()
    }

    /// The answer to `request` from the proxy called `proxy`.
    pub fn answer(&self, proxy: &str, request: &CertificateRequest, now: SystemTime) -> IdentityAnswer {
        match self.issue(request, now) {
            Ok((id, issued)) => {
                tracing::info!(%proxy, identity = %id, renewal = request.join_token.is_empty(), not_after = %humantime::format_rfc3339_seconds(issued.not_after), "issued an SVID");
                IdentityAnswer {
                    certificate_chain_pem: issued.certificate_pem,
                    trust_bundle_pem: self.trust_bundle().to_string(),
                    renew_after_ms: issued.renew_at.duration_since(now).unwrap_or_default().as_millis() as u64,
                    error: String::new(),
                }
            }
            Err(error) => {
                tracing::warn!(%proxy, %error, "refused a certificate request");
                IdentityAnswer { error, ..Default::default() }
            }
        }
    }

    fn issue(&self, request: &CertificateRequest, now: SystemTime) -> Result<(SpiffeId, Issued), String> {
        match (request.join_token.is_empty(), request.current_svid_der.is_empty()) {
            (false, true) => {
                let joined = self.tokens.redeem(&request.join_token, now).map_err(|e| e.to_string())?;
                let id = SpiffeId::workload(self.authority.trust_domain().clone(), &joined.namespace, &joined.workload)
                    .map_err(|e| format!("the join token's identity: {e}"))?;
                let issued = self.authority.issue(&request.csr_der, &id, self.lifetime, now).map_err(|e| e.to_string())?;
                Ok((id, issued))
            }
            (true, false) => {
                self.authority.renew(&request.csr_der, &request.current_svid_der, self.lifetime, now).map_err(|e| e.to_string())
            }
            _ => Err("a certificate request carries exactly one proof: a join token or the current SVID".to_string()),
        }
    }
}
