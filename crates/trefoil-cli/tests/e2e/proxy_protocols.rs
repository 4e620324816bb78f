//! HTTP/2, gRPC, TLS, mutual TLS and opaque TCP through a real proxy,
//! driven by real clients: curl, h2load, Python grpcio.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trefoil_model::spec::{
    AppProtocol, BackendRef, ListenerProtocol, ListenerSpec, ListenerTls, RouteMatch, RouteRule, TlsMode, TrafficPolicySpec, UpstreamTls,
};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{
    equals, listener, listener_spec, resource, route, route_all, rule_to, service, service_speaking, traffic_policy,
};
use trefoil_testkit::{
    count, curl_many, free_addr, grpc_server, http_get, http_request, repo_root, run_with_timeout, scratch_dir, wait_until, Nginx, Proxy,
    ScriptServer, TestServer,
};

#[test]
fn h2c_prior_knowledge_under_h2load() {
    let up = TestServer::named("up");
    let public = free_addr();
    let proxy = Proxy::start(vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    let out = run_with_timeout(
        Command::new("h2load").args(["-n", "2000", "-c", "4", "-m", "10", &format!("http://{public}/")]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    // An HTTP/2 client, an HTTP/1.1 upstream: the proxy translates.
    let echo = run_with_timeout(
        Command::new("curl").args(["-s", "--http2-prior-knowledge", &format!("http://{public}/echo")]),
        Duration::from_secs(10),
    );
    let echo: serde_json::Value = serde_json::from_slice(&echo.stdout).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(proxy.metric_sum("trefoil_requests_total", &["status_code=\"200\""]), 2001.0);
}

#[test]
fn http2_upstreams_get_http2() {
    let up = TestServer::named("h2-up");
    let public = free_addr();
    let _proxy =
        Proxy::start(vec![listener("public", public), service_speaking("web", AppProtocol::Http2, &[(up.addr(), "v1")]), route_all("web")]);
    let (status, _, body) = http_get(public, "x", "/echo");
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/2.0");
}

#[test]
fn grpc_unary_streaming_errors_and_trailers_pass_through() {
    let server = grpc_server("grpc-v1");
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service_speaking("echo", AppProtocol::Grpc, &[(server.addr, "v1")]),
        route_all("echo"),
    ]);
    let out = run_with_timeout(
        Command::new("python3").arg(repo_root().join("tests/grpc/grpc_client.py")).args([
            "--target",
            &public.to_string(),
            "--check",
            "--count",
            "25",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(proxy.metric_sum("trefoil_requests_total", &["service=\"echo\""]) >= 4.0);
    // gRPC errors travel in an HTTP 200: the access log and metrics tell them apart.
    wait_until("the failed call's log line", Duration::from_secs(10), || proxy.access_log().contains("/trefoil.test.Echo/Fail"));
    let log = proxy.access_log();
    let grpc_status = |path: &str| {
        let line = log.lines().find(|l| l.contains(path)).unwrap_or_else(|| panic!("no line for {path}:\n{log}"));
        serde_json::from_str::<serde_json::Value>(line).unwrap()["grpc_status"].clone()
    };
    assert_eq!(grpc_status("/trefoil.test.Echo/Fail"), 5, "NOT_FOUND");
    assert_eq!(grpc_status("/trefoil.test.Echo/Unary"), 0);
    assert_eq!(proxy.metric_sum("trefoil_grpc_responses_total", &["grpc_status=\"5\"", "service=\"echo\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_grpc_responses_total", &["grpc_status=\"0\""]), 3.0);
}

/// gRPC interop's `cancel_after_begin` and `timeout_on_sleeping_server`:
/// a client that gives up before the response headers still gets its
/// access-log line and its `trefoil_requests_total` sample, as a 499.
#[test]
fn grpc_calls_abandoned_before_the_headers_are_recorded_as_499() {
    let marker = scratch_dir().join("sleeping");
    let marker = marker.to_str().unwrap();
    let server =
        ScriptServer::start("tests/grpc/grpc_server.py", &["--listen", "127.0.0.1:0", "--name", "sleepy", "--sleep-marker", marker]);
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service_speaking("echo", AppProtocol::Grpc, &[(server.addr, "v1")]),
        route_all("echo"),
    ]);
    let client = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new("python3").arg(repo_root().join("tests/grpc/grpc_client.py")).args(["--target", &public.to_string()]).args(args),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    };
    client(&["--cancel-after-begin", marker]);
    client(&["--sleeping-server-timeout", "1"]);
    wait_until("both abandoned calls in the access log", Duration::from_secs(10), || proxy.access_log().lines().count() >= 2);
    let lines: Vec<serde_json::Value> = proxy.access_log().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let flags: Vec<&str> = lines.iter().map(|l| l["flag"].as_str().unwrap_or_default()).collect();
    assert_eq!(flags, ["downstream_cancelled", "downstream_timeout"], "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["path"], "/trefoil.test.Echo/Unary", "{line}");
        assert_eq!(line["service"], "echo", "{line}");
    }
    assert_eq!(proxy.metric_sum("trefoil_requests_total", &["status_code=\"499\"", "service=\"echo\""]), 2.0);
    assert_eq!(proxy.metric_sum("trefoil_local_replies_total", &["flag=\"downstream_timeout\""]), 1.0);
}

/// A CA, a server certificate for 127.0.0.1/localhost, and a client
/// certificate with a SPIFFE identity, written as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "trefoil test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.subject_alt_names.push(SanType::URI("spiffe://trefoil.test/ns/default/sa/client".try_into().unwrap()));
    client_params.distinguished_name.push(DnType::CommonName, "client");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
    }
}

