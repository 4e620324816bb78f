//! The server against real clients (curl, nghttp, h2load from nghttp2) and
//! against hand-made frames for what a well-behaved client never sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use trefoil_h2::body::BoxError;
use trefoil_h2::frame::{self, Frame, Reason, DEFAULT_MAX_FRAME_SIZE, PREFACE};
use trefoil_h2::{Config, Connection, RecvBody};

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// `/echo` answers with the request's body (streamed back as it comes),
/// `/bytes/N` with N bytes, `/empty` with headers only, `/never` never
/// answers, `/report` never answers and reports how reading its body
/// (on another task) ended, `/spin` answers once another task has run;
/// anything else 200 "ok".
async fn service(req: Request<RecvBody>, reports: UnboundedSender<String>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path == "/echo" {
        return Response::new(req.into_body().boxed_unsync());
    }
    if path == "/report" {
        let body = req.into_body();
        tokio::spawn(async move {
            let report = match body.collect().await {
                Ok(body) => format!("read {} bytes", body.to_bytes().len()),
                Err(e) => format!("error: {e}"),
            };
            let _ = reports.send(report);
        });
        std::future::pending::<()>().await;
    }
    if path == "/never" {
        std::future::pending::<()>().await;
    }
    if path == "/spin" {
        // Wakes itself until another task of the runtime (a single thread in
        // these tests) has run: only if the connection yields now and then.
        let done = Arc::new(AtomicBool::new(false));
        let set = done.clone();
        tokio::spawn(async move { set.store(true, Ordering::SeqCst) });
        std::future::poll_fn(|cx| {
            if done.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }
    if path == "/empty" {
        return Response::new(http_body_util::Empty::new().map_err(|e: Infallible| match e {}).boxed_unsync());
    }
    let body = match path.strip_prefix("/bytes/") {
        Some(n) => Bytes::from((0..n.parse::<usize>().unwrap()).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        None => Bytes::from_static(b"ok"),
    };
    Response::new(Full::new(body).map_err(|e: Infallible| match e {}).boxed_unsync())
}

/// Serves every connection on a loopback port; `shutdown` asks them to finish gracefully.
async fn server() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let (addr, shutdown, _) = server_with(Config::default()).await;
    (addr, shutdown)
}

/// The same with `config`, and what `/report` reports.
async fn server_with(config: Config) -> (SocketAddr, tokio::sync::watch::Sender<bool>, UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mut watch = watch.clone();
            let (config, report) = (config.clone(), report.clone());
            tokio::spawn(async move {
                let mut connection = Connection::new(stream, config, move |req| Box::pin(service(req, report.clone())));
                tokio::select! {
                    _ = &mut connection => return,
                    _ = watch.wait_for(|stop| *stop) => connection.graceful_shutdown(),
                }
                let _ = connection.await;
            });
        }
    });
    (addr, shutdown, reports)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

async fn run(cmd: &mut Command) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("the client finished in time").unwrap()
}

