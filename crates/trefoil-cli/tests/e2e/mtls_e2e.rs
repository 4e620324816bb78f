//! Mesh mutual TLS end to end (issue 15, decision 0019): in the quickstart
//! mesh as `trefoil up` runs it, the gateway and the sidecars speak mutual
//! TLS with their SVIDs on every hop (gateway -> web's sidecar -> api's
//! sidecar); a sidecar's inbound port refuses plaintext and a client
//! certificate from another CA at the handshake; the peer's SPIFFE id is in
//! the access log; SVIDs that live 20 s rotate under load with no failed
//! request; `tls: permissive` takes plaintext too, and `tls: disable` turns
//! the hop to plaintext, which `trefoil check` warns about.
//!
//! An HTTP/2 service (gRPC's transport) is reached over mesh TLS with ALPN
//! `h2`, gRPC calls of all four kinds cross it, and an opaque TCP service
//! is reached over mesh TLS too.
//!
//! Needs `openssl` and `curl` on the PATH and `trefoil-testserver` built;
//! as root with tcpdump, a capture on loopback shows the bytes between two
//! sidecars are TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::{AppProtocol, BackendRef, ListenerProtocol, ListenerSpec, ProxySpec, WorkloadHealth, WorkloadSpec};
use trefoil_model::{ResourceVersion, Spec};
use trefoil_testkit::resources::{http_health, listener_spec, resource, route_all, service_speaking, workload};
use trefoil_testkit::{free_addr, http_get, quickstart_mesh, repo_root, testserver_path, wait_until, Load, Up};

const SIDECARS: [&str; 4] = ["web-v1-0", "web-v2-0", "api-0", "api-1"];

fn address(up: &Up, process: &str, name: &str) -> SocketAddr {
    up.process(process)["addresses"][name].as_str().unwrap_or_else(|| panic!("{process} has no {name} address")).parse().unwrap()
}

/// The proxy's `/identity` document (`issued`, `serial`, `spiffeId`).
fn identity(admin: SocketAddr) -> Value {
    let (_, _, body) = http_get(admin, "admin", "/identity");
    serde_json::from_str(&body).unwrap_or_default()
}

/// Sum of the `trefoil_tls_handshakes_total` samples of a proxy whose labels contain all of `labels`.
fn handshakes(admin: SocketAddr, labels: &[&str]) -> u64 {
    let (_, _, text) = http_get(admin, "admin", "/metrics");
    text.lines()
        .filter(|l| l.starts_with("trefoil_tls_handshakes_total{") && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A plaintext HTTP/1.1 request on a raw connection: the first bytes of the answer, if any.
fn plaintext(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else { return String::new() };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA of its own and a client certificate it signs, with the SPIFFE id
/// of a real workload of the mesh: only the issuer is wrong.
fn stranger_certificate(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "other-ca.key", "-out", "other-ca.pem", "-subj", "/CN=other", "-days", "1"]].concat(),
    );
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "client.key", "-out", "client.csr", "-subj", "/"]].concat());
    std::fs::write(
        dir.join("client.ext"),
        "subjectAltName=URI:spiffe://trefoil.local/ns/default/sa/web\nextendedKeyUsage=clientAuth,serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "other-ca.pem",
            "-CAkey",
            "other-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "client.ext",
            "-out",
            "client.pem",
        ],
    );
}

