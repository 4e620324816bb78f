//! HTTP/2 frames (RFC 9113 §4, §6): parsed from a read buffer and written
//! to a write buffer. Every rule a frame's own bytes can break is checked
//! here, with the error code and the scope (stream or connection) the RFC
//! gives it; rules about streams' states are the connection's.

use bytes::{Buf, Bytes, BytesMut};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEAD_LEN: usize = 9;
/// The frame size every endpoint must accept (SETTINGS_MAX_FRAME_SIZE's initial value).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
}

/// A frame that breaks the protocol, and whether that ends the stream or the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("connection error {reason:?}: {what}")]
    Connection { reason: Reason, what: &'static str },
    #[error("stream {stream} error {reason:?}: {what}")]
    Stream { stream: u32, reason: Reason, what: &'static str },
}

fn connection_error(reason: Reason, what: &'static str) -> FrameError {
    FrameError::Connection { reason, what }
}

/// The settings a peer may send (RFC 9113 §6.5.2); `None` where it sent none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

/// A parsed frame. Header block fragments are raw: HPACK is the connection's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `flow_len` is the whole payload, padding included: what flow control counts.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
        flow_len: u32,
    },
    Headers {
        stream: u32,
        fragment: Bytes,
        end_stream: bool,
        end_headers: bool,
    },
    Priority {
        stream: u32,
    },
    RstStream {
        stream: u32,
        reason: Reason,
    },
    Settings {
        ack: bool,
        settings: Settings,
    },
    PushPromise,
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: Reason,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        fragment: Bytes,
        end_headers: bool,
    },
    /// A frame of a type this endpoint does not know: ignored (§4.1).
    Unknown,
}

