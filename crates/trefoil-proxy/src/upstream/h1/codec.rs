//! The HTTP/1.1 upstream side, as bytes: request heads out, response heads
//! and bodies in (RFC 9112). No I/O here; `pool` moves the bytes.
//!
//! The proxy's own rather than hyper's client: hyper's client hands every
//! request through a channel to a connection dispatcher and the response
//! back through another, which cost more instructions per request than
//! everything else trefoil does (docs/decisions/0008).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Method, StatusCode, Version};

/// Response heads larger than this are refused, as a slow or hostile
/// upstream must not grow the read buffer without end.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines per response head or trailer section.
pub(crate) const MAX_HEADERS: usize = 128;
/// A chunk-size line longer than this (extensions included) is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// Why the upstream's bytes are not a valid HTTP/1.1 response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid header {0}")]
    Header(String),
    #[error("invalid content-length")]
    ContentLength,
    #[error("upstream switched protocols, which this proxy does not forward")]
    SwitchingProtocols,
    #[error("malformed chunked body")]
    Chunk,
    #[error("upstream closed the connection {0}")]
    Closed(&'static str),
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: the length is not known in advance.
    Chunked,
}

/// Writes a request head in origin-form into `out`, and says how its body
/// is framed. `body_length` is the body's exact length if known. The
/// framing headers are the proxy's to set: any the request carries are
/// replaced.
pub(crate) fn encode_request_head(head: &Parts, body_length: Option<u64>, out: &mut Vec<u8>) -> RequestFraming {
    use std::io::Write;
    let mut stated_length = false;
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            stated_length |= name == CONTENT_LENGTH;
            continue;
        }
        put_header_line(name, value, out);
    }
    let framing = match body_length {
        Some(0) if !has_payload_semantics(&head.method) && !stated_length => RequestFraming::Empty,
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    };
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Methods whose requests announce an empty body as `content-length: 0`.
fn has_payload_semantics(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Appends one `name: value` line.
#[inline]
fn put_header_line(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body (its size line, data and CRLF).
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the end of a chunked body, with its trailers if any.
pub(crate) fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_header_line(name, value, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodyFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// Where one header line's name and value lie in a response head.
#[derive(Clone, Copy)]
pub(crate) struct HeaderSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// Takes one response head off the front of `buf`. `None`: more bytes
/// needed. Interim (1xx) responses are skipped; `request` is the request's
/// method, since the answer to a HEAD has no body whatever it announces.
/// `spans` is scratch space, kept by the caller so that it is allocated once.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    request: &Method,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Option<ResponseHead>, ParseError> {
    loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(ParseError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
            Err(e) => return Err(ParseError::Head(e)),
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| ParseError::Head(httparse::Error::Status))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // Header values are to share the head's bytes rather than each be
        // copied, and the head can be frozen only once the parse no longer
        // borrows it: so first where they lie, then the values themselves.
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        spans.clear();
        spans.extend(parsed.headers.iter().map(|h| HeaderSpan { name: offset(h.name.as_bytes()), value: offset(h.value) }));
        let head = buf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ParseError::SwitchingProtocols);
        }
        if status.is_informational() {
            continue;
        }
        let mut map = HeaderMap::with_capacity(spans.len());
        let mut framing = FramingHeaders::default();
        for span in spans.iter() {
            let (start, len) = (span.name.0 as usize, span.name.1 as usize);
            let raw_name = &head[start..start + len];
            let name = HeaderName::from_bytes(raw_name).map_err(|_| ParseError::Header(String::from_utf8_lossy(raw_name).into_owned()))?;
            let (start, len) = (span.value.0 as usize, span.value.1 as usize);
            framing.note(&name, &head[start..start + len])?;
            let value = HeaderValue::from_maybe_shared(head.slice(start..start + len)).map_err(|_| ParseError::Header(name.to_string()))?;
            map.append(name, value);
        }
        return Ok(Some(response_head(status, version, map, framing, request)));
    }
}

fn header_map(head: &Bytes, headers: &[httparse::Header<'_>]) -> Result<HeaderMap, ParseError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ParseError::Header(h.name.to_string()))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value)).map_err(|_| ParseError::Header(h.name.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// What a response's framing headers say, noted as its head is read: one
/// pass over the lines instead of a lookup per name afterwards.
#[derive(Default)]
struct FramingHeaders {
    /// `connection: close` / `connection: keep-alive`.
    close: bool,
    keep_alive: bool,
    /// Whether the last transfer coding is `chunked`, if there is a `transfer-encoding`.
    chunked: Option<bool>,
    /// The content-length; several equal values count as one (RFC 9110 8.6).
    length: Option<u64>,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), ParseError> {
        if name == CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                    return Err(ParseError::ContentLength);
                }
                let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                if self.length.is_some_and(|l| l != n) {
                    return Err(ParseError::ContentLength);
                }
                self.length = Some(n);
            }
        }
        Ok(())
    }
}