/// A Listener on `address` terminating TLS with the server certificate of
/// `pki`, and asking clients for one signed by its CA.
fn tls_listener(name: &str, address: std::net::SocketAddr, pki: &Pki) -> Resource {
    let tls = ListenerTls {
        certificate: pki.server_cert.display().to_string(),
        key: pki.server_key.display().to_string(),
        client_ca: Some(pki.ca.display().to_string()),
    };
    resource(name, Spec::Listener(ListenerSpec { tls: Some(tls), ..listener_spec(address) }))
}

#[test]
fn mutual_tls_with_alpn_h2_and_peer_identity() {
    let up = TestServer::named("up");
    let pki = make_pki(&scratch_dir());
    let public = free_addr();
    let plain = free_addr();
    // Requests proving the client identity go to `trusted`; the identity header is the proxy's own.
    let proven = RouteMatch {
        headers: vec![equals("x-trefoil-peer-identity", "spiffe://trefoil.test/ns/default/sa/client")],
        ..RouteMatch::default()
    };
    let identity_route = route("web", &["*"], vec![RouteRule { matches: vec![proven], ..rule_to("trusted") }, rule_to("web")]);
    let trusted = TestServer::named("trusted");
    let proxy = Proxy::start(vec![
        tls_listener("secure", public, &pki),
        listener("plain", plain),
        service("web", &[(up.addr(), "v1")]),
        service("trusted", &[(trusted.addr(), "v1")]),
        identity_route,
    ]);
    let url = format!("https://localhost:{}/echo", public.port());
    let resolve = format!("localhost:{}:127.0.0.1", public.port());
    let with_cert = run_with_timeout(
        Command::new("curl")
            .args(["-s", "--http2", "--resolve", &resolve, "--cacert"])
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .args(["-w", "\n%{http_version}", &url]),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&with_cert.stdout);
    assert!(text.ends_with("\n2"), "negotiated HTTP/2 over ALPN: {text}");
    let echo: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["name"], "trusted", "routed on the verified identity");
    assert_eq!(echo["headers"]["x-trefoil-peer-identity"], "spiffe://trefoil.test/ns/default/sa/client");
    // A client cannot claim an identity by sending the header itself.
    let (_, _, forged) =
        http_request(plain, "GET", "x", "/echo", &[("x-trefoil-peer-identity", "spiffe://trefoil.test/ns/default/sa/client")], b"")
            .unwrap();
    let forged: serde_json::Value = serde_json::from_slice(&forged).unwrap();
    assert_eq!(forged["name"], "up");
    assert!(forged["headers"].get("x-trefoil-peer-identity").is_none(), "{forged}");
    let without_cert = run_with_timeout(
        Command::new("curl").args(["-s", "--resolve", &resolve, "--cacert"]).arg(&pki.ca).arg(&url),
        Duration::from_secs(10),
    );
    assert!(!without_cert.status.success(), "a client without a certificate must be refused");
    wait_until("access-log line with the peer identity", Duration::from_secs(5), || {
        proxy.access_log().contains("spiffe://trefoil.test/ns/default/sa/client")
    });
    assert!(
        proxy.metric_sum(
            "trefoil_tls_handshakes_total",
            &["peer_identity=\"spiffe://trefoil.test/ns/default/sa/client\"", "result=\"success\""]
        ) >= 1.0
    );
    assert!(proxy.metric_sum("trefoil_tls_handshakes_total", &["result=\"failure\""]) >= 1.0);
    // HTTP/1.1 over TLS works too.
    let h1 = run_with_timeout(
        Command::new("curl")
            .args(["-s", "--http1.1", "--resolve", &resolve, "--cacert"])
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", &url]),
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&h1.stdout), "200 1.1");
}

