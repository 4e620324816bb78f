//! `antivirus`: an adapter that puts a ClamAV daemon (clamd) in a chain. The
//! daemon knows nothing of HTTP or CNFs; the adapter turns each call's body
//! into one clamd INSTREAM scan and the daemon's answer into a verdict. This
//! is the pattern for wrapping any legacy network function.
//!
//! INSTREAM: the command `zINSTREAM\0`, then the data as chunks each preceded
//! by its length (4 bytes, big-endian), then a zero length; clamd answers one
//! NUL-terminated line, `stream: OK` or `stream: <name> FOUND` (or an error).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use trefoil_chain::json::JsonVerdict;

use crate::request::Request;
use crate::server::Function;
use crate::verdict;

/// Chunks sent to clamd: well under its default StreamMaxLength and buffer sizes.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// clamd's answers are one short line; more means something else is talking.
const MAX_ANSWER_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("connecting to clamd at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("talking to clamd: {0}")]
    Io(#[from] std::io::Error),
    #[error("clamd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("clamd answered {0:?}")]
    Answer(String),
}

/// Where clamd listens: `host:port`, or a unix socket path (`unix:PATH` or an absolute path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ClamdAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(ClamdAddr::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(ClamdAddr::Unix(s.into()));
        }
        let tcp = s.strip_prefix("tcp:").unwrap_or(s);
        match tcp.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(ClamdAddr::Tcp(tcp.to_string())),
            _ => Err(format!("{s:?}: expected HOST:PORT, unix:PATH or an absolute socket path")),
        }
    }
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Tcp(a) => write!(f, "{a}"),
            ClamdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What clamd found in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanResult {
    Clean,
    Infected(String),
}

/// Sends `data` as one INSTREAM scan over `conn` and reads the answer.
pub async fn instream<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, data: &[u8]) -> Result<ScanResult, ClamdError> {
    conn.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(CHUNK_BYTES) {
        // Chunks are at most CHUNK_BYTES, so the length fits in 4 bytes.
        conn.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        conn.write_all(chunk).await?;
    }
    conn.write_all(&0u32.to_be_bytes()).await?;
    conn.flush().await?;
    parse_answer(&read_answer(conn).await?)
}

/// Reads one answer, up to its NUL (or the connection's end).
async fn read_answer<S: AsyncRead + Unpin>(conn: &mut S) -> Result<String, ClamdError> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.iter().position(|b| *b == 0) {
            answer.truncate(end);
            break;
        }
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(ClamdError::Answer(String::from_utf8_lossy(&answer[..64]).into_owned() + "..."));
        }
    }
    Ok(String::from_utf8_lossy(&answer).trim_end().to_string())
}

/// `stream: OK` or `stream: <name> FOUND`; anything else (e.g. `INSTREAM size limit exceeded. ERROR`) is an error.
pub fn parse_answer(answer: &str) -> Result<ScanResult, ClamdError> {
    let rest = answer.strip_prefix("stream: ").ok_or_else(|| ClamdError::Answer(answer.to_string()))?;
    if rest == "OK" {
        return Ok(ScanResult::Clean);
    }
    match rest.strip_suffix(" FOUND") {
        Some(name) if !name.is_empty() => Ok(ScanResult::Infected(name.to_string())),
        _ => Err(ClamdError::Answer(answer.to_string())),
    }
}

/// The function.
#[derive(Debug)]
pub struct Antivirus {
    pub clamd: ClamdAddr,
    /// Bound on one scan, connection included.
    pub timeout: Duration,
    pub deny_status: u16,
}

impl Antivirus {
    /// Scans `data` on a fresh connection (clamd serves one command per connection unless told otherwise).
    pub async fn scan(&self, data: &[u8]) -> Result<ScanResult, ClamdError> {
        let work = async {
            match &self.clamd {
                ClamdAddr::Tcp(addr) => {
                    let mut conn =
                        tokio::net::TcpStream::connect(addr).await.map_err(|source| ClamdError::Connect { addr: addr.clone(), source })?;
                    instream(&mut conn, data).await
                }
                ClamdAddr::Unix(path) => {
                    let mut conn = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| ClamdError::Connect { addr: self.clamd.to_string(), source })?;
                    instream(&mut conn, data).await
                }
            }
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| ClamdError::Timeout(self.timeout))?
    }
}

