//! The server side of one HTTP/2 connection (RFC 9113).
//!
//! One future drives the connection: it reads and answers frames, runs
//! each stream's request future and response body itself, and writes
//! through one buffer. Streams are not tasks: a stream's future is polled
//! with a waker of its own slot, which queues the slot and wakes the
//! connection; slots (and their wakers) are reused. A request so costs no
//! task spawn, no lock on the connection's state and no channel.
//!
//! The request body is the one thing that leaves the connection's future
//! (it goes wherever the request goes): it shares a small queue with the
//! connection, and hands back flow-control credit as it is read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use rustc_hash::FxHasher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{BoxError, RecvBody, Shared, Signals, SlotWaker};
use crate::frame::{self, Frame, FrameError, Reason, Settings, DEFAULT_MAX_FRAME_SIZE, MAX_WINDOW, PREFACE};
use crate::hpack::{DecodeError, Decoder, Encoder, Field, Name, Pseudo};
use crate::timer::Timer;

/// What this server tells its clients, and holds them to.
#[derive(Debug, Clone)]
pub struct Config {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// How much of a request body a client may send ahead of its reading (per stream).
    pub stream_window: u32,
    /// The same for all of a connection's streams together.
    pub connection_window: u32,
    /// The largest header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE); larger gets a 431.
    pub max_header_list_size: u32,
    /// How long a client may take to send the connection preface and its
    /// first SETTINGS, counted from `Connection::new`.
    pub preface_timeout: Duration,
    /// How long a header block may stay open over CONTINUATION frames.
    pub header_block_timeout: Duration,
    /// How long a connection may have no open stream before it is sent
    /// GOAWAY NO_ERROR and closed.
    pub idle_timeout: Duration,
    /// How long a stream may wait on its client without any progress:
    /// its request body open and fully read, or its response held by the
    /// client's window or by a client that does not read, and no DATA or
    /// WINDOW_UPDATE either way meanwhile. A stream still waiting for its
    /// response gets a 408, one whose response has begun RST_STREAM CANCEL;
    /// its request body's reader gets an error either way.
    pub stream_idle_timeout: Duration,
    /// After this long without a frame from the client, a PING; `None`: never.
    pub keepalive_interval: Option<Duration>,
    /// How long the PING's acknowledgement may take before the connection is
    /// dropped. Also how long a closing connection may wait to write its last frames.
    pub keepalive_timeout: Duration,
}

