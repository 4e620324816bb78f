//! Relaying a TCP connection's bytes without copying them through user
//! space: `splice(2)` moves them from one socket into a pipe and from the
//! pipe into the other socket, inside the kernel, as haproxy does for
//! `mode tcp`. The datapath bench showed the buffered copy (two 8 KiB
//! copies per chunk through this process) as the gap between a redirected
//! connection and haproxy in bulk throughput.
//!
//! Each direction owns a pipe (two descriptors), so a relayed connection
//! holds four more descriptors than a buffered one: they are taken from the
//! upstream budget ([`descriptors`]), and when it or the kernel refuses,
//! the caller falls back to the buffered copy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::descriptors::{self, Held};

/// Bytes moved per `splice` call: a pipe's default capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// One direction's pipe: bytes sit here between the two sockets.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its two descriptors in the process's budget.
    _held: [Held; 2],
}

impl Pipe {
    #[allow(unsafe_code)] // pipe2 has no safe form in std
    fn new() -> io::Result<Pipe> {
        let (Some(a), Some(b)) = (descriptors::try_hold_upstream(), descriptors::try_hold_upstream()) else {
            return Err(io::Error::other("no descriptors to spare for a pipe"));
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write, _held: [a, b] })
    }
}

#[allow(unsafe_code)] // splice has no safe form in std
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice reads and writes descriptors only; null offsets mean
    // "the descriptor's own position", which sockets and pipes require.
    let n =
        unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Relays both directions until both have ended; `(a to b, b to a)` bytes,
/// as `tokio::io::copy_bidirectional` counts them. `None` when no pipes
/// could be had: the caller copies with buffers instead.
pub(crate) async fn relay(a: &TcpStream, b: &TcpStream) -> Option<io::Result<(u64, u64)>> {
    let (Ok(ab), Ok(ba)) = (Pipe::new(), Pipe::new()) else { return None };
    Some(tokio::try_join!(one_way(a, b, &ab), one_way(b, a, &ba)))
}

/// Moves bytes from `from` to `to` until `from` ends, then ends `to`'s
/// sending side (the half-close the other end sees as end of stream).
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so "would block" can only mean the socket has nothing.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            shutdown_write(to)?;
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

#[allow(unsafe_code)] // shutdown on a borrowed socket has no safe form in tokio
fn shutdown_write(socket: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown only changes the state of the socket this stream owns.
    if unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) } != 0 {
        let e = io::Error::last_os_error();
        // The peer is gone already: nothing left to end.
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Two connected sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A client that sends a request, ends its side, and reads the answer
    /// to the end: every byte arrives in order, the half-close reaches the
    /// server, whose answer still comes back, and the counts are exact.
    #[tokio::test]
    async fn relays_bytes_exactly_both_ways_through_a_half_close() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let request: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let relay = tokio::spawn(async move { super::relay(&proxy_down, &proxy_up).await.expect("pipes").unwrap() });
        let sent = request.clone();
        let client_side = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert!(received == request, "the request arrived changed ({} bytes of {})", received.len(), request.len());
        server.write_all(b"answer after the client's end").await.unwrap();
        drop(server);
        assert_eq!(client_side.await.unwrap(), b"answer after the client's end");
        assert_eq!(relay.await.unwrap(), (3_000_000, 29));
    }
}