#[test]
fn tls_origination_with_client_certificate_to_a_tls_upstream() {
    // The upstream is a second trefoil listener terminating mutual TLS: a
    // real TLS server that insists on a client certificate.
    let up = TestServer::named("behind-tls");
    let pki = make_pki(&scratch_dir());
    let (inner, outer) = (free_addr(), free_addr());
    let inner_proxy = Proxy::start(vec![tls_listener("inner", inner, &pki), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    let tls = UpstreamTls {
        mode: TlsMode::Mutual,
        ca: Some(pki.ca.display().to_string()),
        certificate: Some(pki.client_cert.display().to_string()),
        key: Some(pki.client_key.display().to_string()),
        sni: Some("localhost".into()),
    };
    let _outer_proxy = Proxy::start(vec![
        listener("outer", outer),
        service("secure", &[(inner, "v1")]),
        traffic_policy(TrafficPolicySpec { service: "secure".into(), tls: Some(tls), ..TrafficPolicySpec::default() }),
        route_all("secure"),
    ]);
    let (status, headers, _) = http_get(outer, "x", "/");
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-served-by").map(String::as_str), Some("behind-tls"));
    wait_until("the inner proxy to log the outer's identity", Duration::from_secs(5), || {
        inner_proxy.access_log().contains("spiffe://trefoil.test/ns/default/sa/client")
    });
}

#[test]
fn opaque_tcp_and_protocol_detection() {
    let up = TestServer::named("tcp-up");
    let (tcp, auto) = (free_addr(), free_addr());
    let to_web =
        |protocol| ListenerSpec { protocol, tcp_backend: Some(BackendRef { service: "web".into(), version: None }), ..listener_spec(tcp) };
    let proxy = Proxy::start(vec![
        resource("raw", Spec::Listener(to_web(ListenerProtocol::Tcp))),
        resource("sniff", Spec::Listener(ListenerSpec { address: auto, ..to_web(ListenerProtocol::Auto) })),
        service("web", &[(up.addr(), "v1")]),
        route_all("web"),
    ]);
    // HTTP carried as opaque bytes: the proxy does not parse it.
    assert_eq!(http_get(tcp, "x", "/").0, 200);
    assert_eq!(proxy.metric_sum("trefoil_tcp_connections_total", &["service=\"web\""]), 1.0);
    wait_until("bytes counted", Duration::from_secs(5), || proxy.metric_sum("trefoil_tcp_bytes_total", &["flow=\"downstream\""]) > 0.0);
    // On the auto listener HTTP is detected and routed (it appears in request metrics)...
    assert_eq!(http_get(auto, "x", "/").0, 200);
    assert_eq!(proxy.metric_sum("trefoil_requests_total", &["route=\"web\""]), 1.0);
    // ...and bytes that are not HTTP (a server-first client stays silent) are forwarded opaquely.
    let mut s = TcpStream::connect(auto).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(proxy.metric_sum("trefoil_tcp_connections_total", &["service=\"web\""]), 2.0);
}

#[test]
fn nginx_as_a_real_upstream() {
    let nginx = Nginx::static_files(&[("index.html", b"hello from nginx\n")]);
    let public = free_addr();
    let _proxy = Proxy::start(vec![listener("public", public), service("nginx", &[(nginx.addr, "v1")]), route_all("nginx")]);
    let results = curl_many(&format!("http://{public}/index.html"), 100, &[]);
    assert_eq!(count(&results, |r| r.0 == 200), 100);
    assert_eq!(http_get(public, "web.local", "/index.html").2, "hello from nginx\n");
}
