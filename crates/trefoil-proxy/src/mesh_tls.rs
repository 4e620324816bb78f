//! Mutual TLS between the proxies of a mesh, with the SVIDs the control
//! plane issues (decision 0019).
//!
//! One value serves both ends of every mesh hop: it hands out the SVID in
//! force on each handshake (so a renewal changes the next handshake's
//! certificate and leaves established connections alone) and verifies the
//! peer against the trust bundle in force: a chain to one of its roots, and
//! exactly one URI SAN that is a SPIFFE id of this proxy's trust domain. No
//! host-name check: SVIDs carry no DNS names, and the name a client dials
//! (an address) says nothing about who answers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use x509_parser::extensions::GeneralName;

use crate::identity::Identity;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a peer's certificate is not one of the mesh.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("this proxy holds no SVID and trust bundle yet")]
    NoTrust,
    #[error("the peer's certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the peer's certificate has {0} URI names, an SVID has one")]
    UriCount(usize),
    #[error("the peer's identity {0:?} is not a SPIFFE id of trust domain {1:?}")]
    ForeignIdentity(String, String),
}

impl From<PeerError> for rustls::Error {
    fn from(e: PeerError) -> Self {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
    }
}

/// The roots peers' SVIDs must chain to, as the control plane sent them.
pub(crate) struct TrustBundle {
    pub pem: String,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustBundle {
    /// Reads PEM roots; a bundle without any is refused.
    pub(crate) fn parse(pem: &str) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        if roots.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| e.to_string())?;
        Ok(TrustBundle { pem: pem.to_string(), roots, clients, algorithms: provider.signature_verification_algorithms })
    }

    /// Verifies a peer's chain (`server`: the peer serves, else it is a
    /// client) and returns its SPIFFE id, which must be of `trust_domain`.
    pub(crate) fn verify(
        &self,
        trust_domain: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server: bool,
    ) -> Result<String, rustls::Error> {
        if server {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, self.algorithms.all)?;
        } else {
            self.clients.verify_client_cert(end_entity, intermediates, now)?;
        }
        Ok(spiffe_id_in(end_entity, trust_domain)?)
    }
}

/// The one URI SAN of `cert`, which must be `spiffe://<trust_domain>/...`.
fn spiffe_id_in(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<String, PeerError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| PeerError::Unreadable(e.to_string()))?;
    let uris: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => {
            san.value.general_names.iter().filter_map(|n| if let GeneralName::URI(u) = n { Some(u.to_string()) } else { None }).collect()
        }
        Ok(None) => Vec::new(),
        Err(e) => return Err(PeerError::Unreadable(e.to_string())),
    };
    let [id] = <[String; 1]>::try_from(uris).map_err(|u| PeerError::UriCount(u.len()))?;
    let in_domain = id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/')).is_some_and(|(domain, _)| domain == trust_domain);
    if !in_domain {
        return Err(PeerError::ForeignIdentity(id, trust_domain.to_string()));
    }
    Ok(id)
}

/// The trust domain of a SPIFFE id (`spiffe://<domain>/...`).
pub(crate) fn trust_domain(spiffe_id: &str) -> Option<&str> {
    spiffe_id.strip_prefix("spiffe://")?.split('/').next().filter(|d| !d.is_empty())
}

/// Both ends of mesh TLS, reading the proxy's identity on every handshake.
#[derive(Clone)]
struct Mesh {
    identity: Arc<Identity>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mesh")
    }
}

impl Mesh {
    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.identity.current().map(|svid| svid.certified.clone())
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server: bool,
    ) -> Result<String, rustls::Error> {
        let (Some(svid), Some(bundle)) = (self.identity.current(), self.identity.bundle()) else { return Err(PeerError::NoTrust.into()) };
        let domain = trust_domain(&svid.spiffe_id).ok_or(PeerError::NoTrust)?;
        bundle.verify(domain, end_entity, intermediates, now, server)
    }
}

impl ResolvesServerCert for Mesh {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }
}

impl ResolvesClientCert for Mesh {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for Mesh {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, true).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Mesh {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SVIDs have no subject to hint at; every client has one SVID.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, false).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS settings of mesh hops, made once per proxy: what changes (the
/// SVID, the bundle) is read at each handshake.
pub(crate) struct MeshConfigs {
    /// For listeners that speak HTTP/1.1 or HTTP/2 (ALPN chooses).
    pub server: Arc<ServerConfig>,
    /// For HTTP/2-only listeners.
    pub server_h2: Arc<ServerConfig>,
    /// For upstream connections to other proxies' mesh listeners.
    pub client: Arc<ClientConfig>,
}

impl MeshConfigs {
    pub(crate) fn new(identity: Arc<Identity>) -> Result<Self, rustls::Error> {
        let provider = provider();
        let mesh = Mesh { identity, algorithms: provider.signature_verification_algorithms };
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, rustls::Error> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(Arc::new(mesh.clone()))
                .with_cert_resolver(Arc::new(mesh.clone()));
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(mesh.clone()))
            .with_client_cert_resolver(Arc::new(mesh.clone()));
        Ok(MeshConfigs { server: server(&[b"h2", b"http/1.1"])?, server_h2: server(&[b"h2"])?, client: Arc::new(client) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf of `ca` with these URI names, for server and client auth.
    fn leaf(ca: &Ca, uris: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|u| rcgen::SanType::URI((*u).try_into().unwrap())).collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &ca.cert, &ca.key).unwrap().der().clone()
    }

    const WEB: &str = "spiffe://trefoil.local/ns/default/sa/web";

    #[test]
    fn only_one_spiffe_id_of_this_domain_chained_to_the_bundle_passes() {
        let mesh = ca();
        let bundle = TrustBundle::parse(&mesh.cert.pem()).unwrap();
        let now = UnixTime::now();
        for server in [true, false] {
            let verify = |cert: &CertificateDer<'_>| bundle.verify("trefoil.local", cert, &[], now, server);
            assert_eq!(verify(&leaf(&mesh, &[WEB])).unwrap(), WEB);
            // rustls shows the cause with its `Debug`.
            let refused = |cert: CertificateDer<'_>| format!("{:?}", verify(&cert).unwrap_err());
            assert!(refused(leaf(&mesh, &["spiffe://elsewhere.example/ns/default/sa/web"])).contains("ForeignIdentity"));
            assert!(refused(leaf(&mesh, &["https://trefoil.local/ns/default/sa/web"])).contains("ForeignIdentity"));
            assert!(refused(leaf(&mesh, &[])).contains("UriCount(0)"));
            assert!(refused(leaf(&mesh, &[WEB, "spiffe://trefoil.local/ns/default/sa/api"])).contains("UriCount(2)"));
            // Same names, another CA: the chain does not reach the bundle.
            let stranger = refused(leaf(&ca(), &[WEB]));
            assert!(stranger.contains("UnknownIssuer") || stranger.contains("BadSignature"), "{stranger}");
        }
    }

    #[test]
    fn a_bundle_without_roots_is_refused_and_domains_are_read() {
        assert!(TrustBundle::parse("").is_err());
        assert_eq!(trust_domain(WEB), Some("trefoil.local"));
        assert_eq!(trust_domain("spiffe:///x"), None);
    }
}
