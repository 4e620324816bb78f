//! TLS on the config stream's port: the control plane serves with a
//! certificate its own CA issues (`spiffe://<trust domain>/control`, and
//! the names proxies dial: `localhost`, loopback and the listen address),
//! renewed at two thirds of its life while it serves. A client may present
//! an SVID; the handshake checks it chains to the mesh root, and the
//! config stream then holds the proxy to the identity it names
//! ([`caller`], [`may_use_name`]). A client without one gets through the
//! handshake but is only answered a join-token CSR (a proxy's bootstrap)
//! or, with an API token, served as a node agent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::{Issuer, SpiffeId};

/// The control plane's serving certificate, reissued when due.
struct ServingCert {
    issuer: Arc<Issuer>,
    key: rcgen::KeyPair,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    /// The certificate, when to renew it, and the CA generation that signed it.
    current: Mutex<(Arc<CertifiedKey>, SystemTime, u64)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    fn issue(
        issuer: &Issuer,
        key: &rcgen::KeyPair,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<(Arc<CertifiedKey>, SystemTime, u64), String> {
        let now = SystemTime::now();
        let generation = issuer.generation();
        let issued = issuer.control_certificate(key, dns, ips, now).map_err(|e| e.to_string())?;
        let chain =
            rustls_pemfile::certs(&mut issued.certificate_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let certified = CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).map_err(|e| e.to_string())?;
        Ok((Arc::new(certified), issued.renew_at, generation))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // Due, or signed by a root rotated out since: proxies stop trusting
        // that one when its overlap ends.
        if SystemTime::now() >= current.1 || current.2 != self.issuer.generation() {
            match ServingCert::issue(&self.issuer, &self.key, &self.dns, &self.ips) {
                Ok(renewed) => {
                    tracing::info!("renewed the config stream's serving certificate");
                    *current = renewed;
                }
                Err(e) => tracing::error!(error = %e, "cannot renew the config stream's serving certificate; serving the one in force"),
            }
        }
        Some(current.0.clone())
    }
}

/// Client certificates checked against the trust bundle in force: the
/// verifier is rebuilt when the bundle changes (a rotation, an overlap's
/// end), so SVIDs of a new root are taken at once and those of a dropped
/// root are not.
struct BundleVerifier {
    issuer: Arc<Issuer>,
    current: Mutex<(String, Arc<dyn ClientCertVerifier>)>,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleVerifier")
    }
}

fn verifier_for(bundle: &str) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut bundle.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::ring::default_provider()))
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())
}

impl BundleVerifier {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let bundle = self.issuer.trust_bundle();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != bundle {
            match verifier_for(&bundle) {
                Ok(verifier) => *current = (bundle, verifier),
                Err(e) => tracing::error!(error = %e, "cannot use the new trust bundle on the config stream; keeping the last one"),
            }
        }
        current.1.clone()
    }
}

impl ClientCertVerifier for BundleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The roots change with rotations; proxies present their one SVID anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// The TLS settings of the config stream listening on `listen`.
pub fn server_config(issuer: Arc<Issuer>, listen: SocketAddr) -> Result<Arc<rustls::ServerConfig>, String> {
    let bundle = issuer.trust_bundle();
    let first = verifier_for(&bundle)?;
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(BundleVerifier { issuer: issuer.clone(), current: Mutex::new((bundle, first)) });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    let dns = vec!["localhost".to_string()];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let current = ServingCert::issue(&issuer, &key, &dns, &ips)?;
    let resolver = ServingCert { issuer, key, dns, ips, current: Mutex::new(current) };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE id of a client certificate the handshake verified.
pub fn caller(der: &[u8]) -> Result<SpiffeId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.iter().filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None }).collect())
        .unwrap_or_default();
    let [uri] = uris.as_slice() else { return Err(format!("the client certificate has {} URI names, not one SPIFFE id", uris.len())) };
    uri.parse().map_err(|e: super::SpiffeError| format!("the client certificate: {e}"))
}

/// Whether the holder of `id` may say Hello as `proxy`: the names `trefoil
/// up` gives a workload's proxies are the workload's own (a gateway) and
/// `<workload>-<replica index>` (a sidecar).
pub fn may_use_name(id: &SpiffeId, proxy: &str) -> bool {
    match proxy.strip_prefix(id.workload.as_str()) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_names_its_gateway_and_replicas_only() {
        let web: SpiffeId = "spiffe://trefoil.local/ns/default/sa/web".parse().unwrap();
        for ok in ["web", "web-0", "web-12"] {
            assert!(may_use_name(&web, ok), "{ok}");
        }
        for refused in ["api", "api-0", "web-", "web-x", "web-0-sidecar", "webb", "we", "web-1a"] {
            assert!(!may_use_name(&web, refused), "{refused}");
        }
    }
}
