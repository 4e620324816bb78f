//! A CA the operator provides from files (`trefoil control --ca-cert FILE
//! --ca-key FILE [--ca-bundle FILE]`): usually an intermediate made with
//! openssl below the organisation's root, sometimes a root.
//!
//! Everything is checked at start, and every refusal names the file: the
//! certificate must be a CA (basicConstraints CA:TRUE, keyCertSign when key
//! usage is given), valid now, and chain to a root (itself when self-signed,
//! else a root in the certificate file or in the bundle file); the key must
//! be the certificate's. A key file others can read is warned about, not
//! refused: the operator owns that file and its placement. The key is read
//! from the operator's file at each start and never copied anywhere.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyIdMethod, KeyPair};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use super::authority::Authority;
use super::spiffe::TrustDomain;

/// Certificate and key files are a few KiB; anything near this is not one.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Intermediates followed from the signing certificate to a root, at most.
const MAX_DEPTH: usize = 8;

/// The files of an operator-provided CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorCa {
    /// The signing CA certificate (PEM), optionally followed by the
    /// certificates above it.
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The root(s) to trust, when the certificate is not self-signed and
    /// its file does not hold its root.
    pub bundle: Option<PathBuf>,
}

/// Why an operator's CA was refused; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct OperatorCaError {
    pub path: PathBuf,
    pub message: String,
}

impl OperatorCaError {
    /// The refusal of `--ca-cert` together with `--ca-external-command`.
    pub fn both() -> Self {
        refuse(
            Path::new("--ca-external-command"),
            "goes without --ca-cert/--ca-key: the external command signs, or the key file does, not both",
        )
    }
}

pub(crate) fn refuse(path: &Path, message: impl Into<String>) -> OperatorCaError {
    OperatorCaError { path: path.to_path_buf(), message: message.into() }
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, OperatorCaError> {
    let file = std::fs::File::open(path).map_err(|e| refuse(path, format!("cannot read: {e}")))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| refuse(path, format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(refuse(path, "more than 1 MiB; a certificate or key file is a few KiB"));
    }
    Ok(text)
}

/// The DER certificates of a PEM file; none is an error.
pub(crate) fn certificates(path: &Path) -> Result<Vec<Vec<u8>>, OperatorCaError> {
    let text = read_bounded(path)?;
    let ders = rustls_pemfile::certs(&mut text.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(path, format!("not PEM: {e}")))?;
    if ders.is_empty() {
        return Err(refuse(path, "holds no CERTIFICATE block"));
    }
    for (i, der) in ders.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| refuse(path, format!("certificate {} does not parse: {e}", i + 1)))?;
    }
    Ok(ders)
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    // Every DER here was parsed once already by `certificates`.
    x509_parser::parse_x509_certificate(der).map(|(_, c)| c).expect("parsed before")
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

fn signs(issuer: &X509Certificate<'_>, cert: &X509Certificate<'_>) -> bool {
    issuer.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

pub(crate) fn pem_of(der: &[u8]) -> String {
    let body = base64_lines(der);
    format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
}

pub(crate) fn base64_lines(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    let mut line = 0;
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8) | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
        line += 4;
        if line == 64 {
            out.push('\n');
            line = 0;
        }
    }
    if line != 0 {
        out.push('\n');
    }
    out
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Refuses a certificate that is not a CA, or not valid at `now`.
fn check_ca(path: &Path, what: &str, cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), OperatorCaError> {
    let ca = cert.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
    if !ca {
        return Err(refuse(
            path,
            format!(
                "{what} ({}) is not a CA certificate: basicConstraints CA:TRUE is missing; give the CA's certificate, not a leaf",
                cert.subject()
            ),
        ));
    }
    if cert.key_usage().ok().flatten().is_some_and(|k| !k.value.key_cert_sign()) {
        return Err(refuse(path, format!("{what} ({}) has a key usage without keyCertSign: it may not sign certificates", cert.subject())));
    }
    let validity = cert.validity();
    if validity.not_after.timestamp() <= unix(now) {
        return Err(refuse(path, format!("{what} ({}) expired on {}", cert.subject(), validity.not_after)));
    }
    if validity.not_before.timestamp() > unix(now) {
        return Err(refuse(path, format!("{what} ({}) is not valid before {}", cert.subject(), validity.not_before)));
    }
    Ok(())
}

/// The subject of `cert` as rcgen writes an issuer name, refused unless
/// the encoding comes out byte for byte the same.
fn issuer_name(path: &Path, cert: &X509Certificate<'_>) -> Result<DistinguishedName, OperatorCaError> {
    let mut name = DistinguishedName::new();
    for rdn in cert.subject().iter_rdn() {
        let attributes: Vec<_> = rdn.iter().collect();
        let [attribute] = attributes.as_slice() else {
            return Err(refuse(
                path,
                "the certificate's subject has a multi-valued name component, which Trefoil cannot name as an issuer",
            ));
        };
        let oid: Vec<u64> = attribute.attr_type().iter().map(|i| i.collect()).unwrap_or_default();
        let text = attribute.as_str().map_err(|_| refuse(path, "the certificate's subject holds a value that is not text"))?.to_string();
        let value = match attribute.attr_value().tag().0 {
            12 => DnValue::Utf8String(text),
            19 => DnValue::PrintableString(text.try_into().map_err(|_| refuse(path, "a PrintableString in the subject is not printable"))?),
            22 => DnValue::Ia5String(text.try_into().map_err(|_| refuse(path, "an IA5String in the subject is not ASCII"))?),
            tag => return Err(refuse(path, format!("the certificate's subject uses string type {tag}, which Trefoil cannot reproduce"))),
        };
        name.push(DnType::from_oid(&oid), value);
    }
    Ok(name)
}

