//! TLS for the config stream's port, without tonic's own TLS: a rustls
//! acceptor in front of the gRPC server, and a rustls connector under the
//! client's channel. The server records the client's certificate (if it
//! presented one) in each request's extensions as a [`PeerInfo`]; deciding
//! who that certificate names is the control plane's business.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const READY_BACKLOG: usize = 64;

/// Who is on the other end of a TLS connection, as the request's extensions carry it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client's end-entity certificate (DER), when it presented one;
    /// the handshake verified it chains to the server's roots.
    pub certificate: Option<Vec<u8>>,
}

/// One accepted, handshaken connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections accepted on `listener` once their handshakes with
/// `config` succeed. Handshakes run side by side, so a slow or silent
/// client holds up no one; a failed one (a plaintext client, an unknown
/// client certificate) is logged and dropped. Accepting stops when the
/// returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let (ready, taken) = mpsc::channel(READY_BACKLOG);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = ready.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a config stream connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                        let peer = PeerInfo { remote: Some(remote), certificate };
                        let _ = ready.send(Ok(TlsConnection { stream, peer })).await;
                    }
                    Ok(Err(e)) => tracing::warn!(peer = %remote, error = %e, "refused a config stream connection at the TLS handshake"),
                    Err(_) => tracing::warn!(peer = %remote, "a config stream connection did not finish its TLS handshake in time"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(taken)
}

/// How a client reaches a TLS config stream: the configuration (roots,
/// client certificate) and the name the server's certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// A client that trusts the roots in `bundle_pem` and presents
    /// `identity` (its certificate chain and key) when given.
    pub fn new(bundle_pem: &str, identity: Option<Arc<rustls::sign::CertifiedKey>>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut bundle_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("the trust bundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("the trust bundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(key) => builder.with_client_cert_resolver(Arc::new(Fixed(key))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls { config: Arc::new(config) })
    }
}

/// Always the one certificate.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Opens TCP to `host:port` of `uri` and runs the TLS handshake, checking
/// the server's certificate names `host` (an IP address or a DNS name).
pub(crate) async fn connect(
    uri: tonic::codegen::http::Uri,
    tls: ClientTls,
) -> Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let host = uri.host().ok_or_else(|| invalid(format!("{uri} has no host")))?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(7071);
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("{host}: {e}")))?;
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls.config).connect(server_name, tcp).await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}