#[tokio::test]
async fn bodies_larger_than_every_window_go_both_ways_with_curl() {
    let (addr, _shutdown) = server().await;
    let dir = std::env::temp_dir().join(format!("trefoil-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upload = dir.join("upload");
    // 9 MiB: more than the stream window (1 MiB) and the connection window (4 MiB).
    let sent = pattern(9 << 20);
    std::fs::write(&upload, &sent).unwrap();
    let out = run(Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--data-binary"])
        .arg(format!("@{}", upload.display()))
        .arg(format!("http://{addr}/echo")))
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == sent, "the echo came back {} bytes long, not identical", out.stdout.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_client_with_small_windows_gets_all_of_a_large_response() {
    let (addr, _shutdown) = server().await;
    // 2^14-byte windows: the response waits for WINDOW_UPDATEs many times over.
    let out = run(Command::new("nghttp").args(["-w", "14", "-W", "14"]).arg(format!("http://{addr}/bytes/1000000"))).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<u8> = (0..1_000_000).map(|i| (i % 251) as u8).collect();
    assert!(out.stdout == expected, "got {} bytes", out.stdout.len());
}

/// Runs h2load and checks that every one of `requests` succeeded.
async fn h2load_all_succeed(addr: SocketAddr, path: &str, requests: u32, connections: u32, streams: u32) {
    let out = run(Command::new("h2load")
        .args(["-n", &requests.to_string(), "-c", &connections.to_string(), "-m", &streams.to_string()])
        .arg(format!("http://{addr}{path}")))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{requests} succeeded, 0 failed, 0 errored")), "{text}");
}

#[tokio::test]
async fn many_concurrent_streams_under_h2load_all_succeed() {
    let (addr, _shutdown) = server().await;
    h2load_all_succeed(addr, "/bytes/100", 4000, 4, 32).await;
}

#[tokio::test]
async fn streams_answered_with_headers_only_are_closed_and_do_not_count_against_the_limit() {
    let (addr, _shutdown) = server().await;
    // Thirty times the 100 concurrent streams, one after the other, on one connection.
    h2load_all_succeed(addr, "/empty", 3072, 1, 8).await;
    let out = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", "-I"]).arg(format!("http://{addr}/bytes/10"))).await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/2 200"), "a HEAD is answered with headers only");
    let out = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", "-D", "-"]).arg(format!("http://{addr}/empty"))).await;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("\r\ndate: ") && !head.contains("content-length"), "a date is added, a length is not: {head}");
    let out = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", "-D", "-"]).arg(format!("http://{addr}/bytes/10"))).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("content-length: 10\r\n"), "the length the body knows is sent");
}

#[tokio::test]
async fn a_stream_that_keeps_waking_itself_does_not_keep_the_thread() {
    let (addr, _shutdown) = server().await;
    let out = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge"]).arg(format!("http://{addr}/spin"))).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
}

/// A client of hand-made frames.
struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        frame::encode_settings(&[], &mut hello);
        stream.write_all(&hello).await.unwrap();
        RawClient { stream, buf: BytesMut::new() }
    }

    /// A GET of `path` with extra literal fields, as one HEADERS frame.
    async fn get(&mut self, stream: u32, path: &str, fields: &[(&str, &str)], end_stream: bool) {
        // :method GET, :scheme http, :path (literal, name indexed), :authority (literal).
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        for (name, value) in fields {
            literal(name, value, &mut block);
        }
        let mut out = Vec::new();
        frame::encode_headers(stream, &block, end_stream, DEFAULT_MAX_FRAME_SIZE, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// A connection that has sent nothing yet.
    async fn silent(addr: SocketAddr) -> Self {
        RawClient { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    /// The next frame other than SETTINGS, WINDOW_UPDATE and PING; `None` once the server closes.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let f = self.frame().await?;
            if !matches!(f, Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Ping { .. }) {
                return Some(f);
            }
        }
    }

    /// The next frame; `None` once the server closes.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = frame::decode(&mut self.buf, 1 << 24).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk)).await.expect("the server answers in time") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Every frame until the server closes the connection (within 20 s of silence).
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.frame().await {
            frames.push(f);
        }
        frames
    }

    /// Frames until one matches.
    async fn until(&mut self, mut wanted: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            let f = self.next().await.expect("the connection stays open until the frame comes");
            if wanted(&f) {
                return f;
            }
        }
    }
}

fn literal(name: &str, value: &str, block: &mut Vec<u8>) {
    assert!(name.len() < 127 && value.len() < 127);
    block.extend_from_slice(&[0x00, name.len() as u8]);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

fn status_of(f: &Frame) -> Option<StatusCode> {
    let Frame::Headers { fragment, .. } = f else { return None };
    let mut decoder = trefoil_h2::hpack::Decoder::new(4096, 1 << 20);
    let mut status = None;
    decoder
        .decode(fragment, |field| {
            if field.name == trefoil_h2::hpack::Name::Pseudo(trefoil_h2::hpack::Pseudo::Status) {
                status = StatusCode::from_bytes(&field.value).ok();
            }
        })
        .ok()?;
    status
}

#[tokio::test]
async fn a_malformed_request_resets_its_stream_and_the_connection_goes_on() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    client.get(1, "/", &[("X-Upper", "case")], true).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 1, reason: Reason::PROTOCOL_ERROR }
    );
    client.get(3, "/", &[("connection", "keep-alive")], true).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 3, reason: Reason::PROTOCOL_ERROR }
    );
    client.get(5, "/", &[], true).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { stream: 5, .. })).await;
    assert_eq!(status_of(&headers), Some(StatusCode::OK));
}