/// The operator's CA, checked; see the module documentation.
pub fn load(files: &OperatorCa, trust_domain: TrustDomain, now: SystemTime) -> Result<Authority, OperatorCaError> {
    let cert_path = &files.cert;
    let ders = certificates(cert_path)?;
    let signer = parse(&ders[0]);
    check_ca(cert_path, "the first certificate", &signer, now)?;

    // The key: readable, the certificate's, and ideally private.
    let key_path = &files.key;
    let key_text = read_bounded(key_path)?;
    if let Ok(meta) = std::fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %key_path.display(), mode = format_args!("{mode:o}"), "the CA key file can be read by others; chmod 600 it");
        }
    }
    let key = KeyPair::from_pem(&key_text).map_err(|e| {
        refuse(
            key_path,
            format!("not an unencrypted PKCS#8 private key (a PRIVATE KEY block): {e}; convert one with `openssl pkcs8 -topk8 -nocrypt`"),
        )
    })?;
    if signer.public_key().raw != key.public_key_der().as_slice() {
        return Err(refuse(key_path, format!("this key does not match the certificate in {} ({})", cert_path.display(), signer.subject())));
    }

    // The roots: the signer when self-signed, self-signed ones after it in
    // its file, and the bundle file's.
    let mut roots: Vec<Vec<u8>> = Vec::new();
    let mut intermediates: Vec<Vec<u8>> = Vec::new();
    for der in &ders {
        if self_signed(&parse(der)) {
            roots.push(der.clone());
        } else if der != &ders[0] {
            intermediates.push(der.clone());
        }
    }
    if let Some(bundle) = &files.bundle {
        for der in certificates(bundle)? {
            let root = parse(&der);
            check_ca(bundle, "a bundle certificate", &root, now)?;
            if !roots.contains(&der) {
                roots.push(der);
            }
        }
    }
    if roots.is_empty() {
        return Err(refuse(
            cert_path,
            format!(
                "the certificate is not self-signed (issued by {}) and no root is given: pass the root with --ca-bundle",
                signer.issuer()
            ),
        ));
    }
    // Up from the signer through the intermediates to a root.
    let mut current = ders[0].clone();
    let mut chain = Vec::new();
    for depth in 0.. {
        let cert = parse(&current);
        if roots.iter().any(|r| r == &current || signs(&parse(r), &cert)) {
            break;
        }
        let Some(next) = intermediates.iter().find(|i| signs(&parse(i), &cert)).cloned() else {
            let place = files.bundle.as_ref().map_or(String::new(), |b| format!(" or in {}", b.display()));
            return Err(refuse(
                cert_path,
                format!("{} is issued by {}, which is no root or intermediate in this file{place}", cert.subject(), cert.issuer()),
            ));
        };
        if depth >= MAX_DEPTH {
            return Err(refuse(cert_path, format!("more than {MAX_DEPTH} intermediates up to the root")));
        }
        check_ca(cert_path, "an intermediate", &parse(&next), now)?;
        chain.push(next.clone());
        current = next;
    }
    let signer_is_root = roots.contains(&ders[0]);

    // rcgen signs as a Certificate value: one with the signer's exact name
    // and key identifier, so that leaves chain to it in every verifier.
    let mut params = CertificateParams::default();
    params.distinguished_name = issuer_name(cert_path, &signer)?;
    for extension in signer.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(id) = extension.parsed_extension() {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id.0.to_vec());
        }
    }
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = params.self_signed(&key).map_err(|e| refuse(key_path, format!("cannot sign with this key: {e}")))?;
    let same_name = x509_parser::parse_x509_certificate(issuer.der()).is_ok_and(|(_, c)| c.subject().as_raw() == signer.subject().as_raw());
    if !same_name {
        return Err(refuse(cert_path, "the certificate's subject name is encoded in a way Trefoil cannot reproduce as an issuer name"));
    }

    let mut chain_pem = String::new();
    if !signer_is_root {
        chain_pem.push_str(&pem_of(&ders[0]));
        for der in &chain {
            chain_pem.push_str(&pem_of(der));
        }
    }
    let root_pem: String = roots.iter().map(|r| pem_of(r)).collect();
    tracing::info!(
        cert = %cert_path.display(),
        subject = %signer.subject(),
        intermediate = !signer_is_root,
        roots = roots.len(),
        "using the operator's CA"
    );
    Ok(Authority::operator(trust_domain, key, root_pem, ders[0].clone(), chain_pem, issuer))
}
