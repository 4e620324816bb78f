//! The mesh's certificate authority: a root made on first start, and the
//! one operation proxies need from it, turning a certificate signing
//! request into an X.509-SVID for the identity the caller proved.
//!
//! The CSR is parsed, its signature checked (the requester holds the key),
//! and it may ask for at most the one identity the caller already proved:
//! the identity comes from authentication, never from the CSR, so a CSR
//! naming another workload, or adding DNS names or IPs, is refused rather
//! than trimmed. Leaves follow the X.509-SVID rules: one URI SAN, no
//! subject, not a CA, digitalSignature, server and client auth.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::spiffe::{SpiffeId, TrustDomain};

/// How long a root lives; rotated with an overlap before it ends.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Issued lifetimes outside this range are refused: shorter cannot be
/// renewed in time, longer defeats rotation.
/// The floor is low so that tests and demos can watch rotation happen;
/// production lifetimes are hours.
pub const MIN_LIFETIME: Duration = Duration::from_secs(5);
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Leaves start this far in the past, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60);
/// A CSR is a few hundred bytes; anything near this is not one.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why the authority could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("generating the root key: {0}")]
    Generate(rcgen::Error),
    #[error("the stored root key: {0}")]
    Key(rcgen::Error),
    #[error("the stored root certificate: {0}")]
    Root(String),
    #[error("the stored root certificate does not match the stored key")]
    Mismatch,
}

/// Why a CSR was refused; nothing is issued in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("the CSR is {0} bytes, more than the 16 KiB a CSR can need")]
    TooLarge(usize),
    #[error("the CSR is not a PKCS#10 request: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify: the requester does not hold its key")]
    Signature,
    #[error("the CSR's key is {0}; keys must be ECDSA P-256, P-384 or Ed25519")]
    Algorithm(String),
    #[error("the CSR asks for {asked}, but the caller proved {caller}")]
    WrongIdentity { asked: String, caller: String },
    #[error("the CSR asks for {0}; an X.509-SVID carries exactly one URI, the caller's SPIFFE id")]
    ExtraName(String),
    #[error("the caller's trust domain {caller} is not this authority's {ours}")]
    TrustDomain { caller: String, ours: String },
    #[error("lifetime {0:?} is outside 1 minute to 30 days")]
    Lifetime(Duration),
    #[error("signing: {0}")]
    Sign(String),
    #[error("the certificate presented for renewal is not an SVID this authority issued: {0}")]
    NotOurs(String),
    #[error("the certificate presented for renewal expired; the proxy needs a new join token")]
    Expired,
    #[error("a renewal CSR must carry the key of the certificate it renews")]
    KeyChanged,
}

/// An issued X.509-SVID.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then any intermediate up to (not including) the root.
    pub certificate_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the holder should renew: two thirds into its life.
    pub renew_at: SystemTime,
}

/// The signing step of an [`Authority`]. The checks before it (the
/// identity comes from the caller's proof, never from the CSR; one URI
/// SAN; the CSR signed by its key) are the authority's, the same for all.
#[allow(clippy::large_enum_variant)] // one per authority, never moved in a hot path
pub(super) enum Signer {
    /// A key this process holds: a generated root or the operator's files.
    /// `issuer` is the signing certificate as rcgen signs with it: its exact
    /// name, key and key identifier.
    Local { key: KeyPair, issuer: rcgen::Certificate },
    /// The operator's command ([`super::external`]), verified on each answer.
    External(super::external::ExternalCommand),
}

/// A CA key and certificate. For a root the control plane made, the key
/// is persisted by the control plane and never leaves it; for a CA the
/// operator provides ([`Authority::from_operator_files`]) it is read from
/// the operator's file at each start and never copied. Only certificates
/// ([`Authority::root_pem`], the chain in each [`Issued`]) are distributed.
pub struct Authority {
    trust_domain: TrustDomain,
    /// What signs: the only step that differs between the CA's sources.
    signer: Signer,
    /// The roots this authority's chains end at, byte for byte as given.
    root_pem: String,
    /// The signing certificate, DER: renewals are checked against its key.
    signer_der: Vec<u8>,
    /// What follows a leaf in the chains handed out: the intermediate(s)
    /// between the leaf and the roots; empty when a root signs.
    chain_pem: String,
    /// Whether the operator provided this CA (then it is not rotated here).
    operator: bool,
}