/// curl over TLS to `addr` with `extra` arguments: (exit code, HTTP status as curl saw it).
fn curl_tls(dir: &Path, addr: SocketAddr, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(extra)
        .arg(format!("https://{addr}/"))
        .current_dir(dir)
        .output()
        .expect("curl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The serial of the certificate a TLS server at `addr` presents, as
/// `openssl x509 -serial` prints it (the handshake itself fails after it:
/// this client has no certificate).
fn presented_serial(dir: &Path, addr: SocketAddr) -> String {
    let script = format!("openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial");
    let out = Command::new("sh").args(["-c", &script]).current_dir(dir).output().expect("sh runs");
    String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("serial=").to_string()
}

/// Captures loopback traffic to and from the ports of `addrs` while `traffic` runs, and
/// checks it holds TLS application data and no HTTP/1 request or response
/// line. Needs root and tcpdump (`scripts/install-test-deps`); elsewhere it
/// says so and checks nothing.
fn capture_shows_only_tls(dir: &Path, addrs: &[SocketAddr], traffic: impl FnOnce()) {
    if !trefoil_testkit::is_root() || trefoil_testkit::find_command("tcpdump").is_none() {
        eprintln!("skipping the packet capture: needs root and tcpdump; CI runs it as root");
        return traffic();
    }
    let pcap = dir.join("inbound.pcap");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", "lo", "-n", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump starts");
    // tcpdump says "listening on lo" once it captures.
    let mut stderr = std::io::BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("tcpdump's first line");
    assert!(line.contains("listening on"), "tcpdump: {line}");
    traffic();
    // Its last packets are written when it stops (`-U` flushes each one).
    trefoil_testkit::send_signal(tcpdump.id(), libc::SIGINT);
    let _ = tcpdump.wait();
    let mut said = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
    // Filtered afterwards: on the test machine's loopback a port filter
    // given at capture time matched no packet, the same filter on the file does.
    let ports = addrs.iter().map(|a| format!("tcp port {}", a.port())).collect::<Vec<_>>().join(" or ");
    let hops = dir.join("hops.pcap");
    let out = Command::new("tcpdump").arg("-r").arg(&pcap).arg("-w").arg(&hops).arg(&ports).output().expect("tcpdump reads the capture");
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&hops).expect("the filtered capture");
    eprintln!("capture on {addrs:?}: {} bytes; tcpdump: {}", bytes.len(), said.trim().replace('\n', "; "));
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(&[0x17, 0x03, 0x03]), "no TLS application data captured on {addrs:?} ({} bytes)", bytes.len());
    for clear in [&b"GET / HTTP/1.1"[..], b"HTTP/1.1 200", b"x-trefoil-peer-identity"] {
        assert!(!has(clear), "{:?} in clear on {addrs:?}", String::from_utf8_lossy(clear));
    }
}

fn apply_policy(up: &mut Up, mode: &str) -> ResourceVersion {
    let file = up.dir.join(format!("api-tls-{mode}.yaml"));
    let text = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api}}\nspec:\n  service: api\n  tls: {{mode: {mode}}}\n"
    );
    std::fs::write(&file, text).unwrap();
    up.apply(&file);
    let version = up.resource_version("TrafficPolicy", "api").expect("the policy is stored");
    up.wait(&format!("every proxy acknowledged tls: {mode}"), |u| u.all_acked(version));
    version
}

