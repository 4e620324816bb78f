//! The config stream authenticates its proxies (decision 0022), in a mesh
//! `trefoil up` runs: the port speaks only TLS; a connection without a
//! client certificate gets no snapshot, only its first SVID for a join
//! token; and a proxy holding the SVID of one workload cannot say Hello as
//! another's proxy, while the same SVID passes for its own name.
//!
//! Needs `trefoil-testserver` built (`cargo build -p trefoil-testkit --bins`).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::UnboundedReceiverStream;
use trefoil_control::identity::join::{JoinIdentity, JoinTokens};
use trefoil_model::spec::WorkloadSpec;
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{http_health, resource, workload};
use trefoil_testkit::{testserver_path, Up};
use trefoil_wire::{ClientTls, Code, ConfigStreamClient, Hello, ProxyMessage, Snapshot, Status};

use crate::identity_e2e::{ask, csr_for, trust_bundle};

fn web() -> Resource {
    let server = testserver_path();
    assert!(server.is_file(), "build trefoil-testserver first: cargo build -p trefoil-testkit --bins");
    let server = server.display().to_string();
    let args = ["--listen", "127.0.0.1:${PORT}", "--name", "web-0"];
    resource("web", Spec::Workload(WorkloadSpec { health: http_health("/healthz"), ..workload("web", &server, &args) }))
}

/// Opens a stream as proxy `name` (over TLS with `tls`, or plaintext),
/// says Hello and ACKs version 0, and returns its first message or the
/// status that ended it.
fn first_message(grpc: &str, tls: Option<ClientTls>, name: &str) -> Result<Snapshot, Status> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = ConfigStreamClient::connect_with(grpc, Duration::from_secs(3), tls)
            .await
            .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
        let (say, said) = tokio::sync::mpsc::unbounded_channel();
        let hello = Hello { proxy: name.into(), admin_address: "127.0.0.1:9".into(), pid: 1, ..Default::default() };
        say.send(ProxyMessage::hello(hello)).unwrap();
        say.send(ProxyMessage::ack(0, 0)).unwrap();
        let mut snapshots = client.stream(UnboundedReceiverStream::new(said)).await.map_err(|e| match e {
            trefoil_wire::ClientError::Refused(status) => status,
            other => Status::unavailable(other.to_string()),
        })?;
        let next = tokio::time::timeout(Duration::from_secs(15), snapshots.message()).await.expect("an answer or an end in time");
        drop(say);
        match next {
            Ok(Some(snapshot)) => Ok(snapshot),
            Ok(None) => Err(Status::cancelled("the stream ended without a status")),
            Err(status) => Err(status),
        }
    })
}

#[test]
fn the_config_stream_holds_each_proxy_to_its_svid() {
    let mut up = Up::start(web());
    up.wait_ready(&["web-0"]);
    let grpc = up.view()["grpc"].as_str().unwrap().to_string();
    let bundle = trust_bundle(&up);

    // Plaintext is refused at the handshake: the server's TLS alert is no
    // HTTP/2 the client can read, so no gRPC answer at all.
    let plaintext = first_message(&grpc, None, "web-0").expect_err("a plaintext stream is refused");
    assert!(matches!(plaintext.code(), Code::Internal | Code::Unavailable | Code::Unknown), "{plaintext:?}");

    // TLS without an SVID and without a join token: refused, no snapshot.
    let anonymous = ClientTls::new(&bundle, None).unwrap();
    let refused = first_message(&grpc, Some(anonymous), "web-0").expect_err("no snapshot without an SVID");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("presents no SVID"), "{refused:?}");

    // A proxy of workload web gets its SVID with a join token over that
    // same kind of connection...
    let tokens = JoinTokens::new(&up.state.join("data"));
    let web = JoinIdentity { namespace: "default".into(), workload: "web".into() };
    let token = tokens.mint(&web, Duration::from_secs(60), std::time::SystemTime::now()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let request = trefoil_wire::CertificateRequest { csr_der: csr_for(&key, None), join_token: token, current_svid_der: vec![] };
    let answer = ask(&grpc, &bundle, request);
    assert!(answer.error.is_empty(), "{answer:?}");
    let chain = rustls_pemfile::certs(&mut answer.certificate_chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let svid = Arc::new(rustls::sign::CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).unwrap());
    let as_web = || Some(ClientTls::new(&bundle, Some(svid.clone())).unwrap());

    // ...and with it cannot pose as another workload's proxy.
    let posing = first_message(&grpc, as_web(), "api-0").expect_err("the web SVID cannot say Hello as api-0");
    assert_eq!(posing.code(), Code::PermissionDenied, "{posing:?}");
    assert!(posing.message().contains("spiffe://trefoil.local/ns/default/sa/web") && posing.message().contains("api-0"), "{posing:?}");

    // Its own workload's names pass the identity check: web-0 is held by
    // the running sidecar (so the name itself is refused, as taken), and a
    // further replica's name gets its snapshot.
    let taken = first_message(&grpc, as_web(), "web-0").expect_err("web-0 is connected");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let snapshot = first_message(&grpc, as_web(), "web-5").expect("a snapshot for web's own proxy name");
    assert!(snapshot.identity.is_none(), "{snapshot:?}");

    // The mesh's own sidecar kept working throughout.
    up.wait_ready(&["web-0"]);
}
