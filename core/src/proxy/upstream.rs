//! Opening a connection to the server for a client: TCP (TLS per the sslmode, after PostgreSQL's
//! SSLRequest) or, for a socket directory as host, the Unix socket without TLS, as the pool does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_rustls::client::TlsStream;

use super::tls;
use crate::config::SslMode;
use crate::connect::ConnectError;
use crate::protocol;

/// Where the server is and how to reach it.
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) sslmode: SslMode,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// A connection to the server.
pub(crate) enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Target {
    /// The server could not be reached (`waited_secs`: how long the session tried, set by the caller).
    pub(crate) fn unreachable(&self, waited_secs: u64, error: &io::Error) -> ConnectError {
        ConnectError::Unreachable {
            host: self.host.clone(),
            port: self.port,
            waited_secs,
            last: error.to_string(),
        }
    }

    fn tls_error(&self, detail: String) -> ConnectError {
        ConnectError::Tls {
            host: self.host.clone(),
            port: self.port,
            sslmode: self.sslmode,
            detail,
        }
    }

    /// Connects, with TLS when the sslmode asks for it (an sslmode below `require` goes on in plaintext
    /// when the server offers no TLS, as libpq does).
    pub(crate) async fn open(&self) -> Result<Upstream, ConnectError> {
        let unreachable = |error: io::Error| self.unreachable(0, &error);
        if self.host.starts_with('/') {
            return self.open_unix().await.map_err(unreachable);
        }
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(unreachable)?;
        // Small writes (start-up, password) must not wait for the server's delayed ACK.
        tcp.set_nodelay(true).map_err(unreachable)?;
        let Some(config) = &self.tls else {
            return Ok(Upstream::Plain(tcp));
        };
        tcp.write_all(&protocol::ssl_request())
            .await
            .map_err(unreachable)?;
        match tcp.read_u8().await.map_err(unreachable)? {
            b'S' => {
                let name = tls::server_name(&self.host).map_err(|e| self.tls_error(e))?;
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map(|tls| Upstream::Tls(Box::new(tls)))
                    .map_err(|e| self.tls_error(e.to_string()))
            }
            b'N' if self.sslmode == SslMode::Prefer => Ok(Upstream::Plain(tcp)),
            b'N' => Err(self.tls_error("the server does not offer TLS".into())),
            other => Err(self.tls_error(format!(
                "the server answered the SSLRequest with {:?}, not S or N",
                other as char
            ))),
        }
    }
}

impl Target {
    /// The server's socket in the directory `host`.
    #[cfg(unix)]
    async fn open_unix(&self) -> io::Result<Upstream> {
        let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
        UnixStream::connect(path).await.map(Upstream::Unix)
    }

    /// Windows has no Unix socket directories to connect to.
    #[cfg(not(unix))]
    async fn open_unix(&self) -> io::Result<Upstream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a socket directory as host works on Unix only: give the server's host name",
        ))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(unix)]
            Upstream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(unix)]
            Upstream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(unix)]
            Upstream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(unix)]
            Upstream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