fn response_head(status: StatusCode, version: Version, mut headers: HeaderMap, framing: FramingHeaders, request: &Method) -> ResponseHead {
    let mut keep_alive = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
    let no_body = *request == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let body = match (framing.chunked, framing.length) {
        _ if no_body => BodyFraming::Empty,
        (Some(chunked), length) => {
            // RFC 9112 6.3: transfer-encoding wins over content-length, and a
            // message with both must not leave the connection reusable (a
            // request-smuggling pattern). Only the content-length goes; the
            // listener re-frames the body for the client anyway.
            if length.is_some() {
                headers.remove(CONTENT_LENGTH);
                keep_alive = false;
            }
            if chunked {
                BodyFraming::Chunked
            } else {
                keep_alive = false;
                BodyFraming::UntilClose
            }
        }
        (None, Some(length)) => BodyFraming::Length(length),
        (None, None) => {
            keep_alive = false;
            BodyFraming::UntilClose
        }
    };
    ResponseHead { status, version, headers, body, keep_alive }
}

/// What a body decoder took from the buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// Nothing more until more bytes arrive.
    NeedMore,
}

/// Takes a response body apart as its bytes arrive.
#[derive(Debug)]
pub(crate) enum Decoder {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers,
}

impl Decoder {
    pub(crate) fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Decoder::Done,
            BodyFraming::Length(n) => Decoder::Length(n),
            BodyFraming::Chunked => Decoder::Chunked(ChunkState::Size),
            BodyFraming::UntilClose => Decoder::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// Bytes still expected, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes what it can from the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let data = split_up_to(buf, left);
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(data));
                }
                Decoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(state) => match *state {
                    ChunkState::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else { return Ok(Decoded::NeedMore) };
                        let size = chunk_size(&line)?;
                        *state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                    }
                    ChunkState::Data(ref mut left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let data = split_up_to(buf, left);
                        if *left == 0 {
                            *state = ChunkState::DataEnd;
                        }
                        return Ok(Decoded::Data(data));
                    }
                    ChunkState::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ParseError::Chunk);
                        }
                        let _ = buf.split_to(2);
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            let _ = buf.split_to(2);
                            *self = Decoder::Done;
                            continue;
                        }
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let len = match httparse::parse_headers(buf, &mut headers) {
                            Ok(httparse::Status::Complete((len, _))) => len,
                            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(ParseError::HeadTooLarge),
                            Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                            Err(_) => return Err(ParseError::Chunk),
                        };
                        let section = buf.split_to(len).freeze();
                        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&section, &mut headers) else {
                            return Err(ParseError::Chunk);
                        };
                        let trailers = header_map(&section, parsed)?;
                        *self = Decoder::Done;
                        if !trailers.is_empty() {
                            return Ok(Decoded::Trailers(trailers));
                        }
                    }
                },
            }
        }
    }

    /// The upstream closed the connection: the end of an until-close body,
    /// a truncated body otherwise.
    pub(crate) fn at_close(&mut self) -> Result<(), ParseError> {
        match self {
            Decoder::UntilClose | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(ParseError::Closed("in the middle of the response body")),
        }
    }
}

/// Takes at most `left` bytes off the front of `buf`, and counts them off `left`.
fn split_up_to(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let take = (*left).min(buf.len() as u64) as usize;
    *left -= take as u64;
    buf.split_to(take).freeze()
}

/// One CRLF-terminated line off the front of `buf`, without the CRLF.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ParseError> {
    match buf.iter().take(max + 2).position(|&b| b == b'\n') {
        Some(end) if end > 0 && buf[end - 1] == b'\r' => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(ParseError::Chunk),
        None if buf.len() > max => Err(ParseError::Chunk),
        None => Ok(None),
    }
}

