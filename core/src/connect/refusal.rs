//! Where new connections go while no valid token exists: a listener on loopback that speaks just enough of
//! the PostgreSQL protocol to refuse every start-up with the credential's own error.
//!
//! The pool's connect options point here during an outage, so the expired token is never presented to the
//! server, and every way of opening a connection — [`crate::Database::acquire`], the sqlx pool, SeaORM's
//! connection — fails at once with one PostgreSQL error (SQLSTATE 08001) whose message is the credential's.
//! No password is configured for this target and none is asked for.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The SQLSTATE of the refusal: the client could not establish a connection.
pub(crate) const REFUSAL_SQLSTATE: &str = "08001";
/// Protocol codes of the requests a client may send before its start-up message.
const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
/// The largest start-up packet read (the server's own limit is 10000 bytes).
const MAX_STARTUP_LEN: usize = 10_000;

/// The running listener; stops when dropped.
pub(crate) struct RefusalEndpoint {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusalEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RefusalEndpoint {
    /// Listens on a free loopback port; each connection is refused with `message()` as it is then.
    pub(crate) async fn start(
        message: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let text = message();
                        tokio::spawn(async move {
                            let refused = tokio::time::timeout(
                                Duration::from_secs(10),
                                refuse(stream, &text),
                            );
                            if let Ok(Err(error)) = refused.await {
                                tracing::debug!(%error, "refusal endpoint: client went away");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::debug!(%error, "refusal endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Self { port, task })
    }

    /// The loopback port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// Reads the client's start-up (answering `N` to TLS and GSS requests) and answers with a FATAL error.
async fn refuse(mut stream: TcpStream, message: &str) -> std::io::Result<()> {
    loop {
        let len = usize::try_from(stream.read_i32().await?).unwrap_or(0);
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Ok(());
        }
        let code = stream.read_i32().await?;
        let mut rest = vec![0; len - 8];
        stream.read_exact(&mut rest).await?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            stream.write_all(b"N").await?;
            continue;
        }
        break;
    }
    stream.write_all(&error_response(message)).await?;
    stream.shutdown().await
}

/// A protocol `ErrorResponse` with severity FATAL, [`REFUSAL_SQLSTATE`] and `message`.
pub(crate) fn error_response(message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', REFUSAL_SQLSTATE),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut packet = vec![b'E'];
    packet.extend(
        i32::try_from(body.len() + 4)
            .unwrap_or(i32::MAX)
            .to_be_bytes(),
    );
    packet.extend(body);
    packet
}