impl Function for Antivirus {
    fn kind(&self) -> &'static str {
        "antivirus"
    }

    async fn decide(&self, call: Request) -> Result<JsonVerdict, String> {
        let Some(body) = call.body.as_ref() else {
            // Without sendBody there is nothing to scan; say so rather than pretend the body was clean.
            tracing::warn!(cnf = call.cnf, trace_id = call.trace_id, "no body in the call: give the NetworkFunction sendBody");
            return Ok(verdict::allow(vec![verdict::event(
                "scan_skipped",
                json!({"cnf": call.cnf, "phase": call.phase(), "reason": "no body sent"}),
            )]));
        };
        if body.is_empty() {
            return Ok(verdict::allow(vec![verdict::event("scan_clean", json!({"cnf": call.cnf, "phase": call.phase(), "bytes": 0}))]));
        }
        match self.scan(body).await.map_err(|e| e.to_string())? {
            ScanResult::Clean => {
                Ok(verdict::allow(vec![verdict::event("scan_clean", json!({"cnf": call.cnf, "phase": call.phase(), "bytes": body.len()}))]))
            }
            ScanResult::Infected(virus) => {
                tracing::info!(cnf = call.cnf, trace_id = call.trace_id, virus, "virus found");
                Ok(verdict::deny(
                    self.deny_status,
                    format!("blocked: {virus} found\n"),
                    vec![verdict::event(
                        "virus_found",
                        json!({"cnf": call.cnf, "phase": call.phase(), "virus": virus, "bytes": body.len()}),
                    )],
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clamd side of one INSTREAM exchange, in process: checks the framing
    /// and collects the data, then answers `answer`.
    async fn fake_clamd<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, answer: &[u8]) -> (Vec<usize>, Vec<u8>) {
        let mut command = [0u8; 10];
        conn.read_exact(&mut command).await.unwrap();
        assert_eq!(&command, b"zINSTREAM\0");
        let (mut chunks, mut data) = (Vec::new(), Vec::new());
        loop {
            let len = conn.read_u32().await.unwrap() as usize;
            if len == 0 {
                break;
            }
            let mut chunk = vec![0u8; len];
            conn.read_exact(&mut chunk).await.unwrap();
            chunks.push(len);
            data.extend_from_slice(&chunk);
        }
        conn.write_all(answer).await.unwrap();
        (chunks, data)
    }

    #[tokio::test]
    async fn instream_sends_length_prefixed_chunks_and_a_zero_terminator() {
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10)).map(|i| i as u8).collect();
        let (mut ours, theirs) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { fake_clamd(theirs, b"stream: OK\0").await });
        assert_eq!(instream(&mut ours, &data).await.unwrap(), ScanResult::Clean);
        let (chunks, seen) = server.await.unwrap();
        assert_eq!(chunks, [CHUNK_BYTES, CHUNK_BYTES, 10]);
        assert_eq!(seen, data);

        let (mut ours, theirs) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { fake_clamd(theirs, b"stream: Eicar-Test-Signature FOUND\0").await });
        assert_eq!(instream(&mut ours, b"x").await.unwrap(), ScanResult::Infected("Eicar-Test-Signature".into()));
        server.await.unwrap();
    }

    #[test]
    fn answers_parse_and_errors_are_errors() {
        assert_eq!(parse_answer("stream: OK").unwrap(), ScanResult::Clean);
        assert_eq!(parse_answer("stream: Win.Test.EICAR_HDB-1 FOUND").unwrap(), ScanResult::Infected("Win.Test.EICAR_HDB-1".into()));
        assert!(parse_answer("INSTREAM size limit exceeded. ERROR").is_err());
        assert!(parse_answer("stream: FOUND").is_err());
    }

    #[test]
    fn clamd_addresses_parse() {
        assert_eq!("127.0.0.1:3310".parse::<ClamdAddr>().unwrap(), ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert_eq!("tcp:localhost:3310".parse::<ClamdAddr>().unwrap(), ClamdAddr::Tcp("localhost:3310".into()));
        assert_eq!("unix:/run/c.sock".parse::<ClamdAddr>().unwrap(), ClamdAddr::Unix("/run/c.sock".into()));
        assert_eq!("/run/c.sock".parse::<ClamdAddr>().unwrap(), ClamdAddr::Unix("/run/c.sock".into()));
        assert!("localhost".parse::<ClamdAddr>().is_err());
    }

    #[tokio::test]
    async fn an_unreachable_clamd_is_an_error_not_a_verdict() {
        let av = Antivirus { clamd: ClamdAddr::Unix("/nonexistent/clamd.sock".into()), timeout: Duration::from_secs(1), deny_status: 403 };
        let call = Request { body: Some(bytes::Bytes::from_static(b"data")), ..Default::default() };
        assert!(av.decide(call).await.unwrap_err().contains("connecting to clamd"));
    }
}
