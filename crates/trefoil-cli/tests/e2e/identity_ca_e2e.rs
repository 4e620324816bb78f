//! The mesh CA end to end (issue 15): an intermediate the operator made
//! with openssl signs the SVIDs of a mesh `trefoil up` runs, and they chain
//! to the operator's root as `openssl verify` checks it; bad CA files are
//! refused at start naming the file; and `trefoil ca rotate` in a running
//! mesh with mutual TLS on every hop moves every proxy to the new root
//! under load with no failed request, the bundle holding both roots during
//! the overlap and the old root gone after it.
//!
//! Needs `openssl`, `python3` and `trefoil-testserver` built
//! (`cargo build -p trefoil-testkit --bins`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trefoil_testkit::{free_addr, http_get, quickstart_mesh, trefoil_command, wait_until, Load, Up};

const SIDECARS: [&str; 4] = ["web-v1-0", "web-v2-0", "api-0", "api-1"];

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trefoil-ca-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// root.pem/root.key, an intermediate int.pem/int.key below it (as an
/// operator makes them), and leaf.pem/leaf.key, a certificate that is no CA.
fn operator_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let (ok, out) = openssl(dir, args);
        assert!(ok, "openssl {args:?}: {out}");
    };
    for key in ["root.key", "int.key", "leaf.key"] {
        run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
    }
    run(&["req", "-x509", "-new", "-key", "root.key", "-subj", "/O=Example/CN=Example Root CA", "-days", "30", "-out", "root.pem"]);
    std::fs::write(
        dir.join("int.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    std::fs::write(dir.join("leaf.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n").unwrap();
    run(&["req", "-new", "-key", "int.key", "-subj", "/O=Example/CN=Mesh intermediate", "-out", "int.csr"]);
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
    for key in ["root.key", "int.key", "leaf.key"] {
        std::fs::set_permissions(dir.join(key), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
}

fn address(up: &Up, process: &str, name: &str) -> SocketAddr {
    up.process(process)["addresses"][name].as_str().unwrap_or_else(|| panic!("{process} has no {name} address")).parse().unwrap()
}

/// A proxy's `/identity` document.
fn identity(admin: SocketAddr) -> Value {
    let (_, _, body) = http_get(admin, "admin", "/identity");
    serde_json::from_str(&body).unwrap_or_default()
}

fn roots_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// `trefoil ca status -o json` of the mesh.
fn ca_status(up: &Up) -> Value {
    let out = up.cli(&["ca", "status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ca status prints JSON")
}

/// Whether the SVID chain in `doc` verifies against `root` alone, checked by openssl in `dir`.
fn chains_to(dir: &Path, doc: &Value, root: &str) -> bool {
    let Some(chain) = doc["certificatePem"].as_str() else { return false };
    std::fs::write(dir.join("svid.pem"), chain).unwrap();
    std::fs::write(dir.join("anchor.pem"), root).unwrap();
    openssl(dir, &["verify", "-CAfile", "anchor.pem", "-untrusted", "svid.pem", "svid.pem"]).0
}

#[test]
fn an_operator_intermediate_signs_the_meshs_svids_and_bad_ca_files_are_refused() {
    let pki = scratch("operator");
    operator_pki(&pki);
    let path = |f: &str| pki.join(f).display().to_string();

    // Refused at start, naming the file: a certificate that is no CA, a key of another certificate.
    let refused = |cert: &str, key: &str| {
        let data = pki.join(format!("data-{cert}-{key}"));
        let out = trefoil_command()
            .args(["control", "--data", &data.display().to_string(), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--ca-cert", &path(cert), "--ca-key", &path(key), "--ca-bundle", &path("root.pem")])
            .output()
            .expect("trefoil control runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = refused("leaf.pem", "leaf.key");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&path("leaf.pem")) && err.contains("not a CA certificate"), "{err}");
    let (code, err) = refused("int.pem", "root.key");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&path("root.key")) && err.contains("does not match the certificate"), "{err}");

    // The mesh runs on the intermediate.
    let mut up = Up::start_with_args(
        quickstart_mesh(free_addr()),
        &["--ca-cert", &path("int.pem"), "--ca-key", &path("int.key"), "--ca-bundle", &path("root.pem")],
    );
    up.wait_ready(&SIDECARS);
    let admin = address(&up, "api-0-sidecar", "admin");
    let mut doc = Value::Null;
    wait_until("api's sidecar's SVID", Duration::from_secs(30), || {
        doc = identity(admin);
        doc["spiffeId"].is_string()
    });
    let chain = doc["certificatePem"].as_str().unwrap();
    assert_eq!(roots_in(chain), 2, "the SVID comes with the intermediate: {chain}");
    std::fs::write(pki.join("chain.pem"), chain).unwrap();
    let (ok, out) = openssl(&pki, &["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "chain.pem"]);
    assert!(ok && out.contains("chain.pem: OK"), "the SVID chains to the operator's root: {out}");
    let (ok, text) = openssl(&pki, &["x509", "-in", "chain.pem", "-noout", "-issuer"]);
    assert!(ok && text.contains("Mesh intermediate"), "{text}");
    let bundle = doc["trustBundlePem"].as_str().unwrap();
    assert_eq!(bundle.trim(), std::fs::read_to_string(pki.join("root.pem")).unwrap().trim(), "proxies trust the operator's root");

    let status = ca_status(&up);
    assert_eq!(status["source"], "operator", "{status}");
    assert!(status["signer"]["subject"].as_str().unwrap().contains("Mesh intermediate"), "{status}");
    assert_eq!(status["roots"].as_array().unwrap().len(), 1, "{status}");
    let shown = String::from_utf8_lossy(&up.cli(&["ca", "status"]).stdout).into_owned();
    assert!(shown.contains("intermediate") && !shown.contains("PRIVATE KEY"), "{shown}");
    // The key is read in place: no copy of it anywhere in the state directory.
    let key = std::fs::read_to_string(pki.join("int.key")).unwrap();
    let copies = Command::new("grep").args(["-rlF", key.lines().nth(1).unwrap()]).arg(&up.state).output().unwrap();
    assert!(copies.stdout.is_empty(), "the key was copied: {}", String::from_utf8_lossy(&copies.stdout));
    // An operator's CA is rotated by replacing its files.
    let rotate = up.cli(&["ca", "rotate"]);
    assert_eq!(rotate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rotate.stderr).contains("--ca-cert"), "{}", String::from_utf8_lossy(&rotate.stderr));
    drop(up);
    std::fs::remove_dir_all(&pki).unwrap();
}

#[test]
fn a_root_rotation_under_load_moves_every_proxy_to_the_new_root_with_no_failed_request() {
    let gateway = free_addr();
    let mut up = Up::start_with_args(quickstart_mesh(gateway), &["--svid-lifetime", "6s"]);
    up.wait_ready(&SIDECARS);
    up.wait_up();
    wait_until("the gateway serving web", Duration::from_secs(30), || http_get(gateway, "edge", "/").0 == 200);
    let admins: Vec<SocketAddr> =
        SIDECARS.iter().map(|s| address(&up, &format!("{s}-sidecar"), "admin")).chain([address(&up, "gateway", "admin")]).collect();
    wait_until("every proxy's SVID", Duration::from_secs(30), || admins.iter().all(|a| identity(*a)["spiffeId"].is_string()));
    let root_file = up.state.join("data/ca/trefoil.local/root.pem");
    let old_root = std::fs::read_to_string(&root_file).unwrap();
    let before = ca_status(&up);
    assert_eq!(before["roots"].as_array().unwrap().len(), 1, "{before}");

    // A viewer may look but not rotate.
    let viewer = up.cli(&["token", "create", "--role", "viewer"]);
    let viewer = String::from_utf8_lossy(&viewer.stdout).trim().to_string();
    let server = format!("http://{}", up.api());
    let denied = trefoil_command().args(["ca", "rotate", "--server", &server, "--token", &viewer]).output().unwrap();
    assert_eq!(denied.status.code(), Some(1), "{}", String::from_utf8_lossy(&denied.stderr));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("needs admin"), "{}", String::from_utf8_lossy(&denied.stderr));
    // An overlap shorter than an SVID lives is refused.
    let short = up.cli(&["ca", "rotate", "--overlap", "2s"]);
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("shorter than the SVID lifetime"));

    let load = Load::start(&up.dir, gateway);
    let rotated = up.cli(&["ca", "rotate", "--overlap", "10s", "-o", "json"]);
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    let roots = rotated["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2, "both roots during the overlap: {rotated}");
    assert_eq!((roots[0]["signing"].as_bool(), roots[1]["state"].as_str()), (Some(true), Some("retiring")), "{rotated}");
    let new_root = std::fs::read_to_string(&root_file).unwrap();
    assert_ne!(new_root, old_root);

    // Every proxy holds both roots, then an SVID of the new root.
    wait_until("both roots in every proxy's bundle", Duration::from_secs(10), || {
        admins.iter().all(|a| identity(*a)["trustBundlePem"].as_str().is_some_and(|b| roots_in(b) == 2))
    });
    wait_until("every proxy renewed onto the new root", Duration::from_secs(30), || {
        admins.iter().all(|a| chains_to(&up.dir, &identity(*a), &new_root))
    });
    // The overlap ends: the status says so, and proxies drop the old root.
    wait_until("the old root leaving the bundle", Duration::from_secs(30), || {
        ca_status(&up)["roots"].as_array().is_some_and(|r| r.len() == 1)
    });
    wait_until("every proxy trusting the new root only", Duration::from_secs(10), || {
        admins.iter().all(|a| identity(*a)["trustBundlePem"].as_str().is_some_and(|b| roots_in(b) == 1 && b.trim() == new_root.trim()))
    });
    // Traffic keeps flowing on the new root alone, for a few more renewals.
    let issued: Vec<u64> = admins.iter().map(|a| identity(*a)["issued"].as_u64().unwrap_or(0)).collect();
    wait_until("another renewal of every SVID", Duration::from_secs(30), || {
        admins.iter().zip(&issued).all(|(a, n)| identity(*a)["issued"].as_u64().unwrap_or(0) > *n)
    });
    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "requests failed across the rotation: {traffic}");
    let sent = traffic["sent"].as_u64().unwrap_or(0);
    assert!(sent > 50, "{traffic}");
    assert!(admins.iter().all(|a| !chains_to(&up.dir, &identity(*a), &old_root)), "no SVID of the old root is left");
    eprintln!("rotation: {sent} requests, 0 failed");
    let after = ca_status(&up);
    assert_eq!(after["generation"], 1, "{after}");
}

#[test]
fn an_external_ca_command_signs_the_meshs_svids_and_traffic_flows_over_mtls() {
    let pki = scratch("external");
    let run = |args: &[&str]| {
        let (ok, out) = openssl(&pki, args);
        assert!(ok, "openssl {args:?}: {out}");
    };
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "corp.key"]);
    run(&["req", "-x509", "-new", "-key", "corp.key", "-subj", "/O=Example/CN=Corporate CA", "-days", "30", "-out", "corp.pem"]);
    // The example of docs/security.md, logging each SPIFFE id it signs for.
    let command = pki.join("sign");
    std::fs::write(
        &command,
        format!(
            "#!/bin/sh\necho \"$TREFOIL_SPIFFE_ID\" >> {dir}/signed.log\n\
             ext=$(mktemp) && trap 'rm -f \"$ext\"' EXIT\n\
             printf 'subjectAltName=%s\\nbasicConstraints=critical,CA:FALSE\\n' \"$TREFOIL_SUBJECT_ALT_NAMES\" > \"$ext\"\n\
             openssl x509 -req -CA {dir}/corp.pem -CAkey {dir}/corp.key -days 1 -extfile \"$ext\"\n",
            dir = pki.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&command, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = |f: &str| pki.join(f).display().to_string();

    // Refused at start: without --ca-bundle, and with --ca-cert.
    let data = pki.join("data-refused");
    let out = trefoil_command()
        .args(["control", "--data", &data.display().to_string(), "--ca-external-command", &path("sign")])
        .output()
        .expect("trefoil control runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-bundle"), "{}", String::from_utf8_lossy(&out.stderr));

    let gateway = free_addr();
    let mut up = Up::start_with_args(quickstart_mesh(gateway), &["--ca-external-command", &path("sign"), "--ca-bundle", &path("corp.pem")]);
    up.wait_ready(&SIDECARS);
    up.wait_up();
    let admins: Vec<SocketAddr> = SIDECARS.iter().map(|s| address(&up, &format!("{s}-sidecar"), "admin")).collect();
    wait_until("every sidecar's SVID", Duration::from_secs(30), || admins.iter().all(|a| identity(*a)["spiffeId"].is_string()));
    let root = std::fs::read_to_string(pki.join("corp.pem")).unwrap();
    for admin in &admins {
        let doc = identity(*admin);
        assert!(chains_to(&pki, &doc, &root), "the SVID chains to the external CA: {doc}");
        assert_eq!(doc["trustBundlePem"].as_str().unwrap_or_default().trim(), root.trim(), "proxies trust the external CA's root");
    }
    let signed = std::fs::read_to_string(pki.join("signed.log")).unwrap();
    assert!(signed.contains("spiffe://trefoil.local/control"), "the control plane's certificate comes from the command: {signed}");
    for workload in ["web", "api"] {
        assert!(signed.contains(&format!("/sa/{workload}")), "the command signed {workload}'s SVID: {signed}");
    }
    // gateway -> web sidecar -> api sidecar, mutual TLS on each hop with the external CA's SVIDs.
    wait_until("the gateway serving web", Duration::from_secs(30), || http_get(gateway, "edge", "/").0 == 200);
    let status = ca_status(&up);
    assert_eq!(status["source"], "external", "{status}");
    let rotate = up.cli(&["ca", "rotate"]);
    assert_eq!(rotate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rotate.stderr).contains("--ca-external-command"), "{}", String::from_utf8_lossy(&rotate.stderr));
    drop(up);
    std::fs::remove_dir_all(&pki).unwrap();
}