#[test]
fn sidecars_speak_mutual_tls_with_rotating_svids() {
    let gateway = free_addr();
    let mut up = Up::start_with_args(quickstart_mesh(gateway), &["--svid-lifetime", "20s"]);
    up.wait_ready(&SIDECARS);
    up.wait_up();
    wait_until("the gateway serving web", Duration::from_secs(30), || http_get(gateway, "edge", "/").0 == 200);

    // gateway -> web's sidecar -> api's sidecar, each hop mutual TLS.
    let (status, _, body) = http_get(gateway, "edge", "/");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &answer["calls"]["api"]["status"]), (200, &Value::from(200)), "{answer}");
    let api_admin = address(&up, "api-0-sidecar", "admin");
    let web_admin = address(&up, "web-v1-0-sidecar", "admin");
    wait_until("web's SVID at api's sidecar", Duration::from_secs(30), || {
        http_get(gateway, "edge", "/");
        handshakes(api_admin, &["spiffe://trefoil.local/ns/default/sa/web-v", "result=\"success\""]) > 0
    });
    assert!(handshakes(web_admin, &["spiffe://trefoil.local/ns/default/sa/gateway", "result=\"success\""]) > 0, "the gateway's hop");

    // On the wire between sidecars: TLS records, no HTTP in clear.
    let inbound = address(&up, "api-0-sidecar", "inbound");
    let api_inbound = [inbound, address(&up, "api-1-sidecar", "inbound")];
    capture_shows_only_tls(&up.dir, &api_inbound, || {
        for _ in 0..20 {
            assert_eq!(http_get(gateway, "edge", "/").0, 200);
        }
    });

    // The inbound port takes neither plaintext nor another CA's certificate.
    let said = plaintext(inbound);
    assert!(!said.contains("HTTP/1.1"), "plaintext got an HTTP answer: {said:?}");
    stranger_certificate(&up.dir);
    let (code, http) = curl_tls(&up.dir, inbound, &["--cert", "client.pem", "--key", "client.key"]);
    assert!(code != 0 && http == "000", "another CA's certificate: curl exit {code}, HTTP {http}");
    let (code, http) = curl_tls(&up.dir, inbound, &[]);
    assert!(code != 0 && http == "000", "no certificate: curl exit {code}, HTTP {http}");
    assert!(handshakes(api_admin, &["result=\"failure\""]) >= 2, "the refusals are counted");

    // The peer's SPIFFE id is the request's identity in the access log.
    let access_log = up.state.join("logs/access/api-0.log");
    let mut log = String::new();
    let logged = |log: &str| log.lines().any(|l| l.contains("\"peer_identity\":\"spiffe://trefoil.local/ns/default/sa/web-v"));
    for _ in 0..100 {
        log = std::fs::read_to_string(&access_log).unwrap_or_default();
        if logged(&log) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logged(&log), "web's SPIFFE id in api's access log: {log}");
    eprintln!("api-0 access log line: {}", log.lines().last().unwrap_or_default());
    // A client cannot name itself: a forged header changes no peer identity.
    let forged = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "x-trefoil-peer-identity: spiffe://trefoil.local/ns/default/sa/forged"])
        .arg(format!("http://{gateway}/"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "200");
    for replica in ["web-v1-0", "web-v2-0", "api-0", "api-1"] {
        let log = std::fs::read_to_string(up.state.join(format!("logs/access/{replica}.log"))).unwrap_or_default();
        assert!(!log.contains("sa/forged"), "{replica} took a client's word: {log}");
    }

    // Rotation under load: every proxy renews at least twice, no request fails.
    let admins: Vec<SocketAddr> =
        SIDECARS.iter().map(|s| address(&up, &format!("{s}-sidecar"), "admin")).chain([address(&up, "gateway", "admin")]).collect();
    let before: Vec<u64> = admins.iter().map(|a| identity(*a)["issued"].as_u64().unwrap_or(0)).collect();
    let handshakes_before = handshakes(api_admin, &["result=\"success\""]);
    let load = Load::start(&up.dir, gateway);
    wait_until("two renewals of every SVID under load", Duration::from_secs(90), || {
        admins.iter().zip(&before).all(|(a, b)| identity(*a)["issued"].as_u64().unwrap_or(0) >= b + 2)
    });
    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "requests failed while SVIDs rotated: {traffic}");
    let sent = traffic["sent"].as_u64().unwrap_or(0);
    assert!(sent > 50, "{traffic}");
    let renewed: Vec<u64> = admins.iter().map(|a| identity(*a)["issued"].as_u64().unwrap_or(0)).collect();
    eprintln!(
        "rotation: {sent} requests, 0 failed; SVIDs issued per proxy {before:?} -> {renewed:?}; api-0 handshakes {handshakes_before} -> {}",
        handshakes(api_admin, &["result=\"success\""])
    );

    // A new handshake gets the SVID in force: the resolver reads it each time.
    wait_until("api's sidecar presenting its current SVID", Duration::from_secs(10), || {
        let serial = identity(api_admin)["serial"].as_str().unwrap_or_default().to_string();
        presented_serial(&up.dir, inbound) == serial
    });

    // Permissive: plaintext is served too, and mesh clients keep mutual TLS.
    apply_policy(&mut up, "permissive");
    wait_until("api's sidecar serving plaintext", Duration::from_secs(30), || plaintext(inbound).starts_with("HTTP/1.1 200"));
    assert_eq!(http_get(gateway, "edge", "/api").0, 200);

    // Disable: a plaintext hop, which `trefoil check` warns about.
    apply_policy(&mut up, "disable");
    wait_until("api's sidecar serving plaintext", Duration::from_secs(30), || plaintext(inbound).starts_with("HTTP/1.1 200"));
    assert_eq!(http_get(gateway, "edge", "/api").0, 200);
    let check = up.cli(&["check"]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.lines().any(|l| l.starts_with("warn") && l.contains("tls api")), "{said}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

/// A gateway in front of an HTTP/2 service: the hop to its sidecar is mesh
/// TLS with ALPN `h2`, the sidecar sees the gateway's SPIFFE id.
#[test]
fn an_http2_service_is_reached_over_mesh_tls() {
    let server = testserver_path();
    assert!(server.is_file(), "build trefoil-testserver first: cargo build -p trefoil-testkit --bins");
    let server = server.display().to_string();
    let gateway = free_addr();
    let args = ["--listen", "127.0.0.1:${PORT}", "--name", "h2-0"];
    let resources = vec![
        resource("edge", Spec::Proxy(ProxySpec::with_defaults())),
        resource("public", Spec::Listener(ListenerSpec { proxy: Some("edge".into()), ..listener_spec(gateway) })),
        service_speaking("h2", AppProtocol::Http2, &[]),
        resource("h2", Spec::Workload(WorkloadSpec { health: http_health("/healthz"), ..workload("h2", &server, &args) })),
        route_all("h2"),
    ];
    let mut up = Up::start(resources);
    up.wait_ready(&["h2-0"]);
    // The gateway's listener is bound once up reports every proxy in sync;
    // a replica can be ready before that.
    up.wait_up();
    wait_until("the gateway serving h2", Duration::from_secs(30), || http_get(gateway, "h2", "/").0 == 200);
    let edge = address(&up, "edge", "admin");
    let sidecar = address(&up, "h2-0-sidecar", "admin");
    assert!(handshakes(sidecar, &["spiffe://trefoil.local/ns/default/sa/edge", "result=\"success\""]) > 0, "the gateway's hop is mTLS");
    assert!(identity(edge)["spiffeId"] == "spiffe://trefoil.local/ns/default/sa/edge");
    let access_log = up.state.join("logs/access/h2-0.log");
    let mut log = String::new();
    let h2_from_edge = |log: &str| {
        log.lines()
            .any(|l| l.contains("\"protocol\":\"HTTP/2") && l.contains("\"peer_identity\":\"spiffe://trefoil.local/ns/default/sa/edge\""))
    };
    for _ in 0..100 {
        log = std::fs::read_to_string(&access_log).unwrap_or_default();
        if h2_from_edge(&log) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(h2_from_edge(&log), "an HTTP/2 request from the gateway's SPIFFE id in h2-0's access log: {log}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

/// A gateway's TCP listener in front of an opaque TCP service: the bytes
/// to its sidecar go over mesh TLS, and its inbound port takes no plaintext.
#[test]
fn a_tcp_service_is_reached_over_mesh_tls() {
    let server = testserver_path().display().to_string();
    let gateway = free_addr();
    let args = ["--listen", "127.0.0.1:${PORT}", "--name", "raw-0"];
    // Outbound: the gateway's clients have no mesh identity, so raw's
    // policies (below) are enforced by raw's sidecar alone, where the
    // gateway's SPIFFE id is the peer.
    let tcp = ListenerSpec {
        proxy: Some("edge".into()),
        protocol: ListenerProtocol::Tcp,
        tcp_backend: Some(BackendRef { service: "raw".into(), version: None }),
        direction: "outbound".into(),
        ..listener_spec(gateway)
    };
    let resources = vec![
        resource("edge", Spec::Proxy(ProxySpec::with_defaults())),
        resource("public", Spec::Listener(tcp)),
        service_speaking("raw", AppProtocol::Tcp, &[]),
        resource("raw", Spec::Workload(WorkloadSpec { health: http_health("/healthz"), ..workload("raw", &server, &args) })),
    ];
    let mut up = Up::start(resources);
    up.wait_ready(&["raw-0"]);
    // The app speaks HTTP, which the proxies carry as opaque bytes.
    wait_until("the gateway passing bytes to raw", Duration::from_secs(30), || plaintext(gateway).starts_with("HTTP/1.1 200"));
    let sidecar = address(&up, "raw-0-sidecar", "admin");
    assert!(handshakes(sidecar, &["spiffe://trefoil.local/ns/default/sa/edge", "result=\"success\""]) > 0, "the gateway's hop is mTLS");
    let said = plaintext(address(&up, "raw-0-sidecar", "inbound"));
    assert!(!said.contains("HTTP/1.1"), "plaintext got through: {said:?}");

    // Authorization on raw bytes: the sidecar decides each connection by
    // the gateway's verified SPIFFE id. A grant that needs a method cannot
    // open a TCP port, so the gateway's connections are refused (closed
    // before any endpoint is reached, counted, logged)...
    let policy = |rule: &str| {
        format!(
            "apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: raw-callers}}\n\
             spec:\n  selector: {{service: raw}}\n  action: allow\n  rules:\n  - {rule}\n"
        )
    };
    // Only raw's sidecar takes raw's policies: the gateway's snapshot does
    // not change, so it is the sidecar's acknowledgement that counts.
    let sidecar_acked = |u: &Up, version| u.proxies().iter().any(|p| p.name == "raw-0" && p.connected && p.acked_version >= Some(version));
    let file = up.dir.join("raw-callers.yaml");
    std::fs::write(&file, policy("{from: [{principals: ['spiffe://trefoil.local/ns/default/sa/edge']}], to: [{methods: [GET]}]}")).unwrap();
    up.apply(&file);
    let version = up.resource_version("AuthorizationPolicy", "raw-callers").expect("the policy is stored");
    up.wait("raw's sidecar acknowledged the HTTP-only grant", |u| sidecar_acked(u, version));
    assert_eq!(plaintext(gateway), "", "a method grant let a TCP connection through");
    let denied = |admin| {
        let (_, _, text) = http_get(admin, "admin", "/metrics");
        text.lines()
            .filter(|l| l.starts_with("trefoil_authz_denied_total{") && l.contains("rule=\"default-deny\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert!(denied(sidecar) > 0, "the refusal is counted by the sidecar");
    // ...and a grant of the gateway's identity by port lets them through.
    let port = address(&up, "raw-0-sidecar", "inbound").port();
    let grant = format!("{{from: [{{principals: ['spiffe://trefoil.local/ns/*/sa/edge']}}], to: [{{ports: [{port}]}}]}}");
    std::fs::write(&file, policy(&grant)).unwrap();
    up.apply(&file);
    let version = up.resource_version("AuthorizationPolicy", "raw-callers").expect("the policy is stored");
    up.wait("raw's sidecar acknowledged the port grant", |u| sidecar_acked(u, version));
    wait_until("the gateway passing bytes to raw again", Duration::from_secs(30), || plaintext(gateway).starts_with("HTTP/1.1 200"));
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

/// gRPC through a gateway to a sidecar: all four kinds of call over mesh
/// TLS (HTTP/2 with trailers), the sidecar seeing the gateway's SPIFFE id.
#[test]
fn grpc_calls_cross_mesh_tls() {
    let gateway = free_addr();
    let server = repo_root().join("tests/grpc/grpc_server.py").display().to_string();
    let args = [server.as_str(), "--listen", "127.0.0.1:${PORT}", "--name", "echo-0"];
    let tcp_health = Some(WorkloadHealth { http: None, tcp: true });
    let resources = vec![
        resource("edge", Spec::Proxy(ProxySpec::with_defaults())),
        resource("public", Spec::Listener(ListenerSpec { proxy: Some("edge".into()), ..listener_spec(gateway) })),
        service_speaking("echo", AppProtocol::Grpc, &[]),
        resource("echo", Spec::Workload(WorkloadSpec { health: tcp_health, ..workload("echo", "python3", &args) })),
        route_all("echo"),
    ];
    let mut up = Up::start(resources);
    up.wait_ready(&["echo-0"]);
    let client = || {
        Command::new("python3")
            .arg(repo_root().join("tests/grpc/grpc_client.py"))
            .args(["--target", &gateway.to_string(), "--authority", "echo", "--check"])
            .output()
            .expect("python3 runs")
    };
    wait_until("all four kinds of gRPC call through the gateway", Duration::from_secs(30), || client().status.success());
    let sidecar = address(&up, "echo-0-sidecar", "admin");
    assert!(handshakes(sidecar, &["spiffe://trefoil.local/ns/default/sa/edge", "result=\"success\""]) > 0, "the gateway's hop is mTLS");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}
