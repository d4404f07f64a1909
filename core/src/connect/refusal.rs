//! Where new connections go while no valid token exists: a listener on loopback that speaks just enough of
//! the PostgreSQL protocol to refuse every start-up with the credential's own error.
//!
//! The pool's connect options point here during an outage, so the expired token is never presented to the
//! server, and every way of opening a connection — [`crate::RotatingPool::acquire`], the sqlx pool, SeaORM's
//! connection — fails at once with one PostgreSQL error (SQLSTATE 08001) whose message is the credential's.
//! No password is configured for this target and none is asked for.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::protocol;

/// The SQLSTATE of the refusal: the client could not establish a connection.
pub(crate) const REFUSAL_SQLSTATE: &str = "08001";
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
                        // A new physical connection of the pool, refused for want of a valid token.
                        metrics::counter!(crate::metrics::POOL_CONNECTIONS_OPENED, "outcome" => "no_token")
                            .increment(1);
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

/// Reads the client's start-up (answering `N` to TLS and GSS requests) and answers with a FATAL error. A
/// start-up of another protocol version gets the error too (the client is told why it cannot connect); a
/// cancel request gets no answer, as from PostgreSQL; bytes that are not a start-up at all are closed on.
async fn refuse(mut stream: TcpStream, message: &str) -> std::io::Result<()> {
    match protocol::read_startup(&mut stream).await {
        Ok(protocol::FirstMessage::Startup { .. })
        | Err(protocol::StartupError::Version(_) | protocol::StartupError::Layout(_)) => {}
        Ok(protocol::FirstMessage::Cancel(_)) => return stream.shutdown().await,
        Err(protocol::StartupError::Io(error)) => return Err(error),
        Err(protocol::StartupError::Garbage(_)) => return Ok(()),
    }
    stream
        .write_all(&protocol::fatal(REFUSAL_SQLSTATE, message))
        .await?;
    stream.shutdown().await
}