impl Default for Config {
    /// Streams: RFC 9113 §5.1.2 recommends no fewer than 100; Apache httpd
    /// and h2o default to it, nginx to 128, Go to 250. Each stream to an
    /// HTTP/1 upstream holds an upstream connection (a file descriptor), so
    /// the floor the RFC recommends. Preface and header block: 10 s, the
    /// proxy's TLS handshake timeout; a client sends either in one go and
    /// has no reason to pause inside. Idle: 5 minutes, between nginx (3
    /// minutes as `http2_idle_timeout`, 75 s since 1.19.7) and Envoy (1
    /// hour), as long as browsers keep a used connection (Chrome 5
    /// minutes, Firefox 115 s). Stream idle: 5 minutes, Envoy's
    /// `stream_idle_timeout`: a gRPC stream may be quiet for minutes.
    /// Keep-alive: a PING after a minute without a frame (nginx's
    /// `send_timeout`, gRPC's 20 s for the acknowledgement): it finds dead
    /// peers that hold streams open, and clients that stopped reading (the
    /// connection stops reading too, so no acknowledgement comes).
    fn default() -> Self {
        Config {
            max_concurrent_streams: 100,
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            max_header_list_size: 64 << 10,
            preface_timeout: Duration::from_secs(10),
            header_block_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(300),
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a connection ended in error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] FrameError),
    #[error("header compression: {0}")]
    Compression(#[from] DecodeError),
    #[error("the client did not start with the HTTP/2 connection preface")]
    Preface,
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

const HEADER_TABLE_SIZE: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;
/// Above this many unwritten bytes, the connection stops reading and
/// streams stop producing until the client has taken some.
const WRITE_HIGH: usize = 64 * 1024;
/// Client resets of streams still being served, net of streams completed,
/// before the client is told to calm down (the "rapid reset" attack).
const RESET_BUDGET: u32 = 1000;
/// A header block's bytes, over all its CONTINUATIONs, beyond which the
/// connection is closed (a flood of CONTINUATIONs).
const MAX_BLOCK_FACTOR: usize = 4;
/// CONTINUATION frames in one header block beyond which the connection is
/// closed: a flood of empty ones never reaches the byte limit. The largest
/// block taken (256 KiB at the defaults) fills 16 frames; the rest is room
/// for clients that cut blocks into smaller pieces.
const MAX_CONTINUATIONS: usize = 64;
/// The streams this side reset that are remembered: what the client sent on
/// them before it knew is dropped (RFC 9113 §5.1), on other closed streams
/// it is an error. Beyond the client's 100 concurrent streams.
const RECENT_RESETS: usize = 128;
/// Stream slots kept once no stream is open: a client's usual handful of
/// concurrent requests reuses them, a burst's others are given back.
const KEEP_SLOTS: usize = 16;
/// The write buffer's capacity kept once it is drained: the 64 KiB it may
/// hold before streams stop producing, a frame over, rounded to a power of two.
const WRITE_RETAIN: usize = 128 * 1024;
/// The keep-alive PING's payload, to tell its acknowledgement from others.
const KEEPALIVE_PING: [u8; 8] = *b"trefoil\0";

const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// Rounds of reading and running streams in one poll of the connection,
/// before it yields to the worker's other tasks.
const ROUNDS_PER_POLL: usize = 16;
/// What a peer's windows start at before its SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;

enum Work<F, B> {
    /// The request's future, until it gives the response.
    Service(Pin<Box<F>>),
    /// The response body, being sent.
    Body(B),
    Done,
}

struct Slot<F, B> {
    id: u32,
    work: Work<F, B>,
    send_window: i64,
    /// What the client may still send on this stream, and what was read and not yet returned.
    recv_window: i64,
    recv_unreturned: u32,
    /// The request body's queue while the client may still send on it.
    recv: Option<Arc<Shared>>,
    content_length: Option<u64>,
    received: u64,
    head: bool,
    /// Data that did not fit the flow-control windows or the write buffer, and whether it ends the stream.
    blocked: Option<(Bytes, bool)>,
    /// DATA or WINDOW_UPDATE went either way since the timer last looked.
    progressed: bool,
    /// When the timer first found it without progress.
    quiet_from: Instant,
}

/// A header block arriving over CONTINUATION frames.
struct Continuing {
    stream: u32,
    block: BytesMut,
    end_stream: bool,
    continuations: usize,
    /// When the block must have ended (`header_block_timeout`).
    due: Instant,
}

/// One client connection. A future that ends when the connection does.
pub struct Connection<I, S, F, B> {
    io: I,
    service: S,
    config: Config,
    read: BytesMut,
    write: Vec<u8>,
    written: usize,
    /// Bytes were written that the stream may still buffer (TLS): flush it.
    unflushed: bool,
    preface_read: bool,
    decoder: Decoder,
    encoder: Encoder,
    block: Vec<u8>,
    peer_max_frame: u32,
    peer_initial_window: i64,
    send_window: i64,
    recv_window: i64,
    recv_unreturned: u32,
    streams: HashMap<u32, usize, BuildHasherDefault<FxHasher>>,
    slots: Vec<Option<Slot<F, B>>>,
    wakers: Vec<Waker>,
    free: Vec<usize>,
    signals: Arc<Signals>,
    /// Slots that wait for the write buffer to drain.
    waiting_to_write: Vec<usize>,
    /// Kept for their capacity: what `signals` hands over each round.
    woken: Vec<usize>,
    released: Vec<(u32, u32)>,
    /// The highest stream the client opened, and the highest this side
    /// acted on (what GOAWAY reports: streams above it may be retried).
    last_stream: u32,
    last_taken: u32,
    continuing: Option<Continuing>,
    /// GOAWAY sent: no new streams, close once the open ones are done.
    going_away: bool,
    /// The client sent GOAWAY: no new streams will come.
    peer_going_away: bool,
    read_closed: bool,
    failed: Option<Error>,
    reset_budget: u32,
    /// Streams this side reset lately, a ring (see `RECENT_RESETS`).
    recent_resets: [u32; RECENT_RESETS],
    recent_reset_next: usize,
    timer: Timer,
    /// The timer was armed for the preface: at the first poll, in the runtime.
    polled: bool,
    /// The client's first SETTINGS arrived after its preface.
    settings_seen: bool,
    /// When the preface and that SETTINGS are due; `None` once they are in.
    preface_due: Option<Instant>,
    /// When the timer last fired (or the connection began).
    last_fire: Instant,
    /// Bytes were read since the timer last looked, and when it last saw that.
    read_seen: bool,
    quiet_read_from: Instant,
    /// When a keep-alive PING went out that is not acknowledged yet.
    ping_sent: Option<Instant>,
    /// A stream opened since the timer last looked.
    opened_seen: bool,
    /// When the timer first found no stream open.
    idle_from: Option<Instant>,
    /// When the timer first found the connection closing.
    closing_from: Option<Instant>,
}

impl<I, S, F, B> Connection<I, S, F, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<RecvBody>) -> F + Unpin,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(io: I, config: Config, service: S) -> Self {
        let mut write = Vec::with_capacity(16 * 1024);
        frame::encode_settings(
            &[
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, config.max_concurrent_streams),
                (SETTINGS_INITIAL_WINDOW_SIZE, config.stream_window),
                (SETTINGS_MAX_HEADER_LIST_SIZE, config.max_header_list_size),
            ],
            &mut write,
        );
        if config.connection_window as i64 > DEFAULT_WINDOW {
            frame::encode_window_update(0, config.connection_window - DEFAULT_WINDOW as u32, &mut write);
        }
        let now = Instant::now();
        Connection {
            preface_due: Some(now + config.preface_timeout),
            io,
            service,
            decoder: Decoder::new(HEADER_TABLE_SIZE, config.max_header_list_size as usize),
            recv_window: (config.connection_window as i64).max(DEFAULT_WINDOW),
            config,
            read: BytesMut::with_capacity(READ_CHUNK),
            write,
            written: 0,
            unflushed: false,
            preface_read: false,
            encoder: Encoder::new(),
            block: Vec::with_capacity(512),
            peer_max_frame: DEFAULT_MAX_FRAME_SIZE,
            peer_initial_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            recv_unreturned: 0,
            streams: HashMap::default(),
            slots: Vec::new(),
            wakers: Vec::new(),
            free: Vec::new(),
            signals: Arc::default(),
            waiting_to_write: Vec::new(),
            woken: Vec::new(),
            released: Vec::new(),
            last_stream: 0,
            last_taken: 0,
            continuing: None,
            going_away: false,
            peer_going_away: false,
            read_closed: false,
            failed: None,
            reset_budget: RESET_BUDGET,
            recent_resets: [0; RECENT_RESETS],
            recent_reset_next: 0,
            timer: Timer::default(),
            polled: false,
            settings_seen: false,
            last_fire: now,
            read_seen: false,
            quiet_read_from: now,
            ping_sent: None,
            opened_seen: false,
            idle_from: None,
            closing_from: None,
        }
    }

    /// Refuses new streams (GOAWAY), lets the open ones finish, then closes.
    pub fn graceful_shutdown(&mut self) {
        if !self.going_away {
            self.going_away = true;
            frame::encode_goaway(self.last_taken, Reason::NO_ERROR, &mut self.write);
            self.signals.connection.wake();
        }
    }

    fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Ends the connection: GOAWAY with `error`'s reason, every stream dropped.
    fn fail(&mut self, error: Error) {
        if self.failed.is_some() {
            return;
        }
        let reason = match &error {
            Error::Protocol(FrameError::Connection { reason, .. }) => *reason,
            Error::Compression(_) => Reason::COMPRESSION_ERROR,
            // Not the client's breach of the protocol: this side's limit.
            Error::Timeout(_) => Reason::NO_ERROR,
            _ => Reason::PROTOCOL_ERROR,
        };
        frame::encode_goaway(self.last_taken, reason, &mut self.write);
        for key in 0..self.slots.len() {
            self.cancel(key, "the connection failed");
        }
        self.failed = Some(error);
    }

    #[allow(unsafe_code)] // reading into spare capacity without zeroing it first, on the hot path
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() == 0 {
            // An idle connection holds no buffers (see `on_timer`): they
            // come back with the first bytes read.
            let mut first = [0u8; 512];
            let mut buf = ReadBuf::new(&mut first);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            self.read.reserve(READ_CHUNK);
            self.read.extend_from_slice(buf.filled());
            self.write.reserve(READ_CHUNK);
            return Poll::Ready(Ok(n));
        }
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        let spare = self.read.spare_capacity_mut();
        let mut buf = ReadBuf::uninit(spare);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
        unsafe { self.read.set_len(self.read.len() + n) };
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.written > 0 {
            self.write.clear();
            self.written = 0;
            self.unflushed = true;
            if self.write.capacity() > WRITE_RETAIN {
                self.write.shrink_to(READ_CHUNK);
            }
        }
        // TLS streams buffer records until flushed.
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn process_frames(&mut self) -> Result<(), Error> {
        if !self.preface_read {
            if self.read.len() < PREFACE.len() {
                return if PREFACE.starts_with(&self.read) { Ok(()) } else { Err(Error::Preface) };
            }
            if &self.read[..PREFACE.len()] != PREFACE {
                return Err(Error::Preface);
            }
            let _ = self.read.split_to(PREFACE.len());
            self.preface_read = true;
        }
        while self.failed.is_none() {
            match frame::decode(&mut self.read, DEFAULT_MAX_FRAME_SIZE) {
                Ok(Some(frame)) if !self.settings_seen => {
                    // RFC 9113 §3.4: the preface ends with a SETTINGS frame.
                    if !matches!(frame, Frame::Settings { ack: false, .. }) {
                        return Err(protocol_error("the preface's first frame is not SETTINGS"));
                    }
                    self.settings_seen = true;
                    self.preface_due = None;
                    self.on_frame(frame)?;
                }
                Ok(Some(frame)) => match self.on_frame(frame) {
                    Ok(()) => {}
                    Err(Error::Protocol(FrameError::Stream { stream, reason, .. })) => self.reset(stream, reason),
                    Err(e) => return Err(e),
                },
                Ok(None) => break,
                Err(FrameError::Stream { stream, reason, .. }) => self.reset(stream, reason),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), Error> {
        if let Some(continuing) = &mut self.continuing {
            let Frame::Continuation { stream, fragment, end_headers } = frame else {
                return Err(protocol_error("a header block interrupted before its end"));
            };
            if stream != continuing.stream {
                return Err(protocol_error("CONTINUATION of another stream"));
            }
            continuing.block.extend_from_slice(&fragment);
            continuing.continuations += 1;
            if continuing.block.len() > self.config.max_header_list_size as usize * MAX_BLOCK_FACTOR {
                return Err(FrameError::Connection { reason: Reason::ENHANCE_YOUR_CALM, what: "header block too large" }.into());
            }
            if continuing.continuations > MAX_CONTINUATIONS {
                return Err(FrameError::Connection { reason: Reason::ENHANCE_YOUR_CALM, what: "too many CONTINUATION frames" }.into());
            }
            if end_headers {
                let Continuing { stream, block, end_stream, .. } = self.continuing.take().expect("checked above");
                return self.on_header_block(stream, block.freeze(), end_stream);
            }
            return Ok(());
        }
        match frame {
            Frame::Headers { stream, fragment, end_stream, end_headers: true } => self.on_header_block(stream, fragment, end_stream),
            Frame::Headers { stream, fragment, end_stream, end_headers: false } => {
                let due = Instant::now() + self.config.header_block_timeout;
                self.timer.set_by(due);
                self.continuing = Some(Continuing { stream, block: BytesMut::from(&fragment[..]), end_stream, continuations: 0, due });
                Ok(())
            }
            Frame::Continuation { .. } => Err(protocol_error("CONTINUATION without HEADERS")),
            Frame::Data { stream, data, end_stream, flow_len } => self.on_data(stream, data, end_stream, flow_len),
            Frame::RstStream { stream, .. } => self.on_reset(stream),
            Frame::Settings { ack: false, settings } => self.on_settings(settings),
            Frame::Ping { ack: false, payload } => {
                frame::encode_ping_ack(payload, &mut self.write);
                Ok(())
            }
            Frame::Ping { ack: true, payload: KEEPALIVE_PING } => {
                self.ping_sent = None;
                Ok(())
            }
            Frame::GoAway { .. } => {
                self.peer_going_away = true;
                Ok(())
            }
            Frame::WindowUpdate { stream: 0, increment } => {
                self.send_window += increment as i64;
                if self.send_window > MAX_WINDOW as i64 {
                    return Err(FrameError::Connection { reason: Reason::FLOW_CONTROL_ERROR, what: "connection window over 2^31-1" }.into());
                }
                self.wake_blocked();
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                let Some(&key) = self.streams.get(&stream) else {
                    // RFC 9113 §5.1: on an idle stream, a connection error; on a closed one, ignored.
                    return if self.is_idle(stream) { Err(protocol_error("WINDOW_UPDATE on a stream not opened")) } else { Ok(()) };
                };
                let slot = self.slots[key].as_mut().expect("streams point at live slots");
                slot.progressed = true;
                slot.send_window += increment as i64;
                if slot.send_window > MAX_WINDOW as i64 {
                    return Err(FrameError::Stream { stream, reason: Reason::FLOW_CONTROL_ERROR, what: "stream window over 2^31-1" }.into());
                }
                if slot.blocked.is_some() {
                    self.signals.woken.lock().unwrap_or_else(|p| p.into_inner()).push(key);
                }
                Ok(())
            }
            Frame::PushPromise => Err(protocol_error("a client must not push")),
            Frame::Settings { ack: true, .. } | Frame::Ping { ack: true, .. } | Frame::Priority { .. } | Frame::Unknown => Ok(()),
        }
    }

    fn on_settings(&mut self, settings: Settings) -> Result<(), Error> {
        if let Some(size) = settings.max_frame_size {
            self.peer_max_frame = size;
        }
        if let Some(window) = settings.initial_window_size {
            let delta = window as i64 - self.peer_initial_window;
            self.peer_initial_window = window as i64;
            for slot in self.slots.iter_mut().flatten() {
                slot.send_window += delta;
                if slot.send_window > MAX_WINDOW as i64 {
                    return Err(FrameError::Connection { reason: Reason::FLOW_CONTROL_ERROR, what: "a stream's window over 2^31-1" }.into());
                }
            }
            if delta > 0 {
                self.wake_blocked();
            }
        }
        // The encoder keeps no dynamic table: SETTINGS_HEADER_TABLE_SIZE does not matter to it.
        frame::encode_settings_ack(&mut self.write);
        Ok(())
    }

    fn wake_blocked(&mut self) {
        let mut woken = self.signals.woken.lock().unwrap_or_else(|p| p.into_inner());
        for (key, slot) in self.slots.iter().enumerate() {
            if slot.as_ref().is_some_and(|s| s.blocked.is_some()) {
                woken.push(key);
            }
        }
    }

    fn on_header_block(&mut self, stream: u32, block: Bytes, end_stream: bool) -> Result<(), Error> {
        if let Some(&key) = self.streams.get(&stream) {
            return self.on_trailers(key, &block, end_stream);
        }
        if stream.is_multiple_of(2) {
            return Err(protocol_error("a client stream with an even number"));
        }
        let mut head = RequestHead::default();
        let decoded = self.decoder.decode(&block, |field| head.add(field));
        if stream <= self.last_stream {
            // Not a stream that is open: the block was decoded for the table's sake.
            if let Err(e) = decoded {
                if !matches!(e, DecodeError::ListTooLarge(_)) {
                    return Err(e.into());
                }
            }
            if self.forgotten_quietly(stream) {
                // Sent before the client knew the stream was reset.
                return Ok(());
            }
            // RFC 9113 §5.1.1: a lower identifier than one opened already;
            // §5.1: the last one, closed since.
            if stream < self.last_stream {
                return Err(protocol_error("HEADERS on a stream lower than one opened already"));
            }
            return Err(FrameError::Connection { reason: Reason::STREAM_CLOSED, what: "HEADERS on a closed stream" }.into());
        }
        self.last_stream = stream;
        let too_large = match decoded {
            Ok(()) => false,
            Err(DecodeError::ListTooLarge(_)) => true,
            Err(e) => return Err(e.into()),
        };
        if self.going_away {
            return Ok(());
        }
        if self.open_streams() >= self.config.max_concurrent_streams as usize {
            self.reset(stream, Reason::REFUSED_STREAM);
            return Ok(());
        }
        self.last_taken = stream;
        if too_large {
            self.local_reply(stream, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, end_stream);
            return Ok(());
        }
        let Ok((request, content_length)) = head.into_request() else {
            self.reset(stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        if end_stream && content_length.is_some_and(|n| n != 0) {
            self.reset(stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        let key = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.wakers.push(Waker::from(Arc::new(SlotWaker { slot: self.slots.len() - 1, signals: self.signals.clone() })));
            self.slots.len() - 1
        });
        let head = request.method() == Method::HEAD;
        let (recv, body) = if end_stream {
            (None, RecvBody::empty())
        } else {
            let shared = Arc::new(Shared::default());
            (Some(shared.clone()), RecvBody::streaming(stream, shared, self.signals.clone(), content_length))
        };
        let request = request.map(|()| body);
        let future = Box::pin((self.service)(request));
        self.slots[key] = Some(Slot {
            id: stream,
            work: Work::Service(future),
            send_window: self.peer_initial_window,
            recv_window: self.config.stream_window as i64,
            recv_unreturned: 0,
            recv,
            content_length,
            received: 0,
            head,
            blocked: None,
            progressed: true,
            quiet_from: self.last_fire,
        });
        self.opened_seen = true;
        self.streams.insert(stream, key);
        self.run(key);
        Ok(())
    }

    fn on_trailers(&mut self, key: usize, block: &Bytes, end_stream: bool) -> Result<(), Error> {
        let mut trailers = HeaderMap::new();
        let mut malformed = false;
        let decoded = self.decoder.decode(block, |field| match (field.name, HeaderValue::from_maybe_shared(field.value)) {
            (Name::Header(name), Ok(value)) if !is_connection_specific(&name) => {
                trailers.append(name, value);
            }
            _ => malformed = true,
        });
        match decoded {
            Ok(()) => {}
            Err(DecodeError::ListTooLarge(_)) => malformed = true,
            Err(e) => return Err(e.into()),
        }
        let slot = self.slots[key].as_mut().expect("streams point at live slots");
        let stream = slot.id;
        let Some(shared) = slot.recv.take() else {
            return Err(FrameError::Stream { stream, reason: Reason::STREAM_CLOSED, what: "HEADERS after the request's end" }.into());
        };
        if !end_stream || malformed || slot.content_length.is_some_and(|n| n != slot.received) {
            shared.update(|s| s.failed = Some("malformed request trailers"));
            return Err(FrameError::Stream { stream, reason: Reason::PROTOCOL_ERROR, what: "malformed trailers" }.into());
        }
        shared.update(|s| {
            s.trailers = Some(trailers);
            s.ended = true;
        });
        self.close_if_done(key);
        Ok(())
    }

    fn on_data(&mut self, stream: u32, data: Bytes, end_stream: bool, flow_len: u32) -> Result<(), Error> {
        if flow_len as i64 > self.recv_window {
            return Err(FrameError::Connection { reason: Reason::FLOW_CONTROL_ERROR, what: "DATA beyond the connection's window" }.into());
        }
        self.recv_window -= flow_len as i64;
        // Padding is not for any reader: its credit goes back at once.
        self.recv_unreturned += flow_len - data.len() as u32;
        let Some(&key) = self.streams.get(&stream) else {
            if self.is_idle(stream) {
                return Err(protocol_error("DATA on a stream not opened"));
            }
            self.recv_unreturned += data.len() as u32;
            if self.forgotten_quietly(stream) {
                // What the client sent before it knew is dropped.
                return Ok(());
            }
            // RFC 9113 §5.1: after END_STREAM or RST_STREAM from the client.
            return Err(FrameError::Connection { reason: Reason::STREAM_CLOSED, what: "DATA on a closed stream" }.into());
        };
        let slot = self.slots[key].as_mut().expect("streams point at live slots");
        slot.progressed = true;
        let Some(shared) = slot.recv.clone() else {
            self.recv_unreturned += data.len() as u32;
            return Err(FrameError::Stream { stream, reason: Reason::STREAM_CLOSED, what: "DATA after the request's end" }.into());
        };
        if flow_len as i64 > slot.recv_window {
            return Err(FrameError::Stream { stream, reason: Reason::FLOW_CONTROL_ERROR, what: "DATA beyond the stream's window" }.into());
        }
        slot.recv_window -= flow_len as i64;
        slot.received += data.len() as u64;
        let length_broken = slot.content_length.is_some_and(|n| slot.received > n || (end_stream && slot.received != n));
        if length_broken {
            shared.update(|s| s.failed = Some("request body and content-length disagree"));
            return Err(
                FrameError::Stream { stream, reason: Reason::PROTOCOL_ERROR, what: "request body and content-length disagree" }.into()
            );
        }
        let len = data.len() as u32;
        let mut dropped = false;
        shared.update(|s| {
            dropped = s.dropped;
            if !dropped && !data.is_empty() {
                s.chunks.push_back(data);
            }
            if end_stream {
                s.ended = true;
            }
        });
        if dropped {
            self.signals.release(stream, len);
        }
        if end_stream {
            slot.recv = None;
            self.close_if_done(key);
        }
        Ok(())
    }

    fn on_reset(&mut self, stream: u32) -> Result<(), Error> {
        match self.streams.get(&stream) {
            Some(&key) => {
                if matches!(self.slots[key].as_ref().map(|s| &s.work), Some(Work::Service(_))) {
                    self.reset_budget = self.reset_budget.saturating_sub(1);
                    if self.reset_budget == 0 {
                        return Err(FrameError::Connection {
                            reason: Reason::ENHANCE_YOUR_CALM,
                            what: "too many streams reset while being served",
                        }
                        .into());
                    }
                }
                self.cancel(key, "the client reset the stream");
                Ok(())
            }
            None if self.is_idle(stream) => Err(protocol_error("RST_STREAM on a stream not opened")),
            None => Ok(()),
        }
    }

    /// Sends RST_STREAM and forgets the stream.
    fn reset(&mut self, stream: u32, reason: Reason) {
        self.send_reset(stream, reason);
        if let Some(&key) = self.streams.get(&stream) {
            self.cancel(key, "the stream was reset");
        }
    }

    /// Writes RST_STREAM, and remembers the stream for a while.
    fn send_reset(&mut self, stream: u32, reason: Reason) {
        frame::encode_rst_stream(stream, reason, &mut self.write);
        self.recent_resets[self.recent_reset_next] = stream;
        self.recent_reset_next = (self.recent_reset_next + 1) % RECENT_RESETS;
    }

    /// A stream that is not open and whose frames are dropped without an
    /// error: reset by this side lately, or refused by a GOAWAY sent.
    fn forgotten_quietly(&self, stream: u32) -> bool {
        (self.going_away && stream > self.last_taken) || self.recent_resets.contains(&stream)
    }

    /// A stream in the idle state (RFC 9113 §5.1): never opened by the
    /// client. Even ones would be this side's, which opens none.
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream || stream.is_multiple_of(2)
    }

    /// Drops a stream's work and slot; its request body, if still read, fails.
    fn cancel(&mut self, key: usize, why: &'static str) {
        let Some(slot) = self.slots.get_mut(key).and_then(Option::take) else { return };
        if let Some(shared) = slot.recv {
            shared.update(|s| s.failed = Some(why));
        }
        self.forget(slot.id, key);
    }

    /// Frees a stream's slot once it is empty. The last open stream's end
    /// gives back what a burst of streams grew.
    fn forget(&mut self, stream: u32, key: usize) {
        self.streams.remove(&stream);
        self.free.push(key);
        if self.streams.is_empty() && self.slots.len() > KEEP_SLOTS {
            self.shrink(KEEP_SLOTS);
        }
    }

    /// With no stream open: keeps `keep` slots, and the rest of what was
    /// grown for many streams at once goes back to the allocator.
    fn shrink(&mut self, keep: usize) {
        debug_assert!(self.streams.is_empty());
        if self.slots.len() > keep {
            // No stream is open: every slot is empty, and on the free list.
            self.slots.truncate(keep);
            self.slots.shrink_to_fit();
            self.wakers.truncate(keep);
            self.wakers.shrink_to_fit();
            self.free.clear();
            self.free.extend((0..keep).rev());
        }
        self.free.shrink_to(keep);
        self.streams.shrink_to(keep);
        self.waiting_to_write.shrink_to(keep);
        self.woken.shrink_to(keep);
        self.released.shrink_to(keep);
        self.signals.shrink_to(keep);
    }

    /// Forgets a stream once both sides are done with it; a response that
    /// ended before the request tells the client to stop sending.
    fn close_if_done(&mut self, key: usize) {
        let Some(slot) = self.slots[key].as_mut() else { return };
        if !matches!(slot.work, Work::Done) {
            return;
        }
        if slot.recv.is_some() {
            let id = slot.id;
            self.send_reset(id, Reason::NO_ERROR);
            self.cancel(key, "the response ended before the request");
            return;
        }
        self.reset_budget = (self.reset_budget + 1).min(RESET_BUDGET);
        let id = slot.id;
        self.slots[key] = None;
        self.forget(id, key);
    }

    /// A response made here, without a body.
    fn local_reply(&mut self, stream: u32, status: StatusCode, request_ended: bool) {
        self.block.clear();
        self.encoder.encode_status(status, &mut self.block);
        frame::encode_headers(stream, &self.block, true, self.peer_max_frame, &mut self.write);
        if !request_ended {
            self.send_reset(stream, Reason::NO_ERROR);
        }
    }

    /// Polls a stream's work: its request future, then its response body.
    fn run(&mut self, key: usize) {
        loop {
            let Some(slot) = self.slots.get_mut(key).and_then(Option::as_mut) else { return };
            let mut cx = Context::from_waker(&self.wakers[key]);
            match &mut slot.work {
                Work::Service(future) => match future.as_mut().poll(&mut cx) {
                    Poll::Ready(response) => self.respond(key, response),
                    Poll::Pending => return,
                },
                Work::Body(_) => return self.pump(key),
                Work::Done => return,
            }
        }
    }

    fn respond(&mut self, key: usize, response: Response<B>) {
        let slot = self.slots[key].as_mut().expect("run checked the slot");
        let (parts, body) = response.into_parts();
        self.block.clear();
        self.encoder.encode_status(parts.status, &mut self.block);
        let (mut has_length, mut has_date) = (false, false);
        for (name, value) in &parts.headers {
            if !is_connection_specific(name) {
                has_length |= name == header::CONTENT_LENGTH;
                has_date |= name == header::DATE;
                self.encoder.encode_field(name, value, &mut self.block);
            }
        }
        // As hyper's server did: a date on every response, and the length when the body knows it.
        if !has_date {
            self.encoder.encode_field(&header::DATE, &date_now(), &mut self.block);
        }
        let end = slot.head || body.is_end_stream();
        // Not on a response that ends here: a 204 or a 304 must not carry one.
        if !has_length && !end {
            if let Some(length) = body.size_hint().exact() {
                self.encoder.encode_field(&header::CONTENT_LENGTH, &HeaderValue::from(length), &mut self.block);
            }
        }
        frame::encode_headers(slot.id, &self.block, end, self.peer_max_frame, &mut self.write);
        if end {
            self.finish_body(key);
        } else {
            slot.work = Work::Body(body);
        }
    }

    /// Moves response body frames to the write buffer while the windows and the buffer have room.
    fn pump(&mut self, key: usize) {
        loop {
            if self.write.len() >= WRITE_HIGH {
                self.waiting_to_write.push(key);
                return;
            }
            let slot = self.slots[key].as_mut().expect("pump is called on live slots");
            if let Some((data, end)) = slot.blocked.take() {
                if !self.send_data(key, data, end) {
                    return;
                }
                if end {
                    self.finish_body(key);
                    return;
                }
                continue;
            }
            let slot = self.slots[key].as_mut().expect("pump is called on live slots");
            let Work::Body(body) = &mut slot.work else { return };
            let mut cx = Context::from_waker(&self.wakers[key]);
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        if data.is_empty() && !end {
                            continue;
                        }
                        if !self.send_data(key, data, end) {
                            return;
                        }
                        if end {
                            self.finish_body(key);
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let id = slot.id;
                            self.block.clear();
                            for (name, value) in &trailers {
                                self.encoder.encode_field(name, value, &mut self.block);
                            }
                            frame::encode_headers(id, &self.block, true, self.peer_max_frame, &mut self.write);
                            self.finish_body(key);
                            return;
                        }
                    }
                },
                Poll::Ready(None) => {
                    frame::encode_data_head(slot.id, 0, true, &mut self.write);
                    self.finish_body(key);
                    return;
                }
                Poll::Ready(Some(Err(_))) => {
                    let id = slot.id;
                    self.reset(id, Reason::INTERNAL_ERROR);
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    fn finish_body(&mut self, key: usize) {
        if let Some(slot) = self.slots[key].as_mut() {
            slot.work = Work::Done;
        }
        self.close_if_done(key);
    }

    /// Writes `data` as DATA frames as far as the windows and the write
    /// buffer allow; the rest waits in the slot. Returns whether all of it went.
    fn send_data(&mut self, key: usize, mut data: Bytes, end: bool) -> bool {
        let slot = self.slots[key].as_mut().expect("send_data is called on live slots");
        slot.progressed = true;
        loop {
            if data.is_empty() {
                frame::encode_data_head(slot.id, 0, end, &mut self.write);
                return true;
            }
            let window = slot.send_window.min(self.send_window);
            // A large chunk goes a frame at a time, not all at once: the
            // buffer would keep the capacity it grew to.
            let full = self.write.len() >= WRITE_HIGH;
            if window <= 0 || full {
                slot.blocked = Some((data, end));
                if window > 0 {
                    self.waiting_to_write.push(key);
                }
                return false;
            }
            let n = data.len().min(window as usize).min(self.peer_max_frame as usize);
            let chunk = data.split_to(n);
            frame::encode_data_head(slot.id, n, end && data.is_empty(), &mut self.write);
            self.write.extend_from_slice(&chunk);
            slot.send_window -= n as i64;
            self.send_window -= n as i64;
            if data.is_empty() {
                return true;
            }
        }
    }

    /// Returns the flow-control credit of bytes the request bodies read.
    fn return_credit(&mut self) {
        let mut released = std::mem::take(&mut self.released);
        self.signals.take_released(&mut released);
        for (stream, bytes) in released.drain(..) {
            self.recv_unreturned += bytes;
            if let Some(slot) = self.streams.get(&stream).and_then(|&key| self.slots[key].as_mut()) {
                if slot.recv.is_some() {
                    slot.recv_unreturned += bytes;
                    if slot.recv_unreturned >= self.config.stream_window / 2 {
                        // The client has room again: it may be quiet until now.
                        slot.progressed = true;
                        frame::encode_window_update(stream, slot.recv_unreturned, &mut self.write);
                        slot.recv_window += slot.recv_unreturned as i64;
                        slot.recv_unreturned = 0;
                    }
                }
            }
        }
        self.released = released;
        if self.recv_unreturned >= self.config.connection_window / 2 {
            frame::encode_window_update(0, self.recv_unreturned, &mut self.write);
            self.recv_window += self.recv_unreturned as i64;
            self.recv_unreturned = 0;
        }
    }

    /// What the timer found due. Returns why the connection is to be
    /// dropped at once, without waiting to write what is left.
    fn on_timer(&mut self) -> Option<&'static str> {
        let now = Instant::now();
        self.last_fire = now;
        if self.preface_due.is_some_and(|due| now >= due) {
            self.fail(Error::Timeout("the client preface and its SETTINGS did not arrive in time"));
        }
        if self.continuing.as_ref().is_some_and(|c| now >= c.due) {
            self.fail(Error::Timeout("a header block did not end in time"));
        }
        if self.finished() {
            // Closing, but the client does not take the last frames.
            let from = *self.closing_from.get_or_insert(now);
            if now >= from + self.config.keepalive_timeout {
                return Some("the client did not take the connection's last frames");
            }
            self.timer.set(from + self.config.keepalive_timeout);
            return None;
        }
        // Every periodic check is looked at again within this much: what
        // began since the last fire (a stream, a quiet spell) is seen then.
        let mut next = now + self.tick();

        if std::mem::take(&mut self.read_seen) {
            self.quiet_read_from = now;
        }
        if let Some(sent) = self.ping_sent {
            if now >= sent + self.config.keepalive_timeout {
                return Some("the keep-alive PING was not acknowledged");
            }
            next = next.min(sent + self.config.keepalive_timeout);
        } else if let Some(interval) = self.config.keepalive_interval {
            if now >= self.quiet_read_from + interval {
                frame::encode_ping(KEEPALIVE_PING, &mut self.write);
                self.ping_sent = Some(now);
                next = next.min(now + self.config.keepalive_timeout);
            } else {
                next = next.min(self.quiet_read_from + interval);
            }
        }

        if self.streams.is_empty() {
            let from = match self.idle_from {
                Some(from) if !self.opened_seen => from,
                _ => {
                    // Idle from now on, as far as the timer knows.
                    self.shrink(0);
                    if self.read.is_empty() {
                        self.read = BytesMut::new();
                    }
                    if self.write.is_empty() {
                        self.write = Vec::new();
                    }
                    *self.idle_from.insert(now)
                }
            };
            if now >= from + self.config.idle_timeout {
                self.graceful_shutdown();
            } else {
                next = next.min(from + self.config.idle_timeout);
            }
        } else {
            self.idle_from = None;
        }
        self.opened_seen = false;

        let timeout = self.config.stream_idle_timeout;
        // Timing a stream out may shrink the slots: indexed with `get`.
        for key in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(key).and_then(Option::as_mut) else { continue };
            if std::mem::take(&mut slot.progressed) {
                slot.quiet_from = now;
            }
            let quiet_from = slot.quiet_from;
            if !self.waits_on_client(key) {
                continue;
            }
            if now >= quiet_from + timeout {
                self.time_out_stream(key);
            } else {
                next = next.min(quiet_from + timeout);
            }
        }
        if let Some(due) = self.preface_due {
            next = next.min(due);
        }
        if let Some(continuing) = &self.continuing {
            next = next.min(continuing.due);
        }
        self.timer.set(next);
        None
    }

    /// How often the timer looks at least: the shortest of the timeouts
    /// that follow what happens between fires.
    fn tick(&self) -> Duration {
        let tick = self.config.idle_timeout.min(self.config.stream_idle_timeout);
        let tick = self.config.keepalive_interval.map_or(tick, |interval| tick.min(interval));
        // A zero timeout must not make the timer spin.
        tick.max(Duration::from_millis(1))
    }

    /// Whether a stream waits on its client: for request body it is free
    /// to send (all it sent was read, and the connection's window has
    /// room), or with a response held by the client's windows or by a
    /// client that does not read.
    fn waits_on_client(&self, key: usize) -> bool {
        let Some(slot) = self.slots.get(key).and_then(Option::as_ref) else { return false };
        if slot.blocked.is_some() {
            return true;
        }
        slot.recv.as_ref().is_some_and(|shared| self.recv_window > 0 && shared.lock().chunks.is_empty())
    }

    /// Ends a stream its client left waiting (`stream_idle_timeout`): a 408
    /// if its response has not begun, RST_STREAM CANCEL if it has.
    fn time_out_stream(&mut self, key: usize) {
        let Some(slot) = self.slots[key].as_ref() else { return };
        let (id, answered, request_ended) = (slot.id, !matches!(slot.work, Work::Service(_)), slot.recv.is_none());
        self.cancel(key, "the client left the stream waiting too long");
        if answered {
            self.send_reset(id, Reason::CANCEL);
        } else {
            self.local_reply(id, StatusCode::REQUEST_TIMEOUT, request_ended);
        }
    }

    fn finished(&self) -> bool {
        self.failed.is_some() || self.read_closed || ((self.going_away || self.peer_going_away) && self.streams.is_empty())
    }
}

impl<I, S, F, B> Future for Connection<I, S, F, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<RecvBody>) -> F + Unpin,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.signals.connection.register(cx.waker());
        if !this.polled {
            this.polled = true;
            let first = this.last_fire + this.tick();
            this.timer.set(this.preface_due.map_or(first, |due| due.min(first)));
        }
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            if !this.finished() && this.write.len() < WRITE_HIGH {
                match this.poll_read(cx) {
                    Poll::Ready(Ok(0)) => {
                        this.read_closed = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        this.read_seen = true;
                        if let Err(e) = this.process_frames() {
                            this.fail(e);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            let mut woken = std::mem::take(&mut this.woken);
            this.signals.take_woken(&mut woken);
            for key in woken.drain(..) {
                progress = true;
                this.run(key);
            }
            this.woken = woken;
            this.return_credit();
            match this.poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    if !this.waiting_to_write.is_empty() {
                        progress = true;
                        for key in std::mem::take(&mut this.waiting_to_write) {
                            this.run(key);
                        }
                    }
                    if this.finished() && this.write.is_empty() {
                        let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                        return Poll::Ready(this.failed.take().map_or(Ok(()), Err));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            // Last, so that a deadline set in this round is registered
            // before the connection sleeps.
            if this.timer.poll_due(cx) {
                progress = true;
                if let Some(why) = this.on_timer() {
                    let _ = this.poll_flush(cx);
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                    return Poll::Ready(Err(this.failed.take().unwrap_or(Error::Timeout(why))));
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let the worker's other tasks run first. A stream
        // whose resources are out of tokio's cooperative budget for this
        // poll wakes itself at once, and looping on would never end.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The current time as a `date` value, formatted once a second per thread.
fn date_now() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, HeaderValue::from_str(&httpdate::fmt_http_date(now)).unwrap_or_else(|_| HeaderValue::from_static("")));
        }
        cached.1.clone()
    })
}

fn protocol_error(what: &'static str) -> Error {
    Error::Protocol(FrameError::Connection { reason: Reason::PROTOCOL_ERROR, what })
}

/// Fields that belong to an HTTP/1.1 connection and must not appear in
/// HTTP/2 (RFC 9113 §8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// A request's header list as it is decoded, checked as RFC 9113 §8.3 says.
#[derive(Default)]
struct RequestHead {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    regular_seen: bool,
    cookies: usize,
    content_length: Option<u64>,
    malformed: Option<&'static str>,
}

impl RequestHead {
    fn add(&mut self, field: Field) {
        if self.malformed.is_some() {
            return;
        }
        if let Err(why) = self.try_add(field) {
            self.malformed = Some(why);
        }
    }

    fn try_add(&mut self, field: Field) -> Result<(), &'static str> {
        match field.name {
            Name::Pseudo(pseudo) => {
                if self.regular_seen {
                    return Err("pseudo-header after a regular field");
                }
                let place = match pseudo {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status | Pseudo::Protocol => return Err("pseudo-header not allowed in a request"),
                };
                if place.replace(field.value).is_some() {
                    return Err("repeated pseudo-header");
                }
            }
            Name::Header(name) => {
                self.regular_seen = true;
                if is_connection_specific(&name) && !(name == header::TE && field.value == "trailers") {
                    return Err("connection-specific field");
                }
                let mut value = HeaderValue::from_maybe_shared(field.value).map_err(|_| "invalid character in a field value")?;
                if field.sensitive {
                    value.set_sensitive(true);
                }
                if name == header::CONTENT_LENGTH {
                    let n = value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or("invalid content-length")?;
                    if self.content_length.replace(n).is_some_and(|old| old != n) {
                        return Err("conflicting content-length");
                    }
                } else if name == header::COOKIE {
                    self.cookies += 1;
                }
                self.headers.append(name, value);
            }
            Name::Malformed(_) => return Err("invalid field name"),
        }
        Ok(())
    }

    fn into_request(mut self) -> Result<(Request<()>, Option<u64>), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let method = Method::from_bytes(&self.method.ok_or("no :method")?).map_err(|_| "invalid :method")?;
        let uri = if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err(":scheme or :path in a CONNECT request");
            }
            Uri::from_maybe_shared(self.authority.ok_or("CONNECT without :authority")?).map_err(|_| "invalid :authority")?
        } else {
            let scheme = self.scheme.ok_or("no :scheme")?;
            let path = self.path.filter(|p| !p.is_empty()).ok_or("no :path")?;
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "invalid :path")?);
            if let Some(authority) = self.authority {
                parts.scheme = Some(Scheme::try_from(&scheme[..]).map_err(|_| "invalid :scheme")?);
                parts.authority = Some(Authority::from_maybe_shared(authority).map_err(|_| "invalid :authority")?);
            }
            Uri::from_parts(parts).map_err(|_| "invalid request target")?
        };
        if self.cookies > 1 {
            // One field for an HTTP/1.1 hop (RFC 9113 §8.2.3).
            let joined: Vec<u8> =
                self.headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b"; "[..]);
            self.headers.insert(header::COOKIE, HeaderValue::from_bytes(&joined).map_err(|_| "invalid cookie")?);
        }
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers;
        Ok((request, self.content_length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// Polls `connection` until `done` holds of it (woken as a task, not spinning).
    async fn poll_until<I, S, F, B>(connection: &mut Connection<I, S, F, B>, done: impl Fn(&Connection<I, S, F, B>) -> bool)
    where
        I: AsyncRead + AsyncWrite + Unpin,
        S: FnMut(Request<RecvBody>) -> F + Unpin,
        F: Future<Output = Response<B>>,
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let wait = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut *connection).poll(cx) {
                panic!("the connection ended: {result:?}");
            }
            if done(connection) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(20), wait).await.expect("in time");
    }

    #[tokio::test]
    async fn what_a_burst_of_streams_grew_is_given_back_once_it_is_over() {
        const BURST: u32 = 500;
        let (mut client, io) = tokio::io::duplex(1 << 20);
        let (open, gate) = tokio::sync::watch::channel(false);
        let config = Config { max_concurrent_streams: 1000, ..Config::default() };
        let mut first = true;
        let mut connection = Connection::new(io, config, move |_req| {
            let mut gate = gate.clone();
            // One response of 1 MiB, in one chunk: more than the write buffer keeps.
            let len = if std::mem::take(&mut first) { 1 << 20 } else { 10 };
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Response::new(Full::new(Bytes::from(vec![b'x'; len])))
            }
        });
        let mut hello = PREFACE.to_vec();
        // Windows as large as they go, so responses are not held by them.
        frame::encode_settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)], &mut hello);
        frame::encode_window_update(0, MAX_WINDOW - DEFAULT_WINDOW as u32, &mut hello);
        for i in 0..BURST {
            // GET, http, /, :authority x.
            frame::encode_headers(2 * i + 1, &[0x82, 0x86, 0x84, 0x01, 1, b'x'], true, DEFAULT_MAX_FRAME_SIZE, &mut hello);
        }
        // Reads every response to its end, as a client would.
        let reader = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            client.write_all(&hello).await.unwrap();
            let (mut buf, mut ended) = (BytesMut::new(), 0);
            loop {
                while let Some(f) = frame::decode(&mut buf, 1 << 24).unwrap() {
                    if let Frame::Data { end_stream: true, .. } = f {
                        ended += 1;
                    }
                }
                if ended == BURST {
                    break;
                }
                let mut chunk = vec![0u8; 64 << 10];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            client
        });
        poll_until(&mut connection, |c| c.open_streams() == BURST as usize).await;
        assert_eq!(connection.slots.len(), BURST as usize);
        open.send(true).unwrap();
        // Served until the client has every response whole.
        let _client = tokio::select! {
            client = reader => client.unwrap(),
            result = &mut connection => panic!("the connection ended: {result:?}"),
        };
        poll_until(&mut connection, |c| c.open_streams() == 0).await;
        assert!(connection.slots.len() <= KEEP_SLOTS && connection.slots.capacity() <= KEEP_SLOTS, "slots {}", connection.slots.capacity());
        assert!(connection.wakers.capacity() <= KEEP_SLOTS, "wakers {}", connection.wakers.capacity());
        assert!(connection.free.capacity() <= KEEP_SLOTS, "free {}", connection.free.capacity());
        // A map's capacity is rounded up to its buckets' power of two.
        assert!(connection.streams.capacity() <= 2 * KEEP_SLOTS, "streams {}", connection.streams.capacity());
        assert!(connection.write.capacity() <= WRITE_RETAIN, "write buffer {}", connection.write.capacity());
        assert!(connection.woken.capacity() <= KEEP_SLOTS && connection.released.capacity() <= KEEP_SLOTS);
    }
}