impl Authority {
    /// A new root for `trust_domain`, valid from `now` for [`ROOT_LIFETIME`].
    pub fn generate(trust_domain: TrustDomain, now: SystemTime) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(AuthorityError::Generate)?;
        let mut params = root_params(&trust_domain);
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(random_serial().map_err(AuthorityError::Generate)?);
        let root = params.self_signed(&key).map_err(AuthorityError::Generate)?;
        let root_pem = root.pem();
        let signer_der = root.der().to_vec();
        Ok(Authority {
            trust_domain,
            signer: Signer::Local { key, issuer: root },
            root_pem,
            signer_der,
            chain_pem: String::new(),
            operator: false,
        })
    }

    /// The authority as persisted: its key and root certificate in PEM.
    pub fn from_pem(trust_domain: TrustDomain, key_pem: &str, root_pem: &str) -> Result<Self, AuthorityError> {
        let key = KeyPair::from_pem(key_pem).map_err(AuthorityError::Key)?;
        let der = rustls_pemfile::certs(&mut root_pem.as_bytes())
            .next()
            .ok_or_else(|| AuthorityError::Root("no CERTIFICATE block".into()))?
            .map_err(|e| AuthorityError::Root(e.to_string()))?;
        let (_, root) = x509_parser::parse_x509_certificate(&der).map_err(|e| AuthorityError::Root(e.to_string()))?;
        if root.public_key().raw != key.public_key_der().as_slice() {
            return Err(AuthorityError::Mismatch);
        }
        // rcgen signs with a Certificate value: rebuild one with the same
        // name and key; the leaves name the stored root as their issuer.
        let issuer = root_params(&trust_domain).self_signed(&key).map_err(AuthorityError::Key)?;
        Ok(Authority {
            trust_domain,
            signer: Signer::Local { key, issuer },
            root_pem: root_pem.to_string(),
            signer_der: der.to_vec(),
            chain_pem: String::new(),
            operator: false,
        })
    }

    /// An operator's CA, checked by [`super::operator::load`].
    pub(super) fn operator(
        trust_domain: TrustDomain,
        key: KeyPair,
        root_pem: String,
        signer_der: Vec<u8>,
        chain_pem: String,
        issuer: rcgen::Certificate,
    ) -> Self {
        Authority { trust_domain, signer: Signer::Local { key, issuer }, root_pem, signer_der, chain_pem, operator: true }
    }

    /// A CA behind the operator's command, trusting the roots of `bundle_pem`
    /// (the command's chains must end at one of them).
    pub fn external(trust_domain: TrustDomain, command: super::external::ExternalCommand, bundle_pem: String) -> Self {
        let signer_der =
            rustls_pemfile::certs(&mut bundle_pem.as_bytes()).filter_map(Result::ok).map(|c| c.to_vec()).next().unwrap_or_default();
        Authority {
            trust_domain,
            signer: Signer::External(command),
            root_pem: bundle_pem,
            signer_der,
            chain_pem: String::new(),
            operator: true,
        }
    }

    /// Whether an external command signs for this CA.
    pub fn is_external(&self) -> bool {
        matches!(self.signer, Signer::External(_))
    }

    /// Whether the operator provided this CA from files.
    pub fn is_operator_provided(&self) -> bool {
        self.operator
    }

    /// The signing certificate in PEM: the root, or the operator's intermediate.
    pub fn signer_pem(&self) -> String {
        super::operator::pem_of(&self.signer_der)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate(s): the trust bundle proxies verify peers with.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The private key, for the control plane's own store only; empty when
    /// an external command holds it.
    pub fn key_pem(&self) -> String {
        match &self.signer {
            Signer::Local { key, .. } => key.serialize_pem(),
            Signer::External(_) => String::new(),
        }
    }

    /// The one step that differs between sources: `params` (the checked
    /// request's names and rules) signed for the holder of `subject`'s key,
    /// whose CSR is `csr_der`; the chain, leaf first, and its validity.
    fn sign(
        &self,
        params: CertificateParams,
        subject: &impl PublicKeyData,
        csr_der: &[u8],
        spiffe_id: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(String, SystemTime, SystemTime), IssueError> {
        let sign = |e: rcgen::Error| IssueError::Sign(e.to_string());
        match &self.signer {
            Signer::Local { key, issuer } => {
                let (not_before, not_after) = (params.not_before.into(), params.not_after.into());
                let leaf = params.signed_by(subject, issuer, key).map_err(sign)?;
                Ok((format!("{}{}", leaf.pem(), self.chain_pem), not_before, not_after))
            }
            Signer::External(command) => {
                let names: Vec<String> = params
                    .subject_alt_names
                    .iter()
                    .map(|name| match name {
                        SanType::URI(u) => format!("URI:{}", u.as_str()),
                        SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                        SanType::IpAddress(ip) => format!("IP:{ip}"),
                        other => format!("{other:?}"),
                    })
                    .collect();
                let request =
                    super::external::Request { csr_der, spiffe_id, trust_domain: self.trust_domain.as_str(), lifetime, names: &names };
                let signed = command.sign(&request, now)?;
                Ok((signed.chain_pem, signed.not_before, signed.not_after))
            }
        }
    }

    /// An X.509-SVID for `caller` (the identity its credentials proved) on
    /// the key in `csr_der`, valid for `lifetime` from `now`.
    pub fn issue(&self, csr_der: &[u8], caller: &SpiffeId, lifetime: Duration, now: SystemTime) -> Result<Issued, IssueError> {
        self.issue_on(csr_der, caller, None, lifetime, now)
    }

    /// A new X.509-SVID for the holder of `current_der`, an SVID this
    /// authority issued and that is valid at `now`. The CSR must be signed
    /// by the key that SVID certifies: signing it is the proof of holding
    /// the identity, and a recorded renewal replayed by someone else only
    /// gets a certificate for a key they do not have.
    pub fn renew(&self, csr_der: &[u8], current_der: &[u8], lifetime: Duration, now: SystemTime) -> Result<(SpiffeId, Issued), IssueError> {
        self.renew_also(csr_der, current_der, &[], lifetime, now)
    }

    /// [`Authority::renew`], also taking SVIDs that a root in `retiring`
    /// (PEM certificates: roots rotated out, still in their overlap) signed.
    pub fn renew_also(
        &self,
        csr_der: &[u8],
        current_der: &[u8],
        retiring: &[&str],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(SpiffeId, Issued), IssueError> {
        if current_der.len() > MAX_CSR_BYTES {
            return Err(IssueError::TooLarge(current_der.len()));
        }
        let (rest, current) = x509_parser::parse_x509_certificate(current_der).map_err(|e| IssueError::NotOurs(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IssueError::NotOurs(format!("{} bytes after the certificate", rest.len())));
        }
        let mut signers: Vec<Vec<u8>> = match &self.signer {
            Signer::Local { .. } => vec![self.signer_der.clone()],
            Signer::External(command) => command.signers(),
        };
        for pem in retiring {
            signers.extend(rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok).map(|c| c.to_vec()));
        }
        let signed = signers.iter().any(|der| {
            x509_parser::parse_x509_certificate(der).is_ok_and(|(_, ca)| current.verify_signature(Some(ca.public_key())).is_ok())
        });
        if !signed {
            return Err(IssueError::NotOurs("not signed by this authority".into()));
        }
        let unix = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let at = x509_parser::time::ASN1Time::from_timestamp(unix).map_err(|e| IssueError::Sign(e.to_string()))?;
        if !current.validity().is_valid_at(at) {
            return Err(IssueError::Expired);
        }
        let uris: Vec<&str> = current
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.iter().filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None }).collect())
            .unwrap_or_default();
        let [uri] = uris.as_slice() else { return Err(IssueError::NotOurs(format!("{} URI names, not one", uris.len()))) };
        let caller: SpiffeId = uri.parse().map_err(|e: super::spiffe::SpiffeError| IssueError::NotOurs(e.to_string()))?;
        let issued = self.issue_on(csr_der, &caller, Some(&current.public_key().subject_public_key.data), lifetime, now)?;
        Ok((caller, issued))
    }

    /// The control plane's own serving certificate on `key`: the URI
    /// `spiffe://<trust domain>/control` and the DNS names and IP addresses
    /// proxies dial it by, valid for `lifetime` from `now`. Never for a CSR:
    /// only the control plane holds the key.
    pub fn issue_control(
        &self,
        key: &KeyPair,
        dns: &[String],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime) {
            return Err(IssueError::Lifetime(lifetime));
        }
        let sign = |e: rcgen::Error| IssueError::Sign(e.to_string());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = format!("spiffe://{}/control", self.trust_domain).try_into().map_err(sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(name.clone().try_into().map_err(sign)?));
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(sign)?);
        let not_before = now - BACKDATE;
        let not_after = now + lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        // Only an external command needs a CSR: it signs what it is sent.
        let csr = match &self.signer {
            Signer::External(_) => {
                let mut request = CertificateParams::default();
                request.distinguished_name = DistinguishedName::new();
                request.subject_alt_names = params.subject_alt_names.clone();
                request.serialize_request(key).map_err(sign)?.der().to_vec()
            }
            Signer::Local { .. } => Vec::new(),
        };
        let id = format!("spiffe://{}/control", self.trust_domain);
        let (certificate_pem, not_before, not_after) = self.sign(params, key, &csr, &id, lifetime, now)?;
        Ok(Issued { certificate_pem, not_before, not_after, renew_at: renew_at(now, not_after, lifetime) })
    }

    /// [`Authority::issue`], requiring the CSR's key to be `same_key` when given.
    fn issue_on(
        &self,
        csr_der: &[u8],
        caller: &SpiffeId,
        same_key: Option<&[u8]>,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        if csr_der.len() > MAX_CSR_BYTES {
            return Err(IssueError::TooLarge(csr_der.len()));
        }
        if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime) {
            return Err(IssueError::Lifetime(lifetime));
        }
        if caller.trust_domain != self.trust_domain {
            return Err(IssueError::TrustDomain { caller: caller.trust_domain.to_string(), ours: self.trust_domain.to_string() });
        }
        let key = requested_key(csr_der, caller)?;
        if same_key.is_some_and(|k| k != key.public_key.as_slice()) {
            return Err(IssueError::KeyChanged);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = caller.to_string().try_into().map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(|e| IssueError::Sign(e.to_string()))?);
        let not_before = now - BACKDATE;
        let not_after = now + lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let (certificate_pem, not_before, not_after) = self.sign(params, &key, csr_der, &caller.to_string(), lifetime, now)?;
        Ok(Issued { certificate_pem, not_before, not_after, renew_at: renew_at(now, not_after, lifetime) })
    }
}

