//! The config stream's certificate requests, answered: a join token or the
//! current SVID says who the proxy is, the authority signs the CSR for
//! exactly that identity, and the answer carries the chain, the trust
//! bundle and when to renew. Every refusal is an answer with the reason,
//! logged with the proxy's name, and nothing issued.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use trefoil_wire::{CertificateRequest, IdentityAnswer};

use super::authority::{Authority, Issued};
use super::join::JoinTokens;
use super::keep::{self, Retiring};
use super::spiffe::SpiffeId;

/// SVIDs live a day unless the control plane is told otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a rotated-out root stays in the bundle unless told otherwise.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The CA as the config stream uses it.
pub struct Issuer {
    ca: Mutex<Ca>,
    tokens: JoinTokens,
    lifetime: Duration,
    /// Where a generated root is kept (and rotated); `None`: not rotatable here.
    data_dir: Option<PathBuf>,
    /// The CA's generation, bumped at each rotation.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The signing authority and the roots rotated out of it, still trusted.
struct Ca {
    authority: Arc<Authority>,
    retiring: Vec<Retiring>,
}

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the CA comes from the operator's files (--ca-cert); rotate it by replacing those files and restarting the control plane")]
    Operator,
    #[error("an external command signs for this CA (--ca-external-command); rotate at that CA, then replace --ca-bundle and restart the control plane")]
    External,
    #[error("this control plane keeps no CA root on disk, so it cannot rotate one")]
    NotKept,
    #[error(
        "an overlap of {overlap} is shorter than the SVID lifetime {lifetime}: SVIDs the old root signed could outlive its place in the bundle"
    )]
    OverlapTooShort { overlap: String, lifetime: String },
    #[error("an overlap of {0} is longer than a root lives (365 days)")]
    OverlapTooLong(String),
    /// Rotations faster than overlaps end: the bundle would grow without bound.
    #[error("{0} roots are still in their overlap, the most kept; rotate again when one ends (`trefoil ca status` says when)")]
    TooManyRetiring(usize),
    #[error("{0}")]
    Keep(#[from] keep::KeepError),
}

/// The trust bundle at `now`: the authority's roots, then every retiring
/// root whose overlap has not ended, each certificate once.
pub fn bundle_at(roots_pem: &str, retiring: &[Retiring], now: SystemTime) -> String {
    let mut bundle = roots_pem.to_string();
    for old in retiring.iter().filter(|r| r.until > now) {
        if !bundle.contains(old.root_pem.trim()) {
            if !bundle.ends_with('\n') && !bundle.is_empty() {
                bundle.push('\n');
            }
            bundle.push_str(&old.root_pem);
        }
    }
    bundle
}

/// When the bundle changes next by itself: the first overlap to end after `now`.
pub fn next_drop(retiring: &[Retiring], now: SystemTime) -> Option<SystemTime> {
    retiring.iter().map(|r| r.until).filter(|until| *until > now).min()
}

/// One certificate as `trefoil ca status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub subject: String,
    /// SHA-256 of the DER, as `openssl x509 -fingerprint -sha256` prints it.
    pub fingerprint: String,
    pub not_after: String,
    /// Whether new SVIDs are signed by this certificate.
    pub signing: bool,
    /// `active`, or `retiring` until `drop_at`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_at: Option<String>,
}

/// The CA as `GET /api/v1/ca` shows it; never a key.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    pub trust_domain: String,
    /// `generated` (a root this control plane made and rotates) or `operator`.
    pub source: String,
    /// The certificate signing SVIDs: a root, or the operator's intermediate.
    pub signer: CertificateStatus,
    /// The roots in the trust bundle proxies are sent now.
    pub roots: Vec<CertificateStatus>,
    /// Bumped at every rotation.
    pub generation: u64,
    pub svid_lifetime: String,
}

fn describe(pem: &str, signing: bool, drop_at: Option<SystemTime>) -> Vec<CertificateStatus> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &der);
            let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
            Some(CertificateStatus {
                subject: cert.subject().to_string(),
                fingerprint,
                not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
                signing,
                state: if drop_at.is_some() { "retiring" } else { "active" }.to_string(),
                drop_at: drop_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            })
        })
        .collect()
}