/// The size in a chunk-size line (hex digits, then optional extensions).
fn chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(ParseError::Chunk);
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ParseError::Chunk);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| ParseError::Chunk)?;
    u64::from_str_radix(hex, 16).map_err(|_| ParseError::Chunk)
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn head(bytes: &[u8], method: Method) -> Result<Option<ResponseHead>, ParseError> {
        parse_response_head(&mut BytesMut::from(bytes), &method, &mut Vec::new())
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let mut out = Vec::new();
        let req = Request::get("/a?b=c").header("host", "x").header("content-length", "99").body(()).unwrap().into_parts().0;
        assert_eq!(encode_request_head(&req, Some(0), &mut out), RequestFraming::Length(0), "a stated length is kept as the true one");
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");

        out.clear();
        let req = Request::get("/").body(()).unwrap().into_parts().0;
        assert_eq!(encode_request_head(&req, Some(0), &mut out), RequestFraming::Empty);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");

        out.clear();
        let req = Request::post("/up").header("transfer-encoding", "chunked").body(()).unwrap().into_parts().0;
        assert_eq!(encode_request_head(&req, Some(12345), &mut out), RequestFraming::Length(12345));
        assert_eq!(out, b"POST /up HTTP/1.1\r\ncontent-length: 12345\r\n\r\n");

        out.clear();
        let req = Request::post("/").body(()).unwrap().into_parts().0;
        assert_eq!(encode_request_head(&req, Some(0), &mut out), RequestFraming::Length(0));
        out.clear();
        assert_eq!(encode_request_head(&req, None, &mut out), RequestFraming::Chunked);
        assert_eq!(out, b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");

        out.clear();
        encode_chunk(b"hello, world", &mut out);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(Some(&trailers), &mut out);
        assert_eq!(out, b"c\r\nhello, world\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn response_heads_and_their_framing() {
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-le", Method::GET).unwrap().is_none());
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", Method::GET).unwrap().unwrap();
        assert_eq!((h.status, h.body, h.keep_alive), (StatusCode::OK, BodyFraming::Length(5), true));
        assert_eq!(h.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);

        let h = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n", Method::POST).unwrap().unwrap();
        assert_eq!((h.status, h.body), (StatusCode::NO_CONTENT, BodyFraming::Empty), "interim skipped, 204 has no body");
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", Method::HEAD).unwrap().unwrap();
        assert_eq!(h.body, BodyFraming::Empty, "the answer to HEAD has no body");

        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyFraming::Chunked, false), "chunked wins; both framings: never reused");
        assert!(!h.headers.contains_key(CONTENT_LENGTH));

        let h = head(b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyFraming::UntilClose, false));
        let h = head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((h.version, h.keep_alive), (Version::HTTP_10, true));
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!(h.body, BodyFraming::Length(4));

        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4, 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let huge = [b"HTTP/1.1 200 OK\r\n".as_slice(), &vec![b'a'; MAX_HEAD_BYTES + 1]].concat();
        assert!(matches!(head(&huge, Method::GET), Err(ParseError::HeadTooLarge)));
    }

    /// Feeds `wire` to a decoder `step` bytes at a time and collects what it yields.
    fn decode_in_steps(framing: BodyFraming, wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ParseError> {
        let mut decoder = Decoder::new(framing);
        let (mut buf, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf)),
                Decoded::NeedMore if fed == wire.len() => {
                    decoder.at_close()?;
                }
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn bodies_decode_whatever_the_split() {
        let chunked = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 9\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, trailers, rest) = decode_in_steps(BodyFraming::Chunked, chunked, step).unwrap();
            assert_eq!(data, b"hello, world", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
            // Bytes after the body stay in the buffer: the pool then knows the
            // connection is not clean. (Steps past the body may not have read them.)
            assert!(b"NEXT".starts_with(&rest), "step {step}");
            let (data, _, rest) = decode_in_steps(BodyFraming::Length(5), b"helloNEXT", step).unwrap();
            assert_eq!(data, b"hello");
            assert!(b"NEXT".starts_with(&rest));
        }
        let (data, trailers, _) = decode_in_steps(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (b"abc".as_slice(), None));
        let (data, _, _) = decode_in_steps(BodyFraming::UntilClose, b"all of it", 4).unwrap();
        assert_eq!(data, b"all of it");

        for bad in [&b"x\r\nabc\r\n"[..], b"3\r\nabcX\r\n", b"3\nabc\r\n", b"fffffffffffffffff\r\n", b"3 junk\r\nabc\r\n"] {
            assert!(decode_in_steps(BodyFraming::Chunked, bad, 1).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(decode_in_steps(BodyFraming::Length(10), b"short", 2), Err(ParseError::Closed(_))));
        assert!(matches!(decode_in_steps(BodyFraming::Chunked, b"5\r\nhel", 2), Err(ParseError::Closed(_))));
    }
}
