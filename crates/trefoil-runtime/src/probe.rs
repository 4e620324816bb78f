//! Readiness probes: an HTTP GET that must answer 2xx, a TCP connect, or a
//! file the process writes once it serves.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::plan::Probe;

/// How long one probe may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the probe passes right now.
pub async fn check(probe: &Probe) -> bool {
    tokio::time::timeout(TIMEOUT, attempt(probe)).await.unwrap_or(false)
}

async fn attempt(probe: &Probe) -> bool {
    match probe {
        Probe::Tcp(addr) => TcpStream::connect(addr).await.is_ok(),
        Probe::File(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
        Probe::Http { addr, path } => {
            let Ok(mut stream) = TcpStream::connect(addr).await else { return false };
            // A bare HTTP/1.1 request: the probe needs only the status line,
            // and any HTTP server understands this.
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: trefoil-runtime-probe\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = Vec::with_capacity(64);
            let mut buf = [0u8; 64];
            while !head.contains(&b'\n') && head.len() < 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            is_2xx(&head)
        }
    }
}

/// `HTTP/1.x 2xx ...` as the first line.
fn is_2xx(head: &[u8]) -> bool {
    let line = String::from_utf8_lossy(head);
    let mut parts = line.split_whitespace();
    matches!((parts.next(), parts.next()), (Some(v), Some(code)) if v.starts_with("HTTP/") && code.len() == 3 && code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert!(is_2xx(b"HTTP/1.1 200 OK\r\n"));
        assert!(is_2xx(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!is_2xx(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!is_2xx(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!is_2xx(b""));
    }

    async fn serve_once(answer: &'static str) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_and_tcp_probes() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert!(check(&Probe::Http { addr: ok, path: "/healthz".into() }).await);
        let bad = serve_once("HTTP/1.1 503 Nope\r\ncontent-length: 0\r\n\r\n").await;
        assert!(!check(&Probe::Http { addr: bad, path: "/healthz".into() }).await);
        let open = serve_once("").await;
        assert!(check(&Probe::Tcp(open)).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!check(&Probe::Tcp(closed)).await);
    }
}
