//! Authorization policies end to end: a real control plane, a real proxy
//! fed by its config stream with a mutual-TLS inbound listener, and curl
//! presenting client certificates with SPIFFE URI SANs made here. The
//! allowed principal passes, others get 403 `rbac_denied` (access log and
//! `trefoil_authz_denied_total`), deny overrides allow, a forged identity
//! header changes nothing, and a policy change applied through the API
//! takes effect while the allowed caller's requests keep succeeding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use trefoil_model::spec::Endpoint;
use trefoil_model::spec::{ListenerSpec, ListenerTls, ProxySpec, ServiceSpec};
use trefoil_model::Spec;
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{listener_spec, resource, route, rule_to, secs};
use trefoil_testkit::{curl_many, free_addr, http_get, quickstart_mesh, scratch_dir, wait_until, Control, StreamProxy, TestServer, Up};

const WEB: &str = "spiffe://trefoil.local/ns/default/sa/web";
const BATCH: &str = "spiffe://trefoil.local/ns/default/sa/batch";

/// PEM files: the CA, the listener's certificate, and one client
/// certificate (with its key) per SPIFFE id.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    clients: Vec<(PathBuf, PathBuf)>,
}

fn make_pki(dir: &Path, ids: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "trefoil authz test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &ca, &ca_key).unwrap();
    let clients = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names.push(SanType::URI((*id).try_into().unwrap()));
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (write(&format!("client-{i}.pem"), cert.pem()), write(&format!("client-{i}-key.pem"), key.serialize_pem()))
        })
        .collect();
    Pki {
        ca: write("ca.pem", ca.pem()),
        server: (write("server.pem", server.pem()), write("server-key.pem", server_key.serialize_pem())),
        clients,
    }
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!("apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{service: web}}\n  action: {action}\n  rules: {rules}\n")
}

