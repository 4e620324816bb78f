//! The authority against real tools: `openssl verify` checks the chain and
//! `openssl x509` reads the SPIFFE URI, and every way a CSR can overreach is
//! refused with nothing issued.

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn id(workload: &str) -> SpiffeId {
    SpiffeId::workload(TrustDomain::default(), "default", workload).unwrap()
}

/// A CSR for `key` asking for `sans`.
fn csr(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn openssl(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn spiffe_ids_parse_only_the_issued_shape() {
    let web = id("web");
    assert_eq!(web.to_string(), "spiffe://trefoil.local/ns/default/sa/web");
    assert_eq!("spiffe://trefoil.local/ns/default/sa/web".parse::<SpiffeId>(), Ok(web));
    for bad in [
        "https://trefoil.local/ns/default/sa/web",
        "spiffe://Trefoil.local/ns/default/sa/web",
        "spiffe://trefoil.local:8080/ns/default/sa/web",
        "spiffe://user@trefoil.local/ns/default/sa/web",
        "spiffe://trefoil.local/ns/default/sa/web/",
        "spiffe://trefoil.local/ns//sa/web",
        "spiffe://trefoil.local/ns/../sa/web",
        "spiffe://trefoil.local/ns/default/sa/web?x=1",
        "spiffe://trefoil.local/ns/default/sa/web#x",
        "spiffe://trefoil.local/ns/default/web",
        "spiffe://trefoil.local",
        "spiffe:///ns/default/sa/web",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad} must be refused");
    }
    assert!(SpiffeId::workload(TrustDomain::default(), "default", "a/b").is_err());
    assert!(format!("spiffe://trefoil.local/ns/default/sa/{}", "w".repeat(2100)).parse::<SpiffeId>().is_err());
}

#[test]
fn an_issued_svid_verifies_against_the_root_and_carries_one_spiffe_uri() {
    let now = SystemTime::now();
    let ca = Authority::generate(TrustDomain::default(), now).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = ca.issue(&csr(&key, vec![uri("spiffe://trefoil.local/ns/default/sa/web")]), &id("web"), DAY, now).unwrap();
    assert_eq!(issued.not_after.duration_since(now).unwrap(), DAY);
    assert_eq!(issued.renew_at.duration_since(now).unwrap(), DAY * 2 / 3);

    let dir = std::env::temp_dir().join(format!("trefoil-ca-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), &issued.certificate_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "root.pem", "-purpose", "sslclient", "leaf.pem"], &dir);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["verify", "-CAfile", "root.pem", "-purpose", "sslserver", "leaf.pem"], &dir);
    assert!(ok, "{out}");
    let (ok, text) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], &dir);
    assert!(ok, "{text}");
    assert!(text.contains("URI:spiffe://trefoil.local/ns/default/sa/web"), "{text}");
    assert!(text.contains("CA:FALSE") && text.contains("Digital Signature"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Subject: CN"), "an X.509-SVID needs no subject: {text}");
    let (ok, root) = openssl(&["x509", "-in", "root.pem", "-noout", "-text"], &dir);
    assert!(ok && root.contains("CA:TRUE, pathlen:0") && root.contains("Certificate Sign"), "{root}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A CSR with no SAN gets the caller's identity: it comes from the
    // caller's credentials, not from the request.
    let issued = ca.issue(&csr(&key, Vec::new()), &id("web"), DAY, now).unwrap();
    assert!(issued.certificate_pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn a_reloaded_authority_issues_under_the_stored_root() {
    let now = SystemTime::now();
    let first = Authority::generate(TrustDomain::default(), now).unwrap();
    let reloaded = Authority::from_pem(TrustDomain::default(), &first.key_pem(), first.root_pem()).unwrap();
    assert_eq!(reloaded.root_pem(), first.root_pem());
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let issued = reloaded.issue(&csr(&key, Vec::new()), &id("api"), DAY, now).unwrap();
    let dir = std::env::temp_dir().join(format!("trefoil-ca-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.pem"), first.root_pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), &issued.certificate_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "root.pem", "leaf.pem"], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "the stored root verifies what the reloaded authority issues: {out}");

    // Another authority's root with this key is refused.
    let other = Authority::generate(TrustDomain::default(), now).unwrap();
    assert!(matches!(Authority::from_pem(TrustDomain::default(), &first.key_pem(), other.root_pem()), Err(AuthorityError::Mismatch)));
}

#[test]
fn csrs_that_overreach_are_refused_and_nothing_is_issued() {
    let now = SystemTime::now();
    let ca = Authority::generate(TrustDomain::default(), now).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let web = id("web");

    let another = csr(&key, vec![uri("spiffe://trefoil.local/ns/default/sa/payments")]);
    assert!(matches!(ca.issue(&another, &web, DAY, now), Err(IssueError::WrongIdentity { .. })));
    let two = csr(&key, vec![uri("spiffe://trefoil.local/ns/default/sa/web"), uri("spiffe://trefoil.local/ns/default/sa/db")]);
    assert!(matches!(ca.issue(&two, &web, DAY, now), Err(IssueError::WrongIdentity { .. })));
    let dns = csr(&key, vec![SanType::DnsName("bank.example".try_into().unwrap())]);
    assert!(matches!(ca.issue(&dns, &web, DAY, now), Err(IssueError::ExtraName(_))));
    let ip = csr(&key, vec![SanType::IpAddress([10, 0, 0, 1].into())]);
    assert!(matches!(ca.issue(&ip, &web, DAY, now), Err(IssueError::ExtraName(_))));

    // Signed by another key than the one it carries: one flipped bit of the signature.
    let mut forged = csr(&key, Vec::new());
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(ca.issue(&forged, &web, DAY, now).unwrap_err(), IssueError::Signature);
    assert!(matches!(ca.issue(b"not a csr", &web, DAY, now), Err(IssueError::Malformed(_))));
    let mut trailing = csr(&key, Vec::new());
    trailing.push(0);
    assert!(matches!(ca.issue(&trailing, &web, DAY, now), Err(IssueError::Malformed(_))));
    assert!(matches!(ca.issue(&vec![0x30; MAX_CSR_BYTES + 1], &web, DAY, now), Err(IssueError::TooLarge(_))));

    let ok = csr(&key, Vec::new());
    assert!(matches!(ca.issue(&ok, &web, Duration::from_secs(1), now), Err(IssueError::Lifetime(_))));
    assert!(matches!(ca.issue(&ok, &web, MAX_LIFETIME * 2, now), Err(IssueError::Lifetime(_))));
    let elsewhere = SpiffeId::workload("other.domain".parse().unwrap(), "default", "web").unwrap();
    assert!(matches!(ca.issue(&ok, &elsewhere, DAY, now), Err(IssueError::TrustDomain { .. })));
}

#[test]
fn arbitrary_bytes_as_a_csr_never_panic() {
    let ca = Authority::generate(TrustDomain::default(), SystemTime::now()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let good = csr(&key, vec![uri("spiffe://trefoil.local/ns/default/sa/web")]);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..rng.usize(1..8) {
            let i = rng.usize(..bytes.len());
            bytes[i] = rng.u8(..);
        }
        bytes.truncate(rng.usize(1..=bytes.len()));
        // Any answer but a panic; a mangled request must never be issued.
        if let Ok(issued) = ca.issue(&bytes, &id("web"), DAY, SystemTime::now()) {
            assert_eq!(bytes, good, "issued for a mangled CSR: {}", issued.certificate_pem);
        }
    }
}

#[test]
fn a_renewal_proves_the_current_svid_with_its_key() {
    let now = SystemTime::now();
    let ca = Authority::generate(TrustDomain::default(), now).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let first = ca.issue(&csr(&key, Vec::new()), &id("web"), DAY, now).unwrap();
    let der = |pem: &str| rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec();
    let current = der(&first.certificate_pem);

    let (who, renewed) = ca.renew(&csr(&key, Vec::new()), &current, DAY, now).unwrap();
    assert_eq!(who, id("web"), "the identity comes from the SVID presented");
    assert_ne!(der(&renewed.certificate_pem), current);

    // Another key than the SVID's: whoever replays a renewal gets nothing.
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert_eq!(ca.renew(&csr(&other, Vec::new()), &current, DAY, now).unwrap_err(), IssueError::KeyChanged);
    // Past its end, an SVID proves nothing.
    assert_eq!(ca.renew(&csr(&key, Vec::new()), &current, DAY, now + DAY * 2).unwrap_err(), IssueError::Expired);
    // One from another authority, or not a certificate at all, is refused.
    let stranger = Authority::generate(TrustDomain::default(), now).unwrap();
    let foreign = der(&stranger.issue(&csr(&key, Vec::new()), &id("web"), DAY, now).unwrap().certificate_pem);
    assert!(matches!(ca.renew(&csr(&key, Vec::new()), &foreign, DAY, now), Err(IssueError::NotOurs(_))));
    assert!(matches!(ca.renew(&csr(&key, Vec::new()), b"junk", DAY, now), Err(IssueError::NotOurs(_))));
    // The CSR still may not ask for more than the SVID proves.
    let another = csr(&key, vec![uri("spiffe://trefoil.local/ns/default/sa/payments")]);
    assert!(matches!(ca.renew(&another, &current, DAY, now), Err(IssueError::WrongIdentity { .. })));
}
