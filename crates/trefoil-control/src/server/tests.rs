use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::store::Store;

/// Conditions are awaited this long at most.
const WAIT: Duration = Duration::from_secs(20);

/// The REST API over a fresh store, served within `limits` on a loopback port.
async fn api(test: &str, limits: Limits) -> (SocketAddr, Arc<Store>) {
    let dir = std::env::temp_dir().join(format!("trefoil-server-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
    let app = crate::api::router(store.clone()).layer(axum::middleware::map_response(crate::api::rescue));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app, limits, std::future::pending()));
    (addr, store)
}

/// Reads until the connection closes, an error, or `WAIT`; what was read.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 16 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Reads one response head (and whatever body came with it) off `stream`.
async fn head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response head");
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on a fresh connection; the status and the JSON body.
async fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: control\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let (reply, _) = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&reply);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
    (status, body)
}

/// Starts a watch of Routes; the stream, once its head has come.
async fn watch(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /api/v1/watch/routes HTTP/1.1\r\nhost: control\r\n\r\n").await.unwrap();
    let head = head(&mut stream).await;
    (stream, head)
}

fn is_json_error(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|e| !e.is_empty())
}

#[tokio::test]
async fn heads_are_bounded_in_size_and_time() {
    let limits = Limits { head_timeout: Duration::from_millis(300), max_head_bytes: 16 << 10, ..Limits::default() };
    let (addr, _) = api("heads", limits).await;
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_all(format!("GET /api/v1/routes HTTP/1.1\r\nhost: control\r\nx-pad: {}\r\n\r\n", "a".repeat(32 << 10)).as_bytes())
        .await
        .unwrap_or(());
    let (reply, closed) = read_to_close(&mut big).await;
    assert!(closed && String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&reply));

    // Half a head, then nothing (slowloris): the connection is closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/v1/routes HTTP/1.1\r\nhost: con").await.unwrap();
    assert!(read_to_close(&mut slow).await.1, "a head that never ends holds its connection");
    // So is an idle keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/v1/routes HTTP/1.1\r\nhost: control\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut idle).await.1, "an idle connection is kept for ever");
}