#[test]
fn policies_allow_deny_and_change_live_on_a_mutual_tls_inbound() {
    let dir = scratch_dir();
    let pki = make_pki(&dir, &[WEB, BATCH]);
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let up = TestServer::named("web");
    let proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    let control = Control::start_on(&dir.join("data"), api, grpc);
    let access_log = dir.join("access.log");
    let proxy_spec = ProxySpec { access_log: access_log.display().to_string(), drain_timeout: secs(2), ..ProxySpec::with_defaults() };
    control.put(&resource("edge", Spec::Proxy(proxy_spec)));
    let tls = ListenerTls {
        certificate: pki.server.0.display().to_string(),
        key: pki.server.1.display().to_string(),
        client_ca: Some(pki.ca.display().to_string()),
    };
    // An inbound listener (the default direction): it enforces the policies of its routes' backends.
    let spec = ListenerSpec { tls: Some(tls), proxy: Some("edge".into()), ..listener_spec(public) };
    control.put(&resource("secure", Spec::Listener(spec)));
    let endpoints = vec![Endpoint { address: up.addr(), version: "v1".into(), mesh_tls: false }];
    control.put(&resource("web", Spec::Service(ServiceSpec { endpoints, ..ServiceSpec::default() })));
    control.put(&route("web", &["*"], vec![rule_to("web")]));
    control.put_yaml(
        "AuthorizationPolicy",
        "from-web",
        &policy("from-web", "allow", "[{from: [{principals: ['spiffe://trefoil.local/ns/*/sa/web']}]}]"),
    );
    control.put_yaml("AuthorizationPolicy", "no-admin", &policy("no-admin", "deny", "[{to: [{paths: ['/admin/*']}]}]"));
    control.wait_in_sync("edge");

    let resolve = format!("localhost:{}:127.0.0.1", public.port());
    let url = |path: &str| format!("https://localhost:{}{path}", public.port());
    let as_client = |i: usize| -> Vec<String> {
        let (cert, key) = &pki.clients[i];
        [
            "--resolve",
            &resolve,
            "--cacert",
            &pki.ca.display().to_string(),
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let get = |i: usize, path: &str, extra: &[&str]| -> u16 {
        let mut args = as_client(i);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_many(&url(path), 1, &args).first().map_or(0, |r| r.0)
    };

    assert_eq!(get(0, "/items", &[]), 200, "the allowed principal passes:\n{}", proxy.log());
    assert_eq!(get(1, "/items", &[]), 403, "another principal is refused by default");
    assert_eq!(get(1, "/items", &["-H", &format!("x-trefoil-peer-identity: {WEB}")]), 403, "a forged identity header changes nothing");
    assert_eq!(get(0, "/admin/users", &[]), 403, "deny overrides allow");
    wait_until("the denials in the access log", WAIT, || {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        log.lines().filter(|l| l.contains("\"flag\":\"rbac_denied\"")).count() == 3
    });
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    assert!(log.lines().any(|l| l.contains("\"authz\":\"deny no-admin/0\"") && l.contains(WEB)), "{log}");
    assert!(log.lines().any(|l| l.contains("\"authz\":\"default-deny\"") && l.contains(BATCH)), "{log}");
    let metrics = http_get(proxy.admin, "admin", "/metrics").2;
    let denied = |labels: &str| -> f64 {
        let prefix = format!("trefoil_authz_denied_total{{{labels}}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    assert_eq!(denied("policy=\"\",rule=\"default-deny\""), 2.0, "{metrics}");
    assert_eq!(denied("policy=\"no-admin\",rule=\"0\""), 1.0, "{metrics}");

    // The CLI explains the same decision from the control plane's policies.
    let out =
        control.command(&["authz", "explain", "--from", WEB, "--to", "web/admin/users", "--method", "GET", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let explained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((explained["allowed"].as_bool(), explained["rule"]["policy"].as_str()), (Some(false), Some("no-admin")), "{explained}");
    let malformed = control.command(&["authz", "explain", "--from", "web", "--to", "web/"]).output().unwrap();
    assert_eq!(malformed.status.code(), Some(2), "a principal that is no SPIFFE id is bad input");
    let out = control.command(&["authz", "explain", "--from", BATCH, "--to", "web/items"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("DENIED") && text.contains("default deny"), "{text}");
    let out = control.command(&["describe", "service", "web", "-o", "json"]).output().unwrap();
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described["related"]["defaultDeny"], true, "{described}");
    assert_eq!(described["related"]["authorizationPolicies"][0]["name"], "no-admin", "deny first: {described}");

    // Live: the allowed caller keeps sending while the policy changes to let
    // batch in too, then back; none of its requests may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, args, target) = (stop.clone(), as_client(0), url("/items"));
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut results = Vec::new();
            // Bounded: at most 200 rounds of 20 requests on one kept-alive connection each.
            for _ in 0..200 {
                results.extend(curl_many(&target, 20, &args));
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            results
        })
    };
    let both = "[{from: [{principals: ['spiffe://trefoil.local/ns/*/sa/web', 'spiffe://trefoil.local/ns/*/sa/batch']}]}]";
    control.put_yaml("AuthorizationPolicy", "from-web", &policy("from-web", "allow", both));
    wait_until("batch to be let in", WAIT, || get(1, "/items", &[]) == 200);
    control.put_yaml(
        "AuthorizationPolicy",
        "from-web",
        &policy("from-web", "allow", "[{from: [{principals: ['spiffe://trefoil.local/ns/*/sa/web']}]}]"),
    );
    wait_until("batch to be refused again", WAIT, || get(1, "/items", &[]) == 403);
    stop.store(true, Ordering::SeqCst);
    let results = load.join().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(results.len() >= 20, "{results:?}");
    assert!(failed.is_empty(), "{} of {} allowed requests failed: {failed:?}", failed.len(), results.len());
}

/// In a `trefoil up` mesh the policy travels to the sidecars of the service
/// it selects: api's sidecars refuse what it denies (the gateway, outbound,
/// checks nothing), web and the rest of api still answer, and deleting the
/// policy through the API lets the path through again.
#[test]
fn a_sidecar_inbound_enforces_the_policies_of_its_service() {
    let gateway = free_addr();
    let deny = "---\napiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api-no-secret}\n\
                spec:\n  selector: {service: api}\n  action: deny\n  rules: [{to: [{paths: ['/api/secret*']}]}]\n";
    let mut up = Up::start(format!("{}{deny}", quickstart_mesh(gateway)));
    up.wait_ready(&["web-v1-0", "web-v2-0", "api-0", "api-1"]);
    up.wait_up();
    wait_until("the gateway serving api", WAIT, || http_get(gateway, "edge", "/api").0 == 200);
    for _ in 0..4 {
        let (status, headers, _) = http_get(gateway, "edge", "/api/secret/x");
        assert_eq!((status, headers.get("x-trefoil-flag").map(String::as_str)), (403, Some("rbac_denied")), "{headers:?}");
        assert_eq!(http_get(gateway, "edge", "/api/open").0, 200);
        assert_eq!(http_get(gateway, "edge", "/").0, 200, "web, and its call to api, are not selected");
    }
    let out = up.cli(&["describe", "service", "api"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("api-no-secret (deny, 1 rule(s))") && text.contains("Default: allow"), "{text}");
    let out = up.cli(&["delete", "authorizationpolicy", "api-no-secret"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the path let through once the policy is gone", WAIT, || http_get(gateway, "edge", "/api/secret/x").0 == 200);
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}