#[tokio::test]
async fn a_header_list_over_the_limit_gets_431() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    let value = "v".repeat(120);
    let fields: Vec<(String, String)> = (0..600).map(|i| (format!("x-{i}"), value.clone())).collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    client.get(1, "/", &fields, true).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { stream: 1, .. })).await;
    assert_eq!(status_of(&headers), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
}

#[tokio::test]
async fn a_bad_preface_closes_the_connection() {
    let (addr, _shutdown) = server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await.expect("closed in time").unwrap();
    // SETTINGS, then GOAWAY PROTOCOL_ERROR.
    let mut buf = BytesMut::from(&rest[..]);
    let mut frames = Vec::new();
    while let Some(f) = frame::decode(&mut buf, 1 << 24).unwrap() {
        frames.push(f);
    }
    assert!(matches!(frames.last(), Some(Frame::GoAway { reason: Reason::PROTOCOL_ERROR, .. })), "{frames:?}");
}

#[tokio::test]
async fn resetting_stream_after_stream_in_service_ends_in_goaway() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    let mut burst = Vec::new();
    for i in 0..1100u32 {
        let id = 2 * i + 1;
        let block = [0x82, 0x86, 0x04, 6, b'/', b'n', b'e', b'v', b'e', b'r', 0x01, 1, b'x'];
        frame::encode_headers(id, &block, true, DEFAULT_MAX_FRAME_SIZE, &mut burst);
        frame::encode_rst_stream(id, Reason::CANCEL, &mut burst);
    }
    client.send(&burst).await;
    let goaway = client.until(|f| matches!(f, Frame::GoAway { .. })).await;
    assert!(matches!(goaway, Frame::GoAway { reason: Reason::ENHANCE_YOUR_CALM, .. }), "{goaway:?}");
}

