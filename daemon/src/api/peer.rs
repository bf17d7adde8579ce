//! Who is at the other end of an API connection, as its listener learned it when the
//! connection was made: a unix peer's credentials, a TLS peer's certificate names, a
//! plaintext TCP peer's address. tonic hands the `Peer` to every request of the connection
//! (request extensions), where `access` reads it.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// SO_PEERCRED of the connecting process, and its executable.
    Unix { uid: u32, gid: u32, pid: u32, binary: String },
    /// A verified client certificate: its subject and every name it carries (subject CN, DNS,
    /// URI and email subject alternative names).
    Tls { addr: SocketAddr, subject: String, names: Vec<String> },
    /// Plaintext TCP: only the address.
    Tcp { addr: SocketAddr },
    /// Credentials could not be read.
    Unknown,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix { uid, gid, pid, binary } => write!(f, "uid {uid} gid {gid} (pid {pid}, {binary})"),
            Peer::Tls { addr, subject, .. } => write!(f, "certificate \"{subject}\" from {addr}"),
            Peer::Tcp { addr } => write!(f, "plaintext TCP peer {addr}"),
            Peer::Unknown => f.write_str("a peer without credentials"),
        }
    }
}

impl Peer {
    /// A unix socket peer; `Unknown` when the kernel does not tell.
    pub fn of_unix(stream: &UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(cred) => {
                let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
                let binary = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Peer::Unix { uid: cred.uid(), gid: cred.gid(), pid, binary }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a unix peer's credentials");
                Peer::Unknown
            }
        }
    }
}

/// A connection with the peer its listener learned.
pub struct Conn<IO> {
    io: IO,
    peer: Peer,
}

impl<IO> Conn<IO> {
    pub fn new(io: IO, peer: Peer) -> Self {
        Self { io, peer }
    }
}

impl Conn<UnixStream> {
    pub fn unix(io: UnixStream) -> Self {
        let peer = Peer::of_unix(&io);
        Self { io, peer }
    }
}

pub type TlsConn = Conn<TlsStream<TcpStream>>;

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unix_peer_is_known_by_its_credentials() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let Peer::Unix { uid, gid, pid, binary } = Conn::unix(a).connect_info() else {
            panic!("no credentials")
        };
        // SAFETY: getuid, getgid and getpid have no preconditions.
        let me = unsafe { (libc::getuid(), libc::getgid(), libc::getpid() as u32) };
        assert_eq!((uid, gid, pid), me);
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(binary, exe.display().to_string());
    }
}