impl Issuer {
    pub fn new(authority: Authority, tokens: JoinTokens, lifetime: Duration) -> Self {
        Issuer {
            ca: Mutex::new(Ca { authority: Arc::new(authority), retiring: Vec::new() }),
            tokens,
            lifetime,
            data_dir: None,
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// An issuer whose generated root is kept under `data_dir`, with the
    /// roots rotated out of it that are still trusted.
    pub fn kept(authority: Authority, retiring: Vec<Retiring>, data_dir: PathBuf, tokens: JoinTokens, lifetime: Duration) -> Self {
        let mut issuer = Issuer::new(authority, tokens, lifetime);
        issuer.ca.get_mut().unwrap_or_else(|e| e.into_inner()).retiring = retiring;
        issuer.data_dir = Some(data_dir);
        issuer
    }

    /// An issuer with a root and tokens under `dir` and SVIDs of an hour, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        let authority = super::keep::load_or_create(dir, Default::default(), SystemTime::now()).unwrap();
        Issuer::new(authority, JoinTokens::new(dir), Duration::from_secs(3600))
    }

    fn authority(&self) -> Arc<Authority> {
        self.ca.lock().unwrap_or_else(|e| e.into_inner()).authority.clone()
    }

    /// The roots proxies verify peers with, now.
    pub fn trust_bundle(&self) -> String {
        let ca = self.ca.lock().unwrap_or_else(|e| e.into_inner());
        bundle_at(ca.authority.root_pem(), &ca.retiring, SystemTime::now())
    }

    /// When the bundle changes next without a rotation (an overlap ends).
    pub fn next_change(&self, now: SystemTime) -> Option<SystemTime> {
        next_drop(&self.ca.lock().unwrap_or_else(|e| e.into_inner()).retiring, now)
    }

    /// Rotations, as they happen: the generation after each.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The CA's generation: bumped at each rotation.
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// The SVID lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The CA as `trefoil ca status` shows it.
    pub fn status(&self, now: SystemTime) -> CaStatus {
        let ca = self.ca.lock().unwrap_or_else(|e| e.into_inner());
        let authority = &ca.authority;
        let signer_pem = authority.signer_pem();
        let signer = describe(&signer_pem, true, None).pop().unwrap_or_else(|| CertificateStatus {
            subject: String::new(),
            fingerprint: String::new(),
            not_after: String::new(),
            signing: true,
            state: "active".into(),
            drop_at: None,
        });
        let mut roots: Vec<CertificateStatus> = describe(authority.root_pem(), false, None)
            .into_iter()
            .map(|mut root| {
                root.signing = root.fingerprint == signer.fingerprint;
                root
            })
            .collect();
        for old in ca.retiring.iter().filter(|r| r.until > now) {
            for root in describe(&old.root_pem, false, Some(old.until)) {
                if !roots.iter().any(|r| r.fingerprint == root.fingerprint) {
                    roots.push(root);
                }
            }
        }
        CaStatus {
            trust_domain: authority.trust_domain().to_string(),
            source: if authority.is_external() {
                "external"
            } else if authority.is_operator_provided() {
                "operator"
            } else {
                "generated"
            }
            .to_string(),
            signer,
            roots,
            generation: self.generation(),
            svid_lifetime: humantime::format_duration(self.lifetime).to_string(),
        }
    }

    /// A new root signs from now on; the one it replaces stays in the
    /// bundle for `overlap`, which must cover an SVID's lifetime so that
    /// every SVID the old root signed is renewed (or ended) before peers
    /// stop trusting it.
    pub fn rotate(&self, overlap: Duration, now: SystemTime) -> Result<CaStatus, RotateError> {
        if overlap < self.lifetime {
            return Err(RotateError::OverlapTooShort {
                overlap: humantime::format_duration(overlap).to_string(),
                lifetime: humantime::format_duration(self.lifetime).to_string(),
            });
        }
        if overlap > super::ROOT_LIFETIME {
            return Err(RotateError::OverlapTooLong(humantime::format_duration(overlap).to_string()));
        }
        {
            let mut ca = self.ca.lock().unwrap_or_else(|e| e.into_inner());
            if ca.authority.is_external() {
                return Err(RotateError::External);
            }
            if ca.authority.is_operator_provided() {
                return Err(RotateError::Operator);
            }
            let Some(data_dir) = &self.data_dir else { return Err(RotateError::NotKept) };
            let mut retiring: Vec<Retiring> = ca.retiring.iter().filter(|r| r.until > now).cloned().collect();
            if retiring.len() >= keep::MAX_RETIRING {
                return Err(RotateError::TooManyRetiring(retiring.len()));
            }
            retiring.push(Retiring { root_pem: ca.authority.root_pem().to_string(), until: now + overlap });
            let next = keep::rotate(data_dir, ca.authority.trust_domain().clone(), &retiring, now)?;
            tracing::info!(
                trust_domain = %next.trust_domain(),
                overlap = %humantime::format_duration(overlap),
                "rotated the mesh CA root; the old root stays in the trust bundle until the overlap ends"
            );
            *ca = Ca { authority: Arc::new(next), retiring };
        }
        self.changes.send_modify(|g| *g += 1);
        Ok(self.status(now))
    }

    /// A new serving certificate for the control plane on `key`, of the SVID lifetime.
    pub fn control_certificate(
        &self,
        key: &rcgen::KeyPair,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now: SystemTime,
    ) -> Result<Issued, super::IssueError> {
        self.authority().issue_control(key, dns, ips, self.lifetime, now)
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> super::TrustDomain {
        self.authority().trust_domain().clone()
    }

    /// [`Issuer::answer`] off the async threads: an external CA command
    /// may take up to its timeout, and the runtime keeps serving meanwhile.
    pub async fn answer_blocking(self: &Arc<Self>, proxy: &str, request: &CertificateRequest, now: SystemTime) -> IdentityAnswer {
        let (issuer, proxy_name, req) = (self.clone(), proxy.to_string(), request.clone());
        match tokio::task::spawn_blocking(move || issuer.answer(&proxy_name, &req, now)).await {
            Ok(answer) => answer,
            Err(e) => IdentityAnswer { error: format!("issuing failed: {e}"), ..Default::default() },
        }
    }

    /// The answer to `request` from the proxy called `proxy`.
    pub fn answer(&self, proxy: &str, request: &CertificateRequest, now: SystemTime) -> IdentityAnswer {
        match self.issue(request, now) {
            Ok((id, issued)) => {
                tracing::info!(%proxy, identity = %id, renewal = request.join_token.is_empty(), not_after = %humantime::format_rfc3339_seconds(issued.not_after), "issued an SVID");
                IdentityAnswer {
                    certificate_chain_pem: issued.certificate_pem,
                    trust_bundle_pem: self.trust_bundle(),
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
        let (authority, retiring) = {
            let ca = self.ca.lock().unwrap_or_else(|e| e.into_inner());
            let retiring: Vec<String> = ca.retiring.iter().filter(|r| r.until > now).map(|r| r.root_pem.clone()).collect();
            (ca.authority.clone(), retiring)
        };
        match (request.join_token.is_empty(), request.current_svid_der.is_empty()) {
            (false, true) => {
                let joined = self.tokens.redeem(&request.join_token, now).map_err(|e| e.to_string())?;
                let id = SpiffeId::workload(authority.trust_domain().clone(), &joined.namespace, &joined.workload)
                    .map_err(|e| format!("the join token's identity: {e}"))?;
                let issued = authority.issue(&request.csr_der, &id, self.lifetime, now).map_err(|e| e.to_string())?;
                Ok((id, issued))
            }
            (true, false) => {
                // An SVID a retiring root signed is renewed by the new one.
                let retiring: Vec<&str> = retiring.iter().map(String::as_str).collect();
                authority.renew_also(&request.csr_der, &request.current_svid_der, &retiring, self.lifetime, now).map_err(|e| e.to_string())
            }
            _ => Err("a certificate request carries exactly one proof: a join token or the current SVID".to_string()),
        }
    }
}
