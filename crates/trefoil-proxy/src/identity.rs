//! The proxy's own identity: an ECDSA P-256 key made at start that never
//! leaves the process, and the X.509-SVID the control plane signs for it.
//!
//! The first request proves who the proxy is with the join token its
//! supervisor handed over; every later one with the SVID it holds (the CSR
//! is signed by the same key, which is that proof). A renewal is asked for
//! at two thirds of the lifetime, as the control plane says in each
//! answer; a refused renewal is asked again shortly, while the SVID held
//! stays in use until it ends. The admin listener shows the SVID's URI,
//! serial and expiry (`/identity`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;
use trefoil_wire::{CertificateRequest, IdentityAnswer};
use x509_parser::extensions::GeneralName;

use crate::mesh_tls::TrustBundle;

/// After a refused renewal, the next try.
const RETRY: Duration = Duration::from_secs(2);

/// An SVID in force.
pub(crate) struct Svid {
    pub spiffe_id: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after: SystemTime,
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    der: Vec<u8>,
    /// The chain with this proxy's key, as TLS hands it out.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

/// The key, the SVID for it and when to ask again.
pub(crate) struct Identity {
    key: rcgen::KeyPair,
    /// Held until the control plane has answered the request that carried it.
    join_token: Mutex<Option<String>>,
    current: ArcSwapOption<Svid>,
    /// The roots peers' SVIDs must chain to: from each answer and each snapshot.
    bundle: ArcSwapOption<TrustBundle>,
    /// When to ask next, if asking makes sense (a token or an SVID to prove with).
    next_request: Mutex<Option<Instant>>,
    /// SVIDs received since start.
    pub issued: std::sync::atomic::AtomicU64,
}

/// Why an answer was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("the control plane refused: {0}")]
    Refused(String),
    #[error("the answer's certificate: {0}")]
    Certificate(String),
}

