//! Mesh identity end to end: a sidecar started by `trefoil up` gets an
//! X.509-SVID from the control plane's CA, checked with `openssl` as an
//! operator would; it renews on its own, also across a killed and
//! restarted control plane, which keeps its root; and the config stream refuses a
//! spent join token (the one the sidecar itself used) and a CSR asking for
//! another workload's identity.
//!
//! Needs `trefoil-testserver` built (`cargo build -p trefoil-testkit --bins`)
//! and `openssl` on the PATH.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio_stream::wrappers::UnboundedReceiverStream;
use trefoil_control::identity::join::{JoinIdentity, JoinTokens};
use trefoil_model::spec::WorkloadSpec;
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{http_health, resource, workload};
use trefoil_testkit::{http_get, send_signal, testserver_path, wait_until, Up};
use trefoil_wire::{CertificateRequest, ConfigStreamClient, Hello, IdentityAnswer, ProxyMessage};

fn web() -> Resource {
    let server = testserver_path();
    assert!(server.is_file(), "build trefoil-testserver first: cargo build -p trefoil-testkit --bins");
    let server = server.display().to_string();
    let args = ["--listen", "127.0.0.1:${PORT}", "--name", "web-0"];
    resource("web", Spec::Workload(WorkloadSpec { health: http_health("/healthz"), ..workload("web", &server, &args) }))
}

/// The sidecar's `/identity`, once it has an SVID.
fn identity(admin: SocketAddr) -> Option<Value> {
    let (status, _, body) = http_get(admin, "admin", "/identity");
    let doc: Value = serde_json::from_str(&body).ok()?;
    (status == 200 && doc["spiffeId"].is_string()).then_some(doc)
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Checks the SVID in `doc` with openssl: one URI SAN, the web workload's,
/// and a chain that verifies against the bundle served beside it.
fn check_with_openssl(dir: &Path, doc: &Value) {
    std::fs::write(dir.join("svid.pem"), doc["certificatePem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("bundle.pem"), doc["trustBundlePem"].as_str().unwrap()).unwrap();
    let (ok, text) = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    let uris: Vec<&str> = text.split([',', '\n']).map(str::trim).filter(|t| t.starts_with("URI:")).collect();
    assert_eq!(uris, ["URI:spiffe://trefoil.local/ns/default/sa/web"], "{text}");
    let (ok, out) = openssl(dir, &["verify", "-CAfile", "bundle.pem", "svid.pem"]);
    assert!(ok && out.contains("svid.pem: OK"), "{out}");
}

/// The mesh root of `up`'s control plane, as `trefoil up` hands it to proxies.
pub(crate) fn trust_bundle(up: &Up) -> String {
    let path = trefoil_control::identity::keep::bundle_path(&up.state.join("data"), &Default::default());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sends one certificate request on a fresh stream (TLS, verifying the
/// control plane against `bundle`, with no client certificate: a proxy's
/// bootstrap) and returns its answer.
pub(crate) fn ask(grpc: &str, bundle: &str, request: CertificateRequest) -> IdentityAnswer {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = trefoil_wire::ClientTls::new(bundle, None).expect("the bundle makes a TLS client");
        let mut client =
            ConfigStreamClient::connect_with(grpc, Duration::from_secs(3), Some(tls)).await.expect("the config stream answers");
        let (say, said) = tokio::sync::mpsc::unbounded_channel();
        let hello = Hello {
            proxy: "intruder".into(),
            admin_address: "127.0.0.1:9".into(),
            version: 0,
            hash: 0,
            pid: 1,
            kind: String::new(),
            looked_up: Vec::new(),
        };
        say.send(ProxyMessage::hello(hello)).unwrap();
        say.send(ProxyMessage::csr(request)).unwrap();
        let mut answers = client.stream(UnboundedReceiverStream::new(said)).await.expect("the stream opens");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), answers.message()).await.expect("an answer in time");
            if let Some(answer) = message.expect("the stream stays open").expect("a message").identity {
                return answer;
            }
        }
    })
}

fn csr(uri: Option<&str>) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    csr_for(&key, uri)
}

