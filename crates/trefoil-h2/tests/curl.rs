//! The codec against a real HTTP/2 implementation: curl (nghttp2) sends a
//! request over h2c with prior knowledge to a minimal server written with
//! this crate's frames and HPACK only, and must get the answer back whole.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use trefoil_h2::frame::{self, Frame, DEFAULT_MAX_FRAME_SIZE, PREFACE};
use trefoil_h2::hpack::{Decoder, Encoder, Name, Pseudo};

/// Reads frames until a request's header block is complete; answers the
/// client's SETTINGS on the way. Returns the stream and the decoded fields.
fn read_request(stream: &mut std::net::TcpStream, buf: &mut BytesMut, decoder: &mut Decoder) -> (u32, Vec<(String, String)>) {
    let mut block = BytesMut::new();
    loop {
        while let Some(f) = frame::decode(buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            match f {
                Frame::Settings { ack: false, .. } => {
                    let mut out = Vec::new();
                    frame::encode_settings_ack(&mut out);
                    stream.write_all(&out).unwrap();
                }
                Frame::Headers { stream: id, fragment, end_headers, .. } | Frame::Continuation { stream: id, fragment, end_headers } => {
                    block.extend_from_slice(&fragment);
                    if end_headers {
                        let mut fields = Vec::new();
                        decoder
                            .decode(&block.split().freeze(), |f| {
                                let name = match f.name {
                                    Name::Pseudo(p) => p.as_str().to_string(),
                                    Name::Header(h) => h.to_string(),
                                    Name::Malformed(_) => panic!("curl sent a malformed name"),
                                };
                                fields.push((name, String::from_utf8(f.value.to_vec()).unwrap()));
                            })
                            .unwrap();
                        return (id, fields);
                    }
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "curl closed the connection before its request was in");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn curl_gets_an_answer_from_a_server_built_on_the_codec() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let curl = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "20",
            "-D",
            "-",
            "-H",
            "x-custom: Some Value",
            "-H",
            "accept-encoding: gzip, deflate",
        ])
        .arg(format!("http://127.0.0.1:{port}/path?q=1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is installed by the project's set-up scripts");
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).unwrap();
    assert_eq!(&preface, PREFACE);
    let mut out = Vec::new();
    frame::encode_settings(&[(0x3, 100)], &mut out);
    stream.write_all(&out).unwrap();

    let mut decoder = Decoder::new(4096, 16 << 10);
    let (id, fields) = read_request(&mut stream, &mut BytesMut::new(), &mut decoder);
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(id, 1);
    assert_eq!(get(Pseudo::Method.as_str()), Some("GET"));
    assert_eq!(get(":path"), Some("/path?q=1"));
    assert_eq!(get(":authority"), Some(format!("127.0.0.1:{port}").as_str()));
    assert_eq!(get("x-custom"), Some("Some Value"));
    assert_eq!(get("accept-encoding"), Some("gzip, deflate"));

    let mut encoder = Encoder::new();
    let mut block = Vec::new();
    encoder.encode_status(StatusCode::IM_A_TEAPOT, &mut block);
    encoder.encode_field(&http::header::CONTENT_TYPE, &HeaderValue::from_static("text/plain"), &mut block);
    encoder.encode_field(&HeaderName::from_static("x-long"), &HeaderValue::from_str(&"v".repeat(40_000)).unwrap(), &mut block);
    let mut out = Vec::new();
    // Larger than a frame: a HEADERS and CONTINUATIONs.
    frame::encode_headers(id, &block, false, DEFAULT_MAX_FRAME_SIZE, &mut out);
    let body = Bytes::from_static(b"short and stout\n");
    frame::encode_data_head(id, body.len(), true, &mut out);
    out.extend_from_slice(&body);
    frame::encode_goaway(id, frame::Reason::NO_ERROR, &mut out);
    stream.write_all(&out).unwrap();

    let output = curl.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("HTTP/2 418"), "{stdout}");
    assert!(stdout.contains("content-type: text/plain"), "{stdout}");
    assert!(stdout.contains(&format!("x-long: {}", "v".repeat(40_000))));
    assert!(stdout.ends_with("\r\n\r\nshort and stout\n"), "{stdout}");
}
