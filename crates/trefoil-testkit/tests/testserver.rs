//! Drives the real `trefoil-testserver` binary through the lib's helpers.

use std::time::{Duration, Instant};

use trefoil_testkit::{http_get, http_request, testserver_path, wait_for_port, TestServer};

fn server(args: &[&str]) -> TestServer {
    // Cargo builds the binary for this crate's integration tests and says where.
    TestServer::spawn_binary(env!("CARGO_BIN_EXE_trefoil-testserver").as_ref(), args)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body}"))
}

#[test]
fn default_lookup_finds_the_cargo_built_binary() {
    let found = testserver_path().canonicalize().expect("testserver_path exists");
    let cargo = std::path::Path::new(env!("CARGO_BIN_EXE_trefoil-testserver")).canonicalize().unwrap();
    assert_eq!(found, cargo);
    let srv = TestServer::named("lookup");
    assert!(wait_for_port(srv.addr(), Duration::from_secs(1)));
}

#[test]
fn default_response_and_served_by() {
    let srv = server(&["--name", "alpha"]);
    let (status, headers, body) = http_get(srv.addr(), "example.test", "/anything");
    assert_eq!(status, 200);
    assert_eq!(body, "alpha\n");
    assert_eq!(headers["x-served-by"], "alpha");
    assert_eq!(headers["content-length"], "6");
}

#[test]
fn healthz_toggles_and_is_not_counted() {
    let srv = server(&["--fail-every", "1"]);
    let (status, _, body) = http_get(srv.addr(), "h", "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    srv.set_healthy(false);
    assert_eq!(http_get(srv.addr(), "h", "/healthz").0, 503);
    srv.set_healthy(true);
    assert_eq!(http_get(srv.addr(), "h", "/healthz").0, 200);
    assert_eq!(srv.requests(), 0);
    // Wrong method on a control path is refused, not treated as a toggle.
    assert_eq!(http_get(srv.addr(), "h", "/__health/fail").0, 405);
    assert_eq!(http_get(srv.addr(), "h", "/healthz").0, 200);
}

#[test]
fn status_route() {
    let srv = server(&[]);
    let (status, headers, _) = http_get(srv.addr(), "h", "/status/418");
    assert_eq!(status, 418);
    assert_eq!(headers["x-served-by"], "testserver");
    let (status, _, body) = http_get(srv.addr(), "h", "/status/204");
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(http_get(srv.addr(), "h", "/status/abc").0, 400);
    assert_eq!(http_get(srv.addr(), "h", "/status/101").0, 400);
}

#[test]
fn echo_describes_request() {
    let srv = server(&["--name", "echoer"]);
    let (status, headers, body) = http_request(
        srv.addr(),
        "POST",
        "svc.test",
        "/echo?a=1&b=2",
        &[("X-Multi", "one"), ("x-multi", "two"), ("Content-Type", "text/plain")],
        b"hello world",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&String::from_utf8(body).unwrap());
    assert_eq!(v["name"], "echoer");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["query"], "a=1&b=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["authority"], "svc.test");
    assert_eq!(v["headers"]["host"], "svc.test");
    assert_eq!(v["headers"]["x-multi"], "one, two");
    assert_eq!(v["body_len"], 11);
}

#[test]
fn stats_count_and_reset() {
    let srv = server(&[]);
    for _ in 0..3 {
        http_get(srv.addr(), "h", "/a");
    }
    http_get(srv.addr(), "h", "/b?x=1");
    http_get(srv.addr(), "h", "/healthz");
    let stats = srv.stats();
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["by_path"]["/a"], 3);
    assert_eq!(stats["by_path"]["/b"], 1);
    assert!(stats["by_path"].get("/healthz").is_none());
    assert_eq!(srv.requests_for("/a"), 3);
    srv.reset_stats();
    assert_eq!(srv.requests(), 0);
    assert_eq!(srv.requests_for("/a"), 0);
}