/// A CSR on `key`, asking for `uri` when given.
pub(crate) fn csr_for(key: &rcgen::KeyPair, uri: Option<&str>) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uri.map(|u| rcgen::SanType::URI(u.try_into().unwrap())).into_iter().collect();
    params.serialize_request(key).unwrap().der().to_vec()
}

/// The join token `trefoil up` gave process `pid`, read from its environment.
fn join_token_of(pid: u64) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the sidecar's environment");
    let token = environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(b"TREFOIL_JOIN_TOKEN=")).expect("up hands the sidecar a token");
    String::from_utf8(token.to_vec()).unwrap()
}

#[test]
fn a_sidecar_gets_an_svid_renews_it_and_tokens_cannot_be_reused() {
    let mut up = Up::start_with_args(web(), &["--svid-lifetime", "6s"]);
    up.wait_ready(&["web-0"]);
    let sidecar = up.process("web-0-sidecar");
    let admin: SocketAddr = sidecar["addresses"]["admin"].as_str().unwrap().parse().unwrap();
    assert!(
        !sidecar.to_string().contains("TREFOIL_JOIN_TOKEN") && !up.stderr().contains("tj1."),
        "the token is on no command line or output"
    );

    let mut first = None;
    wait_until("the sidecar's first SVID", Duration::from_secs(30), || {
        first = identity(admin);
        first.is_some()
    });
    let first = first.unwrap();
    assert_eq!(first["spiffeId"], "spiffe://trefoil.local/ns/default/sa/web");
    check_with_openssl(&up.dir, &first);

    // Renewed at two thirds of six seconds: a new serial, still verifying.
    let mut renewed = None;
    wait_until("a renewed SVID", Duration::from_secs(30), || {
        renewed = identity(admin).filter(|doc| doc["serial"] != first["serial"]);
        renewed.is_some()
    });
    let renewed = renewed.unwrap();
    assert!(renewed["issued"].as_u64() >= Some(2), "{renewed}");
    check_with_openssl(&up.dir, &renewed);

    // The control plane dies; its successor has the same root, and the
    // proxy renews over the SVID it holds (its token is long spent).
    let control = up.process("control");
    let restarts = control["restarts"].as_u64().unwrap_or(0);
    send_signal(control["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    up.wait("the control plane restarted", |u| {
        let c = u.process("control");
        c["restarts"].as_u64().unwrap_or(0) > restarts && c["ready"] == true
    });
    let before = renewed["issued"].as_u64().unwrap();
    let mut after_restart = None;
    wait_until("an SVID renewed by the restarted control plane", Duration::from_secs(30), || {
        after_restart = identity(admin).filter(|doc| doc["issued"].as_u64() > Some(before + 1));
        after_restart.is_some()
    });
    let after_restart = after_restart.unwrap();
    assert_eq!(after_restart["trustBundlePem"], first["trustBundlePem"], "the same root after a restart");
    check_with_openssl(&up.dir, &after_restart);

    // The token the sidecar redeemed is spent: replaying it gets nothing.
    let grpc = up.view()["grpc"].as_str().unwrap().to_string();
    let spent = join_token_of(sidecar["pid"].as_u64().unwrap());
    let bundle = trust_bundle(&up);
    let replay = ask(&grpc, &bundle, CertificateRequest { csr_der: csr(None), join_token: spent, current_svid_der: vec![] });
    assert!(replay.error.contains("already used") && replay.certificate_chain_pem.is_empty(), "{replay:?}");

    // A token for web cannot buy another workload's identity.
    let tokens = JoinTokens::new(&up.state.join("data"));
    let web = JoinIdentity { namespace: "default".into(), workload: "web".into() };
    let token = tokens.mint(&web, Duration::from_secs(60), std::time::SystemTime::now()).unwrap();
    let payments = csr(Some("spiffe://trefoil.local/ns/default/sa/payments"));
    let refused = ask(&grpc, &bundle, CertificateRequest { csr_der: payments, join_token: token, current_svid_der: vec![] });
    assert!(
        refused.error.contains("asks for spiffe://trefoil.local/ns/default/sa/payments") && refused.certificate_chain_pem.is_empty(),
        "{refused:?}"
    );
}
