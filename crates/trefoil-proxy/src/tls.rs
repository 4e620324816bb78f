//! TLS settings built from certificate files, and the identity of a peer.

use std::io::BufReader;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use trefoil_model::spec::{ListenerTls, TlsMode, UpstreamTls};

/// Where system CA certificates live on Debian-like systems.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_string(), source })
}

pub(crate) fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(&pem[..]))
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { path: path.to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_string(), what: "PEM certificate" });
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .map_err(|source| TlsError::Read { path: path.to_string(), source })?
        .ok_or(TlsError::Empty { path: path.to_string(), what: "PEM private key" })
}

fn load_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Server-side TLS for a listener; `alpn` lists the protocols offered, best first.
pub(crate) fn server_config(tls: &ListenerTls, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(&tls.certificate)?, load_key(&tls.key)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Client-side TLS towards a service's endpoints.
pub(crate) fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(tls.ca.as_deref().unwrap_or(SYSTEM_CA_BUNDLE))?;
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?.with_root_certificates(roots);
    // ALPN is left to the HTTP connector, which offers what the client speaks.
    let config = match (tls.mode, &tls.certificate, &tls.key) {
        (TlsMode::Mutual, Some(cert), Some(key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// The identity a peer certificate proves: its SPIFFE URI SAN if it has one,
/// else its subject common name.
pub(crate) fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    return Some(uri.to_string());
                }
            }
        }
    }
    let common_name = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    common_name
}