/// Takes the next whole frame off `buf`, if it holds one.
///
/// `max_frame_size` is what this endpoint advertised; a larger frame is a
/// connection error (§4.2).
pub fn decode(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEAD_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    if len > max_frame_size {
        return Err(connection_error(Reason::FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"));
    }
    if buf.len() < HEAD_LEN + len as usize {
        buf.reserve(HEAD_LEN + len as usize - buf.len());
        return Ok(None);
    }
    let (kind, flags) = (buf[3], buf[4]);
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & MAX_WINDOW;
    buf.advance(HEAD_LEN);
    let payload = buf.split_to(len as usize).freeze();
    parse(kind, flags, stream, payload).map(Some)
}

fn parse(kind: u8, flags: u8, stream: u32, mut payload: Bytes) -> Result<Frame, FrameError> {
    let on_stream = |what| if stream == 0 { Err(connection_error(Reason::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let on_connection = |what| if stream != 0 { Err(connection_error(Reason::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let frame_size = |ok: bool, what| if ok { Ok(()) } else { Err(connection_error(Reason::FRAME_SIZE_ERROR, what)) };
    Ok(match kind {
        DATA => {
            on_stream("DATA on stream 0")?;
            let flow_len = payload.len() as u32;
            strip_padding(flags, &mut payload)?;
            Frame::Data { stream, data: payload, end_stream: flags & END_STREAM != 0, flow_len }
        }
        HEADERS => {
            on_stream("HEADERS on stream 0")?;
            strip_padding(flags, &mut payload)?;
            if flags & PRIORITY_FLAG != 0 {
                if payload.len() < 5 {
                    return Err(connection_error(Reason::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                }
                // A stream error in principle, but the header block would
                // then go undecoded and the HPACK tables out of step: the
                // connection ends instead (RFC 9113 §5.4.1 allows it).
                check_not_self_dependent(stream, &payload)
                    .map_err(|_| connection_error(Reason::PROTOCOL_ERROR, "stream depends on itself"))?;
                payload.advance(5);
            }
            Frame::Headers { stream, fragment: payload, end_stream: flags & END_STREAM != 0, end_headers: flags & END_HEADERS != 0 }
        }
        PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            if payload.len() != 5 {
                return Err(FrameError::Stream { stream, reason: Reason::FRAME_SIZE_ERROR, what: "PRIORITY not 5 bytes long" });
            }
            check_not_self_dependent(stream, &payload)?;
            Frame::Priority { stream }
        }
        RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            frame_size(payload.len() == 4, "RST_STREAM not 4 bytes long")?;
            Frame::RstStream { stream, reason: Reason(payload.get_u32()) }
        }
        SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            let ack = flags & ACK != 0;
            frame_size(!ack || payload.is_empty(), "SETTINGS acknowledgement with a payload")?;
            frame_size(payload.len().is_multiple_of(6), "SETTINGS length not a multiple of 6")?;
            Frame::Settings { ack, settings: parse_settings(payload)? }
        }
        // A client must not push (§8.4): the connection decides what that means.
        PUSH_PROMISE => Frame::PushPromise,
        PING => {
            on_connection("PING on a stream")?;
            frame_size(payload.len() == 8, "PING not 8 bytes long")?;
            let mut data = [0u8; 8];
            payload.copy_to_slice(&mut data);
            Frame::Ping { ack: flags & ACK != 0, payload: data }
        }
        GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            frame_size(payload.len() >= 8, "GOAWAY shorter than 8 bytes")?;
            Frame::GoAway { last_stream: payload.get_u32() & MAX_WINDOW, reason: Reason(payload.get_u32()) }
        }
        WINDOW_UPDATE => {
            frame_size(payload.len() == 4, "WINDOW_UPDATE not 4 bytes long")?;
            let increment = payload.get_u32() & MAX_WINDOW;
            if increment == 0 {
                let what = "WINDOW_UPDATE of zero";
                return Err(if stream == 0 {
                    connection_error(Reason::PROTOCOL_ERROR, what)
                } else {
                    FrameError::Stream { stream, reason: Reason::PROTOCOL_ERROR, what }
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Frame::Continuation { stream, fragment: payload, end_headers: flags & END_HEADERS != 0 }
        }
        _ => Frame::Unknown,
    })
}

fn strip_padding(flags: u8, payload: &mut Bytes) -> Result<(), FrameError> {
    if flags & PADDED == 0 {
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(connection_error(Reason::FRAME_SIZE_ERROR, "padded frame without its pad length"));
    };
    let pad = pad as usize;
    if pad >= payload.len() {
        return Err(connection_error(Reason::PROTOCOL_ERROR, "padding as long as the payload"));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Ok(())
}

fn check_not_self_dependent(stream: u32, priority: &[u8]) -> Result<(), FrameError> {
    let dependency = u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & MAX_WINDOW;
    if dependency == stream {
        return Err(FrameError::Stream { stream, reason: Reason::PROTOCOL_ERROR, what: "stream depends on itself" });
    }
    Ok(())
}

fn parse_settings(mut payload: Bytes) -> Result<Settings, FrameError> {
    let mut settings = Settings::default();
    let flag = |value: u32, what| match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(connection_error(Reason::PROTOCOL_ERROR, what)),
    };
    while payload.has_remaining() {
        let (id, value) = (payload.get_u16(), payload.get_u32());
        match id {
            0x1 => settings.header_table_size = Some(value),
            0x2 => settings.enable_push = Some(flag(value, "SETTINGS_ENABLE_PUSH neither 0 nor 1")?),
            0x3 => settings.max_concurrent_streams = Some(value),
            0x4 if value > MAX_WINDOW => {
                return Err(connection_error(Reason::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1"))
            }
            0x4 => settings.initial_window_size = Some(value),
            0x5 if !(DEFAULT_MAX_FRAME_SIZE..=(1 << 24) - 1).contains(&value) => {
                return Err(connection_error(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"))
            }
            0x5 => settings.max_frame_size = Some(value),
            0x6 => settings.max_header_list_size = Some(value),
            0x8 => settings.enable_connect_protocol = Some(flag(value, "SETTINGS_ENABLE_CONNECT_PROTOCOL neither 0 nor 1")?),
            // Unknown settings are ignored (§6.5.2).
            _ => {}
        }
    }
    Ok(settings)
}

fn encode_head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    debug_assert!(len < 1 << 24);
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A SETTINGS frame with `(identifier, value)` pairs.
pub fn encode_settings(settings: &[(u16, u32)], out: &mut Vec<u8>) {
    encode_head(settings.len() * 6, SETTINGS, 0, 0, out);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn encode_settings_ack(out: &mut Vec<u8>) {
    encode_head(0, SETTINGS, ACK, 0, out);
}

pub fn encode_ping(payload: [u8; 8], out: &mut Vec<u8>) {
    encode_head(8, PING, 0, 0, out);
    out.extend_from_slice(&payload);
}

pub fn encode_ping_ack(payload: [u8; 8], out: &mut Vec<u8>) {
    encode_head(8, PING, ACK, 0, out);
    out.extend_from_slice(&payload);
}

pub fn encode_goaway(last_stream: u32, reason: Reason, out: &mut Vec<u8>) {
    encode_head(8, GOAWAY, 0, 0, out);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&reason.0.to_be_bytes());
}

pub fn encode_rst_stream(stream: u32, reason: Reason, out: &mut Vec<u8>) {
    encode_head(4, RST_STREAM, 0, stream, out);
    out.extend_from_slice(&reason.0.to_be_bytes());
}

pub fn encode_window_update(stream: u32, increment: u32, out: &mut Vec<u8>) {
    encode_head(4, WINDOW_UPDATE, 0, stream, out);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// A header block as a HEADERS frame and as many CONTINUATIONs as
/// `max_frame_size` (the peer's) makes it take.
pub fn encode_headers(stream: u32, block: &[u8], end_stream: bool, max_frame_size: u32, out: &mut Vec<u8>) {
    let max = max_frame_size as usize;
    let mut chunks = block.chunks(max.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if block.len() <= max {
        flags |= END_HEADERS;
    }
    encode_head(first.len(), HEADERS, flags, stream, out);
    out.extend_from_slice(first);
    let mut rest = chunks.peekable();
    while let Some(chunk) = rest.next() {
        let flags = if rest.peek().is_none() { END_HEADERS } else { 0 };
        encode_head(chunk.len(), CONTINUATION, flags, stream, out);
        out.extend_from_slice(chunk);
    }
}

/// The head of a DATA frame of `len` bytes; the data follows it.
pub fn encode_data_head(stream: u32, len: usize, end_stream: bool, out: &mut Vec<u8>) {
    encode_head(len, DATA, if end_stream { END_STREAM } else { 0 }, stream, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
        let mut out = Vec::new();
        encode_head(payload.len(), kind, flags, stream, &mut out);
        out.extend_from_slice(payload);
        BytesMut::from(&out[..])
    }

    fn parsed(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame, FrameError> {
        let mut buf = frame(kind, flags, stream, payload);
        let f = decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).map(Option::unwrap);
        assert!(f.is_err() || buf.is_empty(), "the whole frame is taken");
        f
    }

    fn connection(reason: Reason) -> impl Fn(&Result<Frame, FrameError>) -> bool {
        move |r| matches!(r, Err(FrameError::Connection { reason: r, .. }) if *r == reason)
    }

    #[test]
    fn a_frame_is_taken_only_once_all_of_it_is_in() {
        let whole = frame(DATA, END_STREAM, 1, b"hello");
        for split in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..split]);
            assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME_SIZE), Ok(None));
            assert_eq!(buf.len(), split, "nothing taken");
        }
        let mut buf = whole;
        buf.extend_from_slice(&frame(PING, 0, 0, &[7; 8]));
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap(),
            Some(Frame::Data { stream: 1, data: Bytes::from_static(b"hello"), end_stream: true, flow_len: 5 })
        );
        assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap(), Some(Frame::Ping { ack: false, payload: [7; 8] }));
    }

    #[test]
    fn padding_and_priority_are_stripped_and_counted_for_flow_control() {
        let data = parsed(DATA, PADDED, 3, &[2, b'a', b'b', 0, 0]).unwrap();
        assert_eq!(data, Frame::Data { stream: 3, data: Bytes::from_static(b"ab"), end_stream: false, flow_len: 5 });
        let headers = parsed(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 5, &[1, 0, 0, 0, 1, 16, 0x82, 0]).unwrap();
        assert_eq!(headers, Frame::Headers { stream: 5, fragment: Bytes::from_static(&[0x82]), end_stream: false, end_headers: true });
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(DATA, PADDED, 3, &[4, 0, 0, 0])));
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&parsed(DATA, PADDED, 3, &[])));
    }

    #[test]
    fn frames_that_break_the_rules_get_their_error_code_and_scope() {
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&{
            let mut buf = frame(DATA, 0, 1, &[0; 20]);
            decode(&mut buf, 16).map(Option::unwrap)
        }));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(DATA, 0, 0, b"x")));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(HEADERS, 0, 0, b"x")));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(SETTINGS, 0, 1, &[])));
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&parsed(SETTINGS, ACK, 0, &[0; 6])));
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&parsed(SETTINGS, 0, 0, &[0; 5])));
        assert!(connection(Reason::FLOW_CONTROL_ERROR)(&parsed(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0])));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(SETTINGS, 0, 0, &[0, 5, 0, 0, 0x10, 0])));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2])));
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&parsed(PING, 0, 0, &[0; 7])));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(PING, 0, 1, &[0; 8])));
        assert!(connection(Reason::FRAME_SIZE_ERROR)(&parsed(RST_STREAM, 0, 1, &[0; 3])));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(WINDOW_UPDATE, 0, 0, &[0; 4])));
        assert_eq!(
            parsed(WINDOW_UPDATE, 0, 7, &[0; 4]),
            Err(FrameError::Stream { stream: 7, reason: Reason::PROTOCOL_ERROR, what: "WINDOW_UPDATE of zero" })
        );
        assert!(matches!(parsed(PRIORITY, 0, 9, &[0, 0, 0, 9, 0]), Err(FrameError::Stream { stream: 9, .. })));
        assert!(connection(Reason::PROTOCOL_ERROR)(&parsed(HEADERS, PRIORITY_FLAG | END_HEADERS, 9, &[0, 0, 0, 9, 0, 0x82])));
        assert!(matches!(parsed(PRIORITY, 0, 9, &[0; 4]), Err(FrameError::Stream { reason: Reason::FRAME_SIZE_ERROR, .. })));
        assert_eq!(parsed(0xfa, 0xff, 3, b"whatever"), Ok(Frame::Unknown));
    }

    #[test]
    fn settings_are_read_and_unknown_ones_ignored() {
        let payload = [0, 1, 0, 0, 0x10, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0, 0, 0x99, 0, 0, 0, 1];
        let Frame::Settings { ack: false, settings } = parsed(SETTINGS, 0, 0, &payload).unwrap() else { panic!() };
        assert_eq!(
            settings,
            Settings {
                header_table_size: Some(4096),
                max_concurrent_streams: Some(100),
                initial_window_size: Some(65536),
                ..Settings::default()
            }
        );
    }

    #[test]
    fn written_frames_read_back() {
        let mut out = Vec::new();
        encode_settings(&[(0x3, 250), (0x4, 1 << 20)], &mut out);
        encode_settings_ack(&mut out);
        encode_ping_ack([1; 8], &mut out);
        encode_goaway(7, Reason::NO_ERROR, &mut out);
        encode_rst_stream(9, Reason::CANCEL, &mut out);
        encode_window_update(0, 1000, &mut out);
        encode_data_head(11, 2, true, &mut out);
        out.extend_from_slice(b"ok");
        let mut buf = BytesMut::from(&out[..]);
        let mut frames = Vec::new();
        while let Some(f) = decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            frames.push(f);
        }
        assert_eq!(
            frames,
            [
                Frame::Settings {
                    ack: false,
                    settings: Settings { max_concurrent_streams: Some(250), initial_window_size: Some(1 << 20), ..Settings::default() }
                },
                Frame::Settings { ack: true, settings: Settings::default() },
                Frame::Ping { ack: true, payload: [1; 8] },
                Frame::GoAway { last_stream: 7, reason: Reason::NO_ERROR },
                Frame::RstStream { stream: 9, reason: Reason::CANCEL },
                Frame::WindowUpdate { stream: 0, increment: 1000 },
                Frame::Data { stream: 11, data: Bytes::from_static(b"ok"), end_stream: true, flow_len: 2 },
            ]
        );
    }

    proptest! {
        /// Whatever a client sends, decoding ends in frames, an error, or a
        /// wait for more bytes; never a panic, and never without progress.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 16_384u32..20_000) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut before = buf.len() + 1;
            while let Ok(Some(_)) = decode(&mut buf, max) {
                prop_assert!(buf.len() < before, "a frame was decoded without taking bytes");
                before = buf.len();
            }
        }

        #[test]
        fn header_blocks_split_into_continuations_and_join_back(len in 0usize..200, max in 16u32..64, end_stream: bool) {
            let block: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_headers(1, &block, end_stream, max, &mut out);
            let mut buf = BytesMut::from(&out[..]);
            let mut joined = Vec::new();
            let Some(Frame::Headers { fragment, end_stream: es, end_headers, .. }) = decode(&mut buf, max).unwrap() else { panic!() };
            prop_assert_eq!(es, end_stream);
            joined.extend_from_slice(&fragment);
            let mut done = end_headers;
            while !done {
                let Some(Frame::Continuation { fragment, end_headers, .. }) = decode(&mut buf, max).unwrap() else { panic!() };
                joined.extend_from_slice(&fragment);
                done = end_headers;
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(joined, block);
        }

    }
}
