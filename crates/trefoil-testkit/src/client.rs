//! A tiny blocking HTTP/1.1 client on std alone, and raw exchanges for
//! requests no well-behaved client would send: tests that use them stay
//! synchronous, need no async runtime, and see exactly what went on the wire.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Response headers with lowercase names; repeated headers are joined with ", ".
pub type Headers = BTreeMap<String, String>;

/// How long the blocking client waits for any single read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a raw exchange waits for the peer's next bytes.
const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// `GET path` with `Host: host` and `Connection: close`; panics if the exchange
/// fails. Returns (status, headers, body as lossy UTF-8).
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, Headers, String) {
    let (status, headers, body) =
        http_request(addr, "GET", host, path, &[], b"").unwrap_or_else(|e| panic!("GET http://{addr}{path} (Host: {host}) failed: {e}"));
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A request to host `web.local`, the host the tests' routes serve, on a
/// fresh connection; panics if the exchange fails. Returns (status,
/// headers, body as lossy UTF-8).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Headers, String) {
    let (status, headers, body) =
        http_request(addr, method, "web.local", path, headers, body).unwrap_or_else(|e| panic!("{method} http://{addr}{path} failed: {e}"));
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`.
/// `Content-Length` is added when `body` is non-empty or the method usually
/// carries a body. Understands Content-Length, chunked and read-to-EOF bodies.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Headers, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);

    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: &[u8], head_only: bool) -> io::Result<(u16, Headers, Vec<u8>)> {
    let mut raw = raw;
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad(format!("no end of headers in {} byte response", raw.len())))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("response head is not UTF-8"))?;
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 =
            status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        // Interim responses (100 Continue) precede the real one.
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let mut headers = Headers::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if headers.get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            dechunk(rest)?
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.parse().map_err(|_| bad(format!("bad content-length {len:?}")))?;
            if rest.len() < len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("body truncated: got {} of {len} bytes", rest.len())));
            }
            rest[..len].to_vec()
        } else {
            rest.to_vec()
        };
        return Ok((status, headers, body));
    }
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or_else(|| bad("truncated chunk size line"))?;
        let size_line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("chunk size is not UTF-8"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers, if any, are not reported.
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated chunk"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// What came back on a raw connection: every byte read, and how the
/// reading ended (a reset after a partial answer is itself what some tests check).
pub struct RawReply {
    pub bytes: Vec<u8>,
    pub end: io::Result<()>,
}

impl RawReply {
    /// The bytes as lossy UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response line, if a response began.
    pub fn status(&self) -> Option<u16> {
        self.text().split(' ').nth(1).and_then(|s| s.parse().ok())
    }
}

/// Writes `request` as raw bytes on a new connection, shuts down the write
/// side if `close_write`, then reads until the peer closes (or 20 s pass
/// without a byte). Panics only if the connection or the write fails.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], close_write: bool) -> RawReply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(RAW_TIMEOUT)).expect("setting a read timeout");
    stream.write_all(request).unwrap_or_else(|e| panic!("writing {:?} to {addr}: {e}", String::from_utf8_lossy(request)));
    if close_write {
        stream.shutdown(Shutdown::Write).expect("shutting down the write side");
    }
    let mut bytes = Vec::new();
    let end = stream.read_to_end(&mut bytes).map(drop);
    RawReply { bytes, end }
}

/// Sends `request` as raw bytes and reads until the peer closes or a whole
/// response (by its content-length) has arrived: (status, body). For
/// requests the proxy must answer, not just close on.
pub fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(RAW_TIMEOUT)).expect("setting a read timeout");
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("writing {request:?} to {addr}: {e}"));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().expect("a numeric content-length"))
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the reply to {request:?}: {e}; got {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Parses a JSON body (an `/echo` answer, an API reply); panics with the body if it is not JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcextra";
        let (status, headers, body) = parse_response(raw, false).unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["x-a"], "1, 2");
        assert_eq!(body, b"abc");
    }

    #[test]
    fn parses_chunked_body_and_skips_interim() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
        let (status, _, body) = parse_response(raw, false).unwrap();
        assert_eq!(status, 201);
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn truncated_body_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(parse_response(raw, false).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // HEAD responses announce a length they do not send.
        assert!(parse_response(raw, true).unwrap().2.is_empty());
    }

    #[test]
    fn read_to_eof_body() {
        let (_, _, body) = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it", false).unwrap();
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn raw_request_stops_at_the_announced_length() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head);
            conn.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").unwrap();
            // Held open: the client must stop by the length, not at EOF.
            let _ = conn.read(&mut head);
        });
        assert_eq!(raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (201, "ok".to_string()));
        server.join().unwrap();
    }
}