#[tokio::test]
async fn a_graceful_shutdown_finishes_open_streams_and_refuses_new_ones() {
    let (addr, shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    // A request whose body is still coming when the shutdown begins.
    client.get(1, "/echo", &[], false).await;
    // Answered before the shutdown: the connection is up and serving.
    client.get(3, "/", &[], true).await;
    client.until(|f| matches!(f, Frame::Headers { stream: 3, .. })).await;
    shutdown.send(true).unwrap();
    assert_eq!(client.until(|f| matches!(f, Frame::GoAway { .. })).await, Frame::GoAway { last_stream: 3, reason: Reason::NO_ERROR });
    // A new stream is ignored; the open one completes.
    client.get(5, "/", &[], true).await;
    let mut out = Vec::new();
    frame::encode_data_head(1, 4, true, &mut out);
    out.extend_from_slice(b"done");
    client.send(&out).await;
    let mut echoed = Vec::new();
    loop {
        match client.next().await {
            Some(Frame::Data { stream: 1, data, end_stream, .. }) => {
                echoed.extend_from_slice(&data);
                if end_stream {
                    break;
                }
            }
            Some(Frame::Headers { stream: 5, .. }) => panic!("a stream opened after GOAWAY was served"),
            Some(_) => {}
            None => panic!("closed before the open stream finished"),
        }
    }
    assert_eq!(echoed, b"done");
    assert_eq!(client.next().await, None, "closed once the open stream is done");
}

/// Timeouts short enough for tests; the ones a test does not look at stay long.
fn quick(change: impl FnOnce(&mut Config)) -> Config {
    let long = Duration::from_secs(3600);
    let mut config = Config {
        preface_timeout: long,
        header_block_timeout: long,
        idle_timeout: long,
        stream_idle_timeout: long,
        keepalive_interval: None,
        ..Config::default()
    };
    change(&mut config);
    config
}

fn goaway_of(frames: &[Frame]) -> Option<Reason> {
    frames.iter().find_map(|f| match f {
        Frame::GoAway { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[tokio::test]
async fn a_client_that_sends_part_of_the_preface_is_closed_after_the_preface_timeout() {
    let (addr, _shutdown, _) = server_with(quick(|c| c.preface_timeout = Duration::from_millis(200))).await;
    let mut client = RawClient::silent(addr).await;
    client.send(b"PRI").await;
    let frames = client.until_closed().await;
    assert_eq!(goaway_of(&frames), Some(Reason::NO_ERROR), "{frames:?}");
    // The whole preface, and no SETTINGS after it, is not enough.
    let mut client = RawClient::silent(addr).await;
    client.send(PREFACE).await;
    let frames = client.until_closed().await;
    assert_eq!(goaway_of(&frames), Some(Reason::NO_ERROR), "{frames:?}");
}

#[tokio::test]
async fn a_header_block_left_open_is_closed_after_the_header_block_timeout() {
    let (addr, _shutdown, _) = server_with(quick(|c| c.header_block_timeout = Duration::from_millis(200))).await;
    let mut client = RawClient::connect(addr).await;
    let mut out = Vec::new();
    // HEADERS without END_HEADERS (flags 0), and no CONTINUATION after it.
    out.extend_from_slice(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82]);
    client.send(&out).await;
    let frames = client.until_closed().await;
    assert_eq!(goaway_of(&frames), Some(Reason::NO_ERROR), "{frames:?}");
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_is_closed_after_the_idle_timeout() {
    let (addr, _shutdown, _) = server_with(quick(|c| c.idle_timeout = Duration::from_millis(200))).await;
    let mut client = RawClient::connect(addr).await;
    client.get(1, "/", &[], true).await;
    let frames = client.until_closed().await;
    assert!(frames.iter().any(|f| matches!(f, Frame::Headers { stream: 1, .. })), "the request was served first: {frames:?}");
    assert!(frames.contains(&Frame::GoAway { last_stream: 1, reason: Reason::NO_ERROR }), "{frames:?}");
}

#[tokio::test]
async fn a_stream_whose_client_sends_nothing_is_ended_after_the_stream_idle_timeout() {
    let (addr, _shutdown, mut reports) = server_with(quick(|c| c.stream_idle_timeout = Duration::from_millis(200))).await;
    let mut client = RawClient::connect(addr).await;
    // No response yet: a 408, the stream reset, and the body's reader gets an error.
    client.get(1, "/report", &[], false).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { stream: 1, .. })).await;
    assert_eq!(status_of(&headers), Some(StatusCode::REQUEST_TIMEOUT));
    assert_eq!(client.until(|f| matches!(f, Frame::RstStream { .. })).await, Frame::RstStream { stream: 1, reason: Reason::NO_ERROR });
    let report = tokio::time::timeout(Duration::from_secs(20), reports.recv()).await.expect("reported in time").unwrap();
    assert!(report.starts_with("error: "), "{report}");
    // A response under way: reset with CANCEL.
    client.get(3, "/echo", &[], false).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { stream: 3, .. })).await;
    assert_eq!(status_of(&headers), Some(StatusCode::OK));
    assert_eq!(client.until(|f| matches!(f, Frame::RstStream { .. })).await, Frame::RstStream { stream: 3, reason: Reason::CANCEL });
    // The connection goes on.
    client.get(5, "/", &[], true).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { stream: 5, .. })).await;
    assert_eq!(status_of(&headers), Some(StatusCode::OK));
}