impl Identity {
    /// A new key; `join_token` proves the first request.
    pub(crate) fn new(join_token: Option<String>) -> Result<Self, rcgen::Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let next = join_token.is_some().then(Instant::now);
        Ok(Identity {
            key,
            join_token: Mutex::new(join_token),
            current: ArcSwapOption::empty(),
            bundle: ArcSwapOption::empty(),
            next_request: Mutex::new(next),
            issued: Default::default(),
        })
    }

    /// The SVID in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<Svid>> {
        self.current.load_full()
    }

    /// The trust bundle in force, if any.
    pub(crate) fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.load_full()
    }

    /// Takes the mesh's trust bundle, if it changed; an unreadable one
    /// leaves the one in force.
    pub(crate) fn set_bundle(&self, pem: &str) {
        if pem.is_empty() || self.bundle().is_some_and(|b| b.pem == pem) {
            return;
        }
        match TrustBundle::parse(pem) {
            Ok(bundle) => {
                if self.bundle().is_some() {
                    tracing::info!(
                        roots = pem.matches("-----BEGIN CERTIFICATE-----").count(),
                        "took a new trust bundle; new handshakes verify with it"
                    );
                }
                self.bundle.store(Some(Arc::new(bundle)))
            }
            Err(e) => tracing::error!(error = %e, "trust bundle not taken; keeping the one in force"),
        }
    }

    /// When the next request is due; `None` when there is nothing to prove it with.
    pub(crate) fn due(&self) -> Option<Instant> {
        *self.next_request.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On a new stream: a request the last stream took with it unanswered
    /// is due again at once (the control plane may never have seen it).
    pub(crate) fn resume(&self) {
        let mut next = self.next_request.lock().unwrap_or_else(|e| e.into_inner());
        let token = self.join_token.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let valid = self.current().is_some_and(|s| s.not_after > SystemTime::now());
        if next.is_none() && (token || valid) {
            *next = Some(Instant::now());
        }
    }

    /// The request to send now: a renewal over the SVID held, or the first
    /// one with the join token. `None` leaves the schedule alone until the
    /// answer reschedules it.
    pub(crate) fn request(&self) -> Option<CertificateRequest> {
        let mut next = self.next_request.lock().unwrap_or_else(|e| e.into_inner());
        let csr_der = match rcgen::CertificateParams::default().serialize_request(&self.key) {
            Ok(csr) => csr.der().to_vec(),
            Err(e) => {
                tracing::error!(error = %e, "cannot make a CSR");
                return None;
            }
        };
        let request = match (self.current(), self.join_token.lock().unwrap_or_else(|e| e.into_inner()).clone()) {
            (Some(svid), _) => CertificateRequest { csr_der, join_token: String::new(), current_svid_der: svid.der.clone() },
            (None, Some(token)) => CertificateRequest { csr_der, join_token: token, current_svid_der: Vec::new() },
            (None, None) => return None,
        };
        // Asked: nothing more until the answer says when.
        *next = None;
        Some(request)
    }

    /// Takes the control plane's answer to the last request.
    pub(crate) fn accept(&self, answer: IdentityAnswer) -> Result<Arc<Svid>, AnswerError> {
        // A token is spent by any answer, so it is never sent twice.
        let had_token = self.join_token.lock().unwrap_or_else(|e| e.into_inner()).take().is_some();
        let result = self.parse(&answer);
        let mut next = self.next_request.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(svid) => {
                self.set_bundle(&svid.trust_bundle_pem);
                self.current.store(Some(svid.clone()));
                self.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *next = Some(Instant::now() + Duration::from_millis(answer.renew_after_ms));
            }
            // Renewals are retried while the SVID held lasts; a refused
            // token cannot get better by asking again.
            Err(_) if self.current().is_some_and(|s| s.not_after > SystemTime::now()) => *next = Some(Instant::now() + RETRY),
            Err(_) => {
                if had_token {
                    tracing::error!("the join token was refused; this proxy has no identity until it is started with a new one");
                }
                *next = None;
            }
        }
        result
    }

    fn parse(&self, answer: &IdentityAnswer) -> Result<Arc<Svid>, AnswerError> {
        if !answer.error.is_empty() {
            return Err(AnswerError::Refused(answer.error.clone()));
        }
        let bad = |e: String| AnswerError::Certificate(e);
        let der = rustls_pemfile::certs(&mut answer.certificate_chain_pem.as_bytes())
            .next()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?
            .map_err(|e| bad(e.to_string()))?
            .to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        if cert.public_key().raw != self.key.public_key_der().as_slice() {
            return Err(bad("it certifies another key than this proxy's".into()));
        }
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| if let GeneralName::URI(u) = n { Some(u.to_string()) } else { None })
                    .collect()
            })
            .unwrap_or_default();
        let [spiffe_id] = <[String; 1]>::try_from(uris).map_err(|u| bad(format!("{} URI names, not one", u.len())))?;
        let chain = rustls_pemfile::certs(&mut answer.certificate_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.serialize_der().into());
        let certified =
            rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(|e| bad(e.to_string()))?;
        let serial = cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        Ok(Arc::new(Svid {
            spiffe_id,
            serial,
            not_after,
            chain_pem: answer.certificate_chain_pem.clone(),
            trust_bundle_pem: answer.trust_bundle_pem.clone(),
            der,
            certified: Arc::new(certified),
        }))
    }

    /// What the admin listener shows.
    pub(crate) fn describe(&self) -> serde_json::Value {
        match self.current() {
            None => serde_json::json!({"spiffeId": null, "issued": 0}),
            Some(svid) => serde_json::json!({
                "spiffeId": svid.spiffe_id,
                "serial": svid.serial,
                "notAfter": humantime::format_rfc3339_seconds(svid.not_after).to_string(),
                "issued": self.issued.load(std::sync::atomic::Ordering::Relaxed),
                "certificatePem": svid.chain_pem,
                // The bundle in force: the latest from an answer or a snapshot.
                "trustBundlePem": self.bundle().map_or_else(|| svid.trust_bundle_pem.clone(), |b| b.pem.clone()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sent_until_answered_then_the_svid_proves_renewals() {
        let identity = Identity::new(Some("tj1.x".into())).unwrap();
        assert!(identity.due().is_some(), "a token asks at once");
        let first = identity.request().unwrap();
        assert_eq!(first.join_token, "tj1.x");
        assert!(identity.due().is_none(), "nothing more until answered");
        // The stream broke before the answer: the next one asks again.
        identity.resume();
        assert_eq!(identity.request().unwrap().join_token, "tj1.x");
        // A refusal spends the token and leaves nothing to ask with.
        assert!(matches!(identity.accept(IdentityAnswer { error: "used".into(), ..Default::default() }), Err(AnswerError::Refused(_))));
        assert!(identity.due().is_none() && identity.request().is_none());

        // An answer for another key is not taken.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://trefoil.local/ns/default/sa/web".try_into().unwrap())];
        let stranger = params.clone().self_signed(&ca_key).unwrap();
        let answer = |pem: String| IdentityAnswer { certificate_chain_pem: pem, renew_after_ms: 10, ..Default::default() };
        assert!(matches!(identity.accept(answer(stranger.pem())), Err(AnswerError::Certificate(_))));

        let ours = params.signed_by(&identity.key, &stranger, &ca_key).unwrap();
        let svid = identity.accept(answer(ours.pem())).unwrap();
        assert_eq!(svid.spiffe_id, "spiffe://trefoil.local/ns/default/sa/web");
        assert!(identity.due().is_some());
        let renewal = identity.request().unwrap();
        assert!(renewal.join_token.is_empty() && renewal.current_svid_der == svid.der);
        assert_eq!(identity.describe()["spiffeId"], "spiffe://trefoil.local/ns/default/sa/web");
    }
}