#[tokio::test]
async fn bodies_are_bounded_in_size_and_time() {
    let limits = Limits { request_timeout: Duration::from_millis(500), ..Limits::default() };
    let (addr, _) = api("bodies", limits).await;
    let (status, body) = call(addr, "POST", "/api/v1/routes", &vec![b' '; MAX_BODY_BYTES + 1]).await;
    assert_eq!(status, 413, "{body}");
    assert!(is_json_error(&body), "{body}");
    // A body that never finishes arriving.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"PUT /api/v1/routes/web HTTP/1.1\r\nhost: control\r\ncontent-length: 100\r\n\r\n{\"apiVersion\"").await.unwrap();
    let reply = head(&mut slow).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let limits = Limits { max_connections: 2, ..Limits::default() };
    let (addr, _) = api("connections", limits).await;
    let held: Vec<TcpStream> = vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /api/v1/routes HTTP/1.1\r\nhost: control\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert!(tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await.is_err(), "served past the limit");
    drop(held);
    assert!(head(&mut third).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn watches_past_the_limit_are_refused_until_one_ends() {
    let limits = Limits { max_watches: 1, ..Limits::default() };
    let (addr, _) = api("watches", limits).await;
    let (first, head) = watch(addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = call(addr, "GET", "/api/v1/routes?watch=true", b"").await;
    assert_eq!(status, 503, "{body}");
    assert!(is_json_error(&body) && body["error"].as_str().unwrap_or_default().contains("watch"), "{body}");
    drop(first);
    let deadline = Instant::now() + WAIT;
    while !watch(addr).await.1.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the slot of a closed watch never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped() {
    let limits = Limits { max_watches: 1, write_stall: Duration::from_millis(300), ..Limits::default() };
    let (addr, store) = api("stall", limits).await;
    // A small receive window, so the server's writes stall soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled.write_all(b"GET /api/v1/watch/routes HTTP/1.1\r\nhost: control\r\n\r\n").await.unwrap();
    let pad = "x".repeat(256 << 10);
    // Changes until the server's buffers are full and a write stalls long
    // enough for the connection to be dropped, which frees the watch slot.
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        store.put("Route", &format!("r{}", i % 8), json!({"i": i, "pad": pad}), None).unwrap();
        if watch(addr).await.1.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "a reader that reads nothing keeps its watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, closed) = read_to_close(&mut stalled).await;
    assert!(closed, "the stalled connection was not closed");
}

/// Values the proxy once parsed again and dropped when that failed (a
/// method, a step's `when`, an endpoint address) are refused at apply, with
/// where they are written, instead of reaching a proxy.
#[tokio::test]
async fn apply_refuses_values_with_a_bad_grammar_where_written() {
    let (addr, store) = api("grammar", Limits::default()).await;
    let route = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - matches: [{method: get}]\n    backends: [{service: web}]\n";
    let cnf = "apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain:\n  - function: acl\n    when: {headers: [{name: x-user, regex: '(['}]}\n";
    let service = "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: 'web:80'}]\n";
    for (path, body, field, line) in [
        ("/api/v1/routes/web", route, "spec.rules[0].matches[0].method", 7),
        ("/api/v1/cnfs/edge", cnf, "spec.chain[0].when.headers[0].regex", 7),
        ("/api/v1/services/web", service, "spec.endpoints[0].address", 5),
    ] {
        let (status, reply) = call(addr, "PUT", path, body.as_bytes()).await;
        assert_eq!(status, 422, "{path}: {reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{path}: {reply}");
        assert_eq!((errors[0]["field"].as_str(), errors[0]["line"].as_u64()), (Some(field), Some(line)), "{path}: {reply}");
    }
    assert!(store.list("Route").is_empty() && store.list("CNF").is_empty() && store.list("Service").is_empty());
    // The same resources written well are stored as written.
    let fixed = route.replace("method: get", "method: GET");
    assert_eq!(call(addr, "PUT", "/api/v1/routes/web", fixed.as_bytes()).await.0, 201);
    let (_, stored) = call(addr, "GET", "/api/v1/routes/web", b"").await;
    assert_eq!(stored["spec"]["rules"][0]["matches"][0]["method"], "GET");
}

/// A check the proxy's compiler alone once made (extAuthz needs a Service
/// speaking HTTP/2) is made at apply against what is stored, both ways, so
/// the user sees it there rather than every proxy refusing the snapshot.
#[tokio::test]
async fn apply_checks_a_resource_against_the_stored_ones_it_must_agree_with() {
    let (addr, _) = api("against", Limits::default()).await;
    let service = |protocol: &str| {
        format!("apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: authz}}\nspec:\n  ports: [{{port: 80, protocol: {protocol}}}]\n")
    };
    let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: authz}\nspec: {service: authz, api: extAuthz}\n";
    // Before its Service exists, the function is accepted: the Service may come later.
    assert_eq!(call(addr, "PUT", "/api/v1/networkfunctions/authz", nf.as_bytes()).await.0, 201);
    let (status, reply) = call(addr, "PUT", "/api/v1/services/authz", service("http").as_bytes()).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!((reply["errors"][0]["field"].as_str(), reply["errors"][0]["line"].as_u64()), (Some("spec.ports[0].protocol"), Some(5)));
    assert_eq!(call(addr, "PUT", "/api/v1/services/authz", service("grpc").as_bytes()).await.0, 201);
    // Re-applying the function against the gRPC Service is fine; against HTTP/1 it is not.
    assert_eq!(call(addr, "PUT", "/api/v1/networkfunctions/authz", nf.as_bytes()).await.0, 200);
    let (status, reply) = call(addr, "PUT", "/api/v1/services/authz", service("http").as_bytes()).await;
    assert_eq!(status, 422, "{reply}");
}