/// Two thirds into the shorter of the life asked for and the life given:
/// an external CA may issue for longer (openssl counts in days), but the
/// holder renews on the mesh's schedule.
fn renew_at(now: SystemTime, not_after: SystemTime, lifetime: Duration) -> SystemTime {
    let given = not_after.duration_since(now).unwrap_or_default();
    now + given.min(lifetime) * 2 / 3
}

/// The root's name and constraints; the same every time for one trust
/// domain, so a reloaded authority issues under the stored root's name.
fn root_params(trust_domain: &TrustDomain) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Trefoil");
    name.push(DnType::CommonName, format!("Trefoil root CA for {trust_domain}"));
    params.distinguished_name = name;
    // Leaves only: an intermediate below this root is not valid.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// 16 random bytes, top bit clear so the integer stays positive.
fn random_serial() -> Result<SerialNumber, rcgen::Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The CSR's public key, once the CSR is shown to be signed by it and to
/// ask for nothing beyond `caller`.
fn requested_key(csr_der: &[u8], caller: &SpiffeId) -> Result<RequestedKey, IssueError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| IssueError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IssueError::Malformed(format!("{} bytes after the request", rest.len())));
    }
    csr.verify_signature().map_err(|_| IssueError::Signature)?;
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else { continue };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) if *uri == caller.to_string() => {}
                GeneralName::URI(uri) => {
                    return Err(IssueError::WrongIdentity { asked: uri.to_string(), caller: caller.to_string() });
                }
                other => return Err(IssueError::ExtraName(format!("{other}"))),
            }
        }
    }
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    // OIDs of RFC 5480 (id-ecPublicKey with its named curve) and RFC 8410 (Ed25519).
    let signature: &'static SignatureAlgorithm = match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => &rcgen::PKCS_ECDSA_P256_SHA256,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => &rcgen::PKCS_ECDSA_P384_SHA384,
        ("1.3.101.112", None) => &rcgen::PKCS_ED25519,
        (other, curve) => return Err(IssueError::Algorithm(format!("{other}{}", curve.map(|c| format!(" ({c})")).unwrap_or_default()))),
    };
    Ok(RequestedKey { signature, public_key: spki.subject_public_key.data.to_vec() })
}

/// A subject's public key as rcgen writes it into the certificate.
struct RequestedKey {
    signature: &'static SignatureAlgorithm,
    public_key: Vec<u8>,
}

impl PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.signature
    }
}
