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

fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn the_bundle_holds_a_retiring_root_until_its_overlap_ends() {
    let now = SystemTime::now();
    let new = Authority::generate(TrustDomain::default(), now).unwrap();
    let old = Authority::generate(TrustDomain::default(), now).unwrap();
    let retiring = vec![Retiring { root_pem: old.root_pem().to_string(), until: now + DAY }];
    let during = bundle_at(new.root_pem(), &retiring, now);
    assert_eq!(pem_count(&during), 2, "both roots during the overlap");
    assert!(during.starts_with(new.root_pem()) && during.contains(old.root_pem()));
    assert_eq!(bundle_at(new.root_pem(), &retiring, now + DAY), new.root_pem(), "the old root is gone when the overlap ends");
    assert_eq!(next_drop(&retiring, now), Some(now + DAY));
    assert_eq!(next_drop(&retiring, now + DAY), None);
    // A root already in the bundle is not repeated.
    let same = vec![Retiring { root_pem: new.root_pem().to_string(), until: now + DAY }];
    assert_eq!(bundle_at(new.root_pem(), &same, now), new.root_pem());
}

#[test]
fn a_rotation_signs_with_the_new_root_renews_old_svids_and_drops_the_old_root_after_the_overlap() {
    let data = std::env::temp_dir().join(format!("trefoil-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let now = SystemTime::now();
    let lifetime = Duration::from_secs(60);
    let authority = keep::load_or_create(&data, TrustDomain::default(), now).unwrap();
    let old_root = authority.root_pem().to_string();
    let issuer = Issuer::kept(authority, Vec::new(), data.clone(), join::JoinTokens::new(&data), lifetime);
    assert!(matches!(issuer.rotate(Duration::from_secs(30), now), Err(RotateError::OverlapTooShort { .. })), "shorter than an SVID lives");

    // An SVID of the old root, held by a proxy when the rotation happens.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let old_authority = Authority::from_pem(TrustDomain::default(), &keep_key(&data), &old_root).unwrap();
    let held = old_authority.issue(&csr(&key, Vec::new()), &id("web"), lifetime, now).unwrap();
    let der = |pem: &str| rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec();

    let overlap = Duration::from_secs(120);
    let status = issuer.rotate(overlap, now).unwrap();
    assert_eq!(status.generation, 1);
    assert_eq!(status.roots.len(), 2, "{status:?}");
    assert!(status.roots[0].signing && status.roots[0].state == "active");
    assert!(!status.roots[1].signing && status.roots[1].state == "retiring" && status.roots[1].drop_at.is_some());
    let bundle = issuer.trust_bundle();
    assert_eq!(pem_count(&bundle), 2);
    assert!(bundle.contains(&old_root));
    let new_root = std::fs::read_to_string(keep::root_dir(&data, &TrustDomain::default()).join("root.pem")).unwrap();
    assert_ne!(new_root, old_root);

    // The held SVID is renewed, by the new root.
    let request = trefoil_wire::CertificateRequest {
        csr_der: csr(&key, Vec::new()),
        join_token: String::new(),
        current_svid_der: der(&held.certificate_pem),
    };
    let answer = issuer.answer("web-0", &request, now);
    assert!(answer.error.is_empty(), "{}", answer.error);
    std::fs::write(data.join("new.pem"), &new_root).unwrap();
    std::fs::write(data.join("old.pem"), &old_root).unwrap();
    std::fs::write(data.join("leaf.pem"), &answer.certificate_chain_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "new.pem", "leaf.pem"], &data);
    assert!(ok, "the renewed SVID chains to the new root: {out}");
    let (ok, _) = openssl(&["verify", "-CAfile", "old.pem", "leaf.pem"], &data);
    assert!(!ok, "and not to the old one");

    // A restart keeps the overlap; once it ends the old root is gone.
    let retiring = keep::load_retiring(&data, &TrustDomain::default(), now).unwrap();
    assert_eq!(retiring.len(), 1);
    assert_eq!(retiring[0].root_pem, old_root);
    assert!(keep::load_retiring(&data, &TrustDomain::default(), now + overlap).unwrap().is_empty());
    assert_eq!(issuer.next_change(now), Some(now + overlap));
    let after = issuer.status(now + overlap);
    assert_eq!(after.roots.len(), 1, "{after:?}");
    assert!(after.roots[0].signing);
    // Past the overlap an SVID of the old root no longer renews.
    let late = issuer.answer("web-0", &request, now + overlap);
    assert!(late.error.contains("not signed by this authority"), "{}", late.error);
    std::fs::remove_dir_all(&data).unwrap();
}

fn keep_key(data: &std::path::Path) -> String {
    std::fs::read_to_string(keep::root_dir(data, &TrustDomain::default()).join("root.key")).unwrap()
}

/// An operator's PKI made with openssl in `dir`: root.pem/root.key, an
/// intermediate int.pem/int.key below it, and a leaf (not a CA) leaf.pem/leaf.key.
fn operator_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let (ok, out) = openssl(args, dir);
        assert!(ok, "openssl {args:?}: {out}");
    };
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    for key in ["root.key", "int.key", "leaf.key"] {
        run(&[&["genpkey"][..], &ec, &["-out", key]].concat());
    }
    run(&["req", "-x509", "-new", "-key", "root.key", "-subj", "/O=Example/CN=Example Root CA", "-days", "30", "-out", "root.pem"]);
    std::fs::write(
        dir.join("int.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    std::fs::write(dir.join("leaf.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n").unwrap();
    run(&["req", "-new", "-key", "int.key", "-subj", "/O=Example/OU=Mesh/CN=Trefoil intermediate", "-out", "int.csr"]);
    run(&[
        "x509",
        "-req",
        "-in",
        "int.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "int.ext",
        "-out",
        "int.pem",
    ]);
    run(&["req", "-new", "-key", "leaf.key", "-subj", "/CN=not a ca", "-out", "leaf.csr"]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "int.pem",
        "-CAkey",
        "int.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
}

#[test]
fn an_operator_intermediate_signs_svids_that_chain_to_the_operator_root() {
    let dir = std::env::temp_dir().join(format!("trefoil-operator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    operator_pki(&dir);
    let files = OperatorCa { cert: dir.join("int.pem"), key: dir.join("int.key"), bundle: Some(dir.join("root.pem")) };
    let now = SystemTime::now();
    let ca = operator::load(&files, TrustDomain::default(), now).unwrap();
    assert!(ca.is_operator_provided());
    assert_eq!(ca.root_pem().trim(), std::fs::read_to_string(dir.join("root.pem")).unwrap().trim(), "the bundle is the operator's root");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = ca.issue(&csr(&key, Vec::new()), &id("web"), DAY, now).unwrap();
    assert_eq!(pem_count(&issued.certificate_pem), 2, "leaf and intermediate");
    std::fs::write(dir.join("chain.pem"), &issued.certificate_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "chain.pem"], &dir);
    assert!(ok, "{out}");
    // Renewals are checked against the intermediate.
    let der = rustls_pemfile::certs(&mut issued.certificate_pem.as_bytes()).next().unwrap().unwrap().to_vec();
    ca.renew(&csr(&key, Vec::new()), &der, DAY, now).unwrap();

    // The chain in one file (intermediate then root) needs no bundle.
    let both =
        format!("{}{}", std::fs::read_to_string(dir.join("int.pem")).unwrap(), std::fs::read_to_string(dir.join("root.pem")).unwrap());
    std::fs::write(dir.join("both.pem"), both).unwrap();
    operator::load(&OperatorCa { cert: dir.join("both.pem"), key: dir.join("int.key"), bundle: None }, TrustDomain::default(), now)
        .unwrap();
    // The root itself may sign.
    operator::load(&OperatorCa { cert: dir.join("root.pem"), key: dir.join("root.key"), bundle: None }, TrustDomain::default(), now)
        .unwrap();

    let refused = |cert: &str, key: &str, bundle: Option<&str>| {
        let files = OperatorCa { cert: dir.join(cert), key: dir.join(key), bundle: bundle.map(|b| dir.join(b)) };
        operator::load(&files, TrustDomain::default(), now).err().expect("refused").to_string()
    };
    let e = refused("leaf.pem", "leaf.key", Some("root.pem"));
    assert!(e.contains("leaf.pem") && e.contains("not a CA"), "{e}");
    let e = refused("int.pem", "root.key", Some("root.pem"));
    assert!(e.contains("root.key") && e.contains("does not match"), "{e}");
    let e = refused("int.pem", "int.key", None);
    assert!(e.contains("int.pem") && e.contains("--ca-bundle"), "{e}");
    let e = refused("missing.pem", "int.key", None);
    assert!(e.contains("missing.pem") && e.contains("cannot read"), "{e}");
    let e = refused("int.pem", "int.csr", Some("root.pem"));
    assert!(e.contains("int.csr") && e.contains("PKCS#8"), "{e}");
    // Another root than the intermediate's.
    let other = Authority::generate(TrustDomain::default(), now).unwrap();
    std::fs::write(dir.join("other.pem"), other.root_pem()).unwrap();
    let e = refused("int.pem", "int.key", Some("other.pem"));
    assert!(e.contains("int.pem") && e.contains("issued by"), "{e}");
    // An expired CA.
    let expired_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = (now - DAY * 10).into();
    params.not_after = (now - DAY).into();
    std::fs::write(dir.join("expired.pem"), params.self_signed(&expired_key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("expired.key"), expired_key.serialize_pem()).unwrap();
    let e = refused("expired.pem", "expired.key", None);
    assert!(e.contains("expired.pem") && e.contains("expired on"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotations_faster_than_overlaps_end_are_refused_once_the_bundle_is_full() {
    let data = std::env::temp_dir().join(format!("trefoil-rotate-many-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let now = SystemTime::now();
    let lifetime = Duration::from_secs(60);
    let authority = keep::load_or_create(&data, TrustDomain::default(), now).unwrap();
    let issuer = Issuer::kept(authority, Vec::new(), data.clone(), join::JoinTokens::new(&data), lifetime);
    for _ in 0..keep::MAX_RETIRING {
        issuer.rotate(Duration::from_secs(120), now).unwrap();
    }
    let before = issuer.trust_bundle();
    assert!(matches!(issuer.rotate(Duration::from_secs(120), now), Err(RotateError::TooManyRetiring(n)) if n == keep::MAX_RETIRING));
    assert_eq!(issuer.trust_bundle(), before, "a refused rotation changes nothing");
    // Once the overlaps have ended, rotating works again.
    issuer.rotate(Duration::from_secs(120), now + Duration::from_secs(121)).unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// A CA made with openssl in `dir` (`ca.pem`, `ca.key`), as an operator's corporate CA would be.
fn openssl_ca(dir: &std::path::Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (ok, out) = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
        dir,
    );
    assert!(ok, "{out}");
}

/// An executable script `name` in `dir`.
fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The signing script of docs/security.md, against the CA `ca` in `dir`,
/// with the subject alternative names `names` (the environment's by default).
fn signing_script(dir: &std::path::Path, ca: &str, names: &str) -> String {
    let ca = dir.join(ca);
    format!(
        "ext=$(mktemp) && trap 'rm -f \"$ext\"' EXIT\n\
         printf 'subjectAltName=%s\\nbasicConstraints=critical,CA:FALSE\\n' \"{names}\" > \"$ext\"\n\
         openssl x509 -req -CA {ca}.pem -CAkey {ca}.key -days 1 -extfile \"$ext\"",
        ca = ca.display()
    )
}

fn external_authority(dir: &std::path::Path, command: std::path::PathBuf) -> Authority {
    let flags = ExternalCa { command, bundle: dir.join("corp.pem") };
    external::load(&flags, TrustDomain::default()).unwrap()
}

#[test]
fn an_external_command_signs_svids_that_openssl_verifies() {
    let dir = std::env::temp_dir().join(format!("trefoil-external-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    openssl_ca(&dir, "corp");
    let body =
        format!("env | grep '^TREFOIL_' | sort > {}/env\n{}", dir.display(), signing_script(&dir, "corp", "$TREFOIL_SUBJECT_ALT_NAMES"));
    let authority = external_authority(&dir, script(&dir, "sign", &body));
    let key = KeyPair::generate().unwrap();
    let now = SystemTime::now();
    // A proxy's CSR names nothing: the identity is the caller's, passed in the environment.
    let issued = authority.issue(&csr(&key, vec![]), &id("web"), Duration::from_secs(3600), now).unwrap();
    std::fs::write(dir.join("leaf.pem"), &issued.certificate_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "corp.pem", "leaf.pem"], &dir);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-ext", "subjectAltName"], &dir);
    assert!(text.contains("URI:spiffe://trefoil.local/ns/default/sa/web"), "{text}");
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(env.contains("TREFOIL_SPIFFE_ID=spiffe://trefoil.local/ns/default/sa/web\n"), "{env}");
    assert!(env.contains("TREFOIL_LIFETIME_SECONDS=3600\n"), "{env}");
    assert!(env.contains("TREFOIL_TRUST_DOMAIN=trefoil.local\n"), "{env}");
    // openssl issues for a day; the holder still renews on the mesh's schedule.
    assert!(issued.renew_at <= now + Duration::from_secs(2400));
    // The bundle is the operator's roots; a renewal of this SVID is accepted.
    assert!(authority.root_pem().contains("BEGIN CERTIFICATE"));
    let der = rustls_pemfile::certs(&mut issued.certificate_pem.as_bytes()).next().unwrap().unwrap();
    let (renewed_id, _) = authority.renew(&csr(&key, vec![]), &der, Duration::from_secs(3600), now).unwrap();
    assert_eq!(renewed_id, id("web"));
    // The control plane's own serving certificate comes from the command too.
    let control_key = KeyPair::generate().unwrap();
    let control =
        authority.issue_control(&control_key, &["localhost".into()], &["127.0.0.1".parse().unwrap()], Duration::from_secs(3600), now);
    assert!(control.is_ok(), "{control:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_external_command_that_fails_or_lies_issues_nothing() {
    let dir = std::env::temp_dir().join(format!("trefoil-external-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    openssl_ca(&dir, "corp");
    openssl_ca(&dir, "rogue");
    let key = KeyPair::generate().unwrap();
    let (ok, out) = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/",
            "-keyout",
            "other.key",
            "-out",
            "other.csr",
        ],
        &dir,
    );
    assert!(ok, "{out}");
    let other_key = format!(
        "cat >/dev/null\n{}",
        signing_script(&dir, "corp", "$TREFOIL_SUBJECT_ALT_NAMES").replace("-req", &format!("-req -in {}/other.csr", dir.display()))
    );
    let cases = [
        ("fails", "echo 'vault: permission denied' >&2\nexit 1".to_string(), "vault: permission denied"),
        ("garbage", "cat >/dev/null\necho 'hello, world'".to_string(), "printed no CERTIFICATE block"),
        (
            "other-id",
            signing_script(&dir, "corp", "URI:spiffe://trefoil.local/ns/default/sa/admin"),
            "not [URI:spiffe://trefoil.local/ns/default/sa/web]",
        ),
        ("extra-name", signing_script(&dir, "corp", "$TREFOIL_SUBJECT_ALT_NAMES,DNS:example.com"), "DNS:example.com"),
        ("other-key", other_key, "another key"),
        ("a-ca", signing_script(&dir, "corp", "$TREFOIL_SUBJECT_ALT_NAMES").replace("CA:FALSE", "CA:TRUE"), "is not a CA"),
        ("rogue-ca", signing_script(&dir, "rogue", "$TREFOIL_SUBJECT_ALT_NAMES"), "does not verify to the trust bundle"),
    ];
    for (name, body, reason) in cases {
        let command = script(&dir, name, &body);
        let authority = external_authority(&dir, command.clone());
        let err = authority.issue(&csr(&key, vec![]), &id("web"), Duration::from_secs(3600), SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains(&command.display().to_string()), "{name}: {err}");
        assert!(err.contains(reason), "{name}: {err}");
    }
    // A command past its timeout is ended and the request refused.
    let command = script(&dir, "slow", "exec sleep 30");
    let mut slow = external::ExternalCommand::new(command, vec![]).map(|_| ()).unwrap_err();
    assert!(slow.contains("no certificate"), "{slow}");
    let roots = operator::certificates(&dir.join("corp.pem")).unwrap();
    let mut signer = external::ExternalCommand::new(dir.join("slow"), roots).unwrap();
    signer.timeout = Duration::from_millis(200);
    let authority = Authority::external(TrustDomain::default(), signer, std::fs::read_to_string(dir.join("corp.pem")).unwrap());
    slow = authority.issue(&csr(&key, vec![]), &id("web"), Duration::from_secs(3600), SystemTime::now()).unwrap_err().to_string();
    assert!(slow.contains("gave no answer within 200ms"), "{slow}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn external_ca_flags_are_checked_at_start() {
    let dir = std::env::temp_dir().join(format!("trefoil-external-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    openssl_ca(&dir, "corp");
    let missing = ExternalCa { command: dir.join("nope"), bundle: dir.join("corp.pem") };
    let err = external::load(&missing, TrustDomain::default()).err().unwrap().to_string();
    assert!(err.contains("--ca-external-command") && err.contains("nope"), "{err}");
    std::fs::write(dir.join("plain"), "#!/bin/sh\n").unwrap();
    let plain = ExternalCa { command: dir.join("plain"), bundle: dir.join("corp.pem") };
    let err = external::load(&plain, TrustDomain::default()).err().unwrap().to_string();
    assert!(err.contains("not executable"), "{err}");
    let no_bundle = ExternalCa { command: script(&dir, "sign", "exit 1"), bundle: dir.join("none.pem") };
    let err = external::load(&no_bundle, TrustDomain::default()).err().unwrap().to_string();
    assert!(err.contains("none.pem"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