#[tokio::test]
async fn a_stream_that_keeps_sending_is_not_timed_out() {
    let (addr, _shutdown, _) = server_with(quick(|c| c.stream_idle_timeout = Duration::from_millis(500))).await;
    let mut client = RawClient::connect(addr).await;
    client.get(1, "/echo", &[], false).await;
    // Four times the timeout, a DATA frame every 100 ms: each comes back.
    for _ in 0..20 {
        let mut out = Vec::new();
        frame::encode_data_head(1, 1, false, &mut out);
        out.push(b'x');
        client.send(&out).await;
        let f = client.until(|f| matches!(f, Frame::Data { .. } | Frame::RstStream { .. })).await;
        assert!(matches!(f, Frame::Data { stream: 1, .. }), "{f:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_that_does_not_acknowledge_the_keepalive_ping_is_closed() {
    let (addr, _shutdown, _) = server_with(quick(|c| {
        c.keepalive_interval = Some(Duration::from_millis(100));
        // Long enough for a loaded machine to answer in time.
        c.keepalive_timeout = Duration::from_secs(2);
    }))
    .await;
    // One that answers stays: it gets PING after PING.
    let mut client = RawClient::connect(addr).await;
    for _ in 0..3 {
        let f = client.frame().await.expect("open");
        if let Frame::Ping { ack: false, payload } = f {
            let mut out = Vec::new();
            frame::encode_ping_ack(payload, &mut out);
            client.send(&out).await;
        }
        assert!(!matches!(f, Frame::GoAway { .. }), "{f:?}");
    }
    let mut pings = 0;
    while pings < 2 {
        match client.frame().await.expect("still open") {
            Frame::Ping { ack: false, payload } => {
                pings += 1;
                let mut out = Vec::new();
                frame::encode_ping_ack(payload, &mut out);
                client.send(&out).await;
            }
            f => assert!(!matches!(f, Frame::GoAway { .. }), "{f:?}"),
        }
    }
    // One that does not is closed.
    let mut client = RawClient::connect(addr).await;
    let frames = client.until_closed().await;
    assert!(frames.iter().any(|f| matches!(f, Frame::Ping { ack: false, .. })), "{frames:?}");
}

#[tokio::test]
async fn a_flood_of_empty_continuations_ends_in_goaway() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    let mut out = vec![0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82];
    for _ in 0..10_000 {
        // CONTINUATION of nothing, without END_HEADERS.
        out.extend_from_slice(&[0, 0, 0, 0x9, 0, 0, 0, 0, 1]);
    }
    client.send(&out).await;
    let frames = client.until_closed().await;
    assert_eq!(goaway_of(&frames), Some(Reason::ENHANCE_YOUR_CALM), "{frames:?}");
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused_and_the_connection_goes_on() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    // The default limit, 100, taken by streams that are never answered.
    for i in 0..100u32 {
        client.get(2 * i + 1, "/never", &[], true).await;
    }
    client.get(201, "/never", &[], true).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 201, reason: Reason::REFUSED_STREAM }
    );
    // One of them given up, a new one is served.
    let mut out = Vec::new();
    frame::encode_rst_stream(1, Reason::CANCEL, &mut out);
    client.send(&out).await;
    client.get(203, "/", &[], true).await;
    let headers = client.until(|f| matches!(f, Frame::Headers { .. } | Frame::RstStream { .. })).await;
    assert!(matches!(headers, Frame::Headers { stream: 203, .. }), "{headers:?}");
}

/// What `bytes` sent after the preface and SETTINGS lead to: the frames
/// until the server closes the connection.
async fn frames_after(bytes: &[u8]) -> Vec<Frame> {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    client.send(bytes).await;
    client.until_closed().await
}

fn headers(stream: u32, path: &str, end_stream: bool) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x']);
    let mut out = Vec::new();
    frame::encode_headers(stream, &block, end_stream, DEFAULT_MAX_FRAME_SIZE, &mut out);
    out
}

#[tokio::test]
async fn headers_on_a_lower_stream_than_one_opened_is_a_protocol_error() {
    let frames = frames_after(&[headers(5, "/", true), headers(3, "/", true)].concat()).await;
    assert_eq!(goaway_of(&frames), Some(Reason::PROTOCOL_ERROR), "{frames:?}");
}

#[tokio::test]
async fn headers_and_data_on_a_closed_stream_are_stream_closed() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    client.get(1, "/", &[], true).await;
    client.until(|f| matches!(f, Frame::Data { stream: 1, end_stream: true, .. })).await;
    client.send(&headers(1, "/", true)).await;
    assert_eq!(goaway_of(&client.until_closed().await), Some(Reason::STREAM_CLOSED));

    let mut client = RawClient::connect(addr).await;
    client.get(1, "/", &[], true).await;
    client.until(|f| matches!(f, Frame::Data { stream: 1, end_stream: true, .. })).await;
    let mut out = Vec::new();
    frame::encode_data_head(1, 0, true, &mut out);
    client.send(&out).await;
    assert_eq!(goaway_of(&client.until_closed().await), Some(Reason::STREAM_CLOSED));
}