#[test]
fn fail_every_nth_request_with_custom_status() {
    let srv = server(&["--fail-every", "3", "--fail-status", "502", "--name", "flaky"]);
    let statuses: Vec<u16> = (0..6).map(|_| http_get(srv.addr(), "h", "/").0).collect();
    assert_eq!(statuses, [200, 200, 502, 200, 200, 502]);
    // Health checks neither fail nor advance the sequence.
    assert_eq!(http_get(srv.addr(), "h", "/healthz").0, 200);
    srv.reset_stats();
    let (status, headers, body) = {
        http_get(srv.addr(), "h", "/");
        http_get(srv.addr(), "h", "/");
        http_get(srv.addr(), "h", "/")
    };
    assert_eq!(status, 502);
    assert_eq!(headers["x-served-by"], "flaky");
    assert_eq!(headers["x-injected-failure"], "1");
    assert_eq!(body, "flaky\n");
}

#[test]
fn bytes_route_streams_exact_length() {
    let srv = server(&[]);
    let n = 1_000_003;
    let (status, headers, body) = http_request(srv.addr(), "GET", "h", &format!("/bytes/{n}"), &[], b"").unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], n.to_string());
    assert_eq!(body.len(), n);
    assert!(body.iter().all(|&b| b == b'x'));
    assert_eq!(http_get(srv.addr(), "h", "/bytes/0").2, "");
    assert_eq!(http_get(srv.addr(), "h", "/bytes/-1").0, 400);
}

#[test]
fn delays_from_flag_and_query() {
    let srv = server(&["--delay", "150"]);
    let start = Instant::now();
    http_get(srv.addr(), "h", "/");
    assert!(start.elapsed() >= Duration::from_millis(150));
    let start = Instant::now();
    http_get(srv.addr(), "h", "/?delay_ms=200");
    assert!(start.elapsed() >= Duration::from_millis(350));
    // --delay spares health checks; the query delay applies everywhere.
    let start = Instant::now();
    http_get(srv.addr(), "h", "/healthz");
    assert!(start.elapsed() < Duration::from_millis(150));
    let start = Instant::now();
    http_get(srv.addr(), "h", "/healthz?delay_ms=100");
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn http2_prior_knowledge_on_same_port() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let srv = server(&["--name", "h2"]);
    let addr = srv.addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        for _ in 0..2 {
            let req = http::Request::get("http://svc.test/echo?q=1").header("x-h2", "yes").body(Empty::new()).unwrap();
            let resp = sender.send_request(req).await.expect("h2 request");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-served-by"], "h2");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v = json(std::str::from_utf8(&body).unwrap());
            assert_eq!(v["version"], "HTTP/2.0");
            assert_eq!(v["authority"], "svc.test");
            assert_eq!(v["headers"]["x-h2"], "yes");
        }
    });
    assert_eq!(srv.requests_for("/echo"), 2);
}

#[test]
fn concurrent_requests_are_all_counted() {
    let srv = server(&[]);
    let addr = srv.addr();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..25 {
                    assert_eq!(http_get(addr, "h", "/c").0, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(srv.requests_for("/c"), 200);
}

#[test]
fn startup_failure_panics_with_stderr() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = std::panic::catch_unwind(|| server(&["--listen", &addr])).err().expect("spawn should panic");
    let msg = err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
    assert!(msg.contains("exited before listening"), "{msg}");
    assert!(msg.contains(&addr), "stderr should name the address: {msg}");
}

#[test]
fn drop_kills_server() {
    let srv = server(&[]);
    let addr = srv.addr();
    drop(srv);
    assert!(std::net::TcpStream::connect(addr).is_err(), "server still accepting after drop");
}

#[test]
fn invalid_name_is_rejected() {
    let err = std::panic::catch_unwind(|| server(&["--name", "bad\nname"])).err().expect("spawn should panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("not a valid header value"), "{msg}");
}