#[tokio::test]
async fn frames_on_a_stream_the_server_reset_are_dropped_and_the_connection_goes_on() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    // Malformed, with a body to follow: reset by the server.
    client.get(1, "/", &[("X-Upper", "case")], false).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 1, reason: Reason::PROTOCOL_ERROR }
    );
    // What the client sent before it knew: DATA, then trailers.
    let mut out = Vec::new();
    frame::encode_data_head(1, 2, false, &mut out);
    out.extend_from_slice(b"hi");
    let mut trailers = Vec::new();
    literal("x-trailer", "1", &mut trailers);
    frame::encode_headers(1, &trailers, true, DEFAULT_MAX_FRAME_SIZE, &mut out);
    client.send(&out).await;
    client.get(3, "/", &[], true).await;
    let f = client.until(|f| matches!(f, Frame::Headers { .. } | Frame::GoAway { .. })).await;
    assert!(matches!(f, Frame::Headers { stream: 3, .. }), "{f:?}");
}

#[tokio::test]
async fn frames_on_idle_streams_and_a_preface_without_settings_are_protocol_errors() {
    let mut update = Vec::new();
    frame::encode_window_update(7, 100, &mut update);
    let frames = frames_after(&update).await;
    assert_eq!(goaway_of(&frames), Some(Reason::PROTOCOL_ERROR), "WINDOW_UPDATE on an idle stream: {frames:?}");
    let mut reset = Vec::new();
    frame::encode_rst_stream(2, Reason::CANCEL, &mut reset);
    let frames = frames_after(&[headers(3, "/", true), reset].concat()).await;
    assert_eq!(goaway_of(&frames), Some(Reason::PROTOCOL_ERROR), "RST_STREAM on an even stream: {frames:?}");

    let (addr, _shutdown) = server().await;
    let mut client = RawClient::silent(addr).await;
    let mut out = PREFACE.to_vec();
    frame::encode_window_update(0, 100, &mut out);
    client.send(&out).await;
    assert_eq!(goaway_of(&client.until_closed().await), Some(Reason::PROTOCOL_ERROR), "the preface's first frame must be SETTINGS");
}

#[tokio::test]
async fn what_a_client_must_not_send_on_a_stream_resets_it_or_closes_the_connection() {
    let (addr, _shutdown) = server().await;
    let mut client = RawClient::connect(addr).await;
    // Trailers without END_STREAM: malformed (RFC 9113 §8.1).
    client.get(1, "/never", &[], false).await;
    let mut trailers = Vec::new();
    literal("x-trailer", "1", &mut trailers);
    let mut out = Vec::new();
    frame::encode_headers(1, &trailers, false, DEFAULT_MAX_FRAME_SIZE, &mut out);
    client.send(&out).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 1, reason: Reason::PROTOCOL_ERROR }
    );
    // DATA after the request's end, on a stream still answering: half-closed (remote).
    client.get(3, "/never", &[], true).await;
    let mut out = Vec::new();
    frame::encode_data_head(3, 1, false, &mut out);
    out.push(b'x');
    client.send(&out).await;
    assert_eq!(client.until(|f| matches!(f, Frame::RstStream { .. })).await, Frame::RstStream { stream: 3, reason: Reason::STREAM_CLOSED });
    // A window over 2^31-1: that stream is reset.
    client.get(5, "/never", &[], true).await;
    let mut out = Vec::new();
    frame::encode_window_update(5, (1 << 31) - 1, &mut out);
    client.send(&out).await;
    assert_eq!(
        client.until(|f| matches!(f, Frame::RstStream { .. })).await,
        Frame::RstStream { stream: 5, reason: Reason::FLOW_CONTROL_ERROR }
    );
    // A huge SETTINGS_HEADER_TABLE_SIZE changes nothing (no dynamic table on this side).
    let mut out = Vec::new();
    frame::encode_settings(&[(0x1, u32::MAX)], &mut out);
    client.send(&out).await;
    client.get(7, "/", &[], true).await;
    let f = client.until(|f| matches!(f, Frame::Headers { .. } | Frame::GoAway { .. })).await;
    assert!(matches!(f, Frame::Headers { stream: 7, .. }), "{f:?}");
    // PUSH_PROMISE from a client: the connection ends.
    client.send(&[0, 0, 4, 0x5, 0x4, 0, 0, 0, 7, 0, 0, 0, 2]).await;
    assert_eq!(goaway_of(&client.until_closed().await), Some(Reason::PROTOCOL_ERROR));
}
