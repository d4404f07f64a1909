//! Logging a session in to the server: the server's authentication answered here with a token usable at
//! that moment (cleartext, as Azure asks an Entra principal, or SCRAM-SHA-256 for a static password, whose
//! final message must prove the server knows it too), then the server's messages up to `ReadyForQuery`,
//! bounded, with the backend's key replaced by one the proxy issued.

use std::io;

use pgwi_credentials::Token;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use zeroize::Zeroizing;

use super::accounting::SessionLog;
use super::cancel::Issued;
use super::diagnosis::with_hint;
use super::session::{SessionError, refuse};
use super::{MAX_BUFFERED_BEFORE_READY, Proxy, scram};
use crate::connect::ConnectError;
use crate::protocol::{self, Message};

/// A session the server logged in.
pub(super) struct LoggedIn {
    /// The cancel key issued to the client (given back when the session ends).
    pub(super) issued: Option<Issued>,
    /// When the token presented to the server expires (`None`: a password without expiry, or the server
    /// asked for nothing).
    pub(super) token_expires_at: Option<time::OffsetDateTime>,
}

impl Proxy {
    /// The server's login within the connect timeout ([`Proxy::authenticate`]); anything the server did
    /// wrong reaches the client as one error (refusals were sent already).
    pub(super) async fn log_in<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        token: &Token,
        user: &str,
        log: &mut SessionLog,
    ) -> Result<LoggedIn, SessionError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let auth = tokio::time::timeout(
            self.shared.connect_timeout,
            self.authenticate(client, upstream, token, user, log),
        )
        .await
        .unwrap_or_else(|_| {
            Err(SessionError::Upstream(format!(
                "the server did not finish authentication within {}s",
                self.shared.connect_timeout.as_secs()
            )))
        });
        let error = match auth {
            Ok(logged_in) => return Ok(logged_in),
            Err(error) => error,
        };
        let message = match &error {
            SessionError::Upstream(message) => Some(message.clone()),
            SessionError::Scram(scram) => Some(format!("the server's {scram}")),
            SessionError::Io(io) => Some(format!(
                "the connection to the server failed during authentication: {io}"
            )),
            _ => None,
        };
        if let Some(message) = message {
            let _ = client
                .write_all(&protocol::fatal("08006", &format!("pgwi proxy: {message}")))
                .await;
        }
        Err(error)
    }

    pub(super) fn unreachable(&self, error: io::Error) -> ConnectError {
        self.shared
            .target
            .unreachable(self.shared.connect_timeout.as_secs(), &error)
    }

    /// A token usable now for the server's password request, kept in `presented` for the rest of the
    /// exchange; without one the client gets the credential's error.
    pub(super) async fn token_for_server<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        presented: &mut Option<Token>,
    ) -> Result<Token, SessionError> {
        match self.token_now().await {
            Ok(token) => {
                *presented = Some(token.clone());
                Ok(token)
            }
            Err(error) => {
                let message = format!("pgwi proxy: no valid token for new connections: {error}");
                Err(refuse(client, "08001", message).await)
            }
        }
    }

    /// Answers the server's authentication with a token usable at that moment (`token`, checked when the
    /// client's user was, serves the diagnosis if the server refuses before asking), then relays its
    /// messages up to `ReadyForQuery` in one write, with the backend's key replaced by one the proxy issued
    /// (the key to cancel this session's queries).
    async fn authenticate<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        token: &Token,
        user: &str,
        log: &mut SessionLog,
    ) -> Result<LoggedIn, SessionError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mut exchange = Exchange::default();
        let mut pending = Vec::new();
        loop {
            let message = protocol::read_message(upstream).await?;
            let data = message.body.get(4..).unwrap_or_default();
            match (message.tag, message.int32(0)) {
                (b'R', Some(protocol::AUTH_OK)) => {
                    exchange.check_server_proved_itself()?;
                    pending.extend(message.encode());
                    break;
                }
                (b'R', Some(protocol::AUTH_CLEARTEXT)) => {
                    let token = self
                        .token_for_server(client, &mut exchange.presented)
                        .await?;
                    let packet = password_message(token.secret().expose().as_bytes());
                    upstream.write_all(&packet).await?;
                }
                (b'R', Some(protocol::AUTH_SASL)) => {
                    self.token_for_server(client, &mut exchange.presented)
                        .await?;
                    upstream.write_all(&exchange.start_scram(data)?).await?;
                }
                (b'R', Some(protocol::AUTH_SASL_CONTINUE)) => {
                    upstream
                        .write_all(&exchange.continue_scram(data).await?)
                        .await?;
                }
                (b'R', Some(protocol::AUTH_SASL_FINAL)) => exchange.finish_scram(data)?,
                (b'R', subtype) => return Err(unspoken_method(subtype)),
                (b'E', _) => {
                    let token = exchange.presented.as_ref().unwrap_or(token);
                    let error = self.diagnose(&message, user, token, log.database.as_deref());
                    let _ = client.write_all(&error.packet).await;
                    return Err(SessionError::Refused(error.summary));
                }
                (b'N' | b'v', _) => buffer(&mut pending, &message)?,
                (tag, _) => {
                    return Err(SessionError::Upstream(format!(
                        "unexpected message {:?} during authentication",
                        tag as char
                    )));
                }
            }
        }
        let issued = self
            .relay_until_ready(client, upstream, pending, log)
            .await?;
        Ok(LoggedIn {
            issued,
            token_expires_at: exchange.presented.and_then(|token| token.expires_at()),
        })
    }

    /// After `AuthenticationOk`: the server's messages up to `ReadyForQuery`, sent to the client in one
    /// write, its `BackendKeyData` replaced by a key the proxy issued (noting the backend's pid for the log).
    async fn relay_until_ready<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        mut pending: Vec<u8>,
        log: &mut SessionLog,
    ) -> Result<Option<Issued>, SessionError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + Unpin,
    {
        let mut issued = None;
        loop {
            let message = protocol::read_message(upstream).await?;
            match message.tag {
                b'K' if message.body.len() >= 8 && issued.is_none() => {
                    log.upstream_pid = message.int32(0);
                    let key = self.shared.cancel_keys.issue(message.body).ok_or_else(|| {
                        SessionError::Upstream("no random numbers for a cancel key".into())
                    })?;
                    pending.extend(protocol::with_length(Some(b'K'), key.client_key().to_vec()));
                    issued = Some(key);
                }
                b'K' => {
                    return Err(SessionError::Upstream(
                        "a malformed or repeated BackendKeyData".into(),
                    ));
                }
                b'E' => {
                    // After AuthenticationOk: the database is missing, the role may not log in, no slots…
                    let error = with_hint(&message);
                    pending.extend(error.packet);
                    client.write_all(&pending).await?;
                    return Err(SessionError::Refused(error.summary));
                }
                b'Z' => {
                    pending.extend(message.encode());
                    client.write_all(&pending).await?;
                    return Ok(issued);
                }
                _ => buffer(&mut pending, &message)?,
            }
        }
    }
}

/// Where the answer to the server's authentication stands.
#[derive(Default)]
struct Exchange {
    /// The token taken when the server asked for it: it must be usable at that moment, after the local
    /// password exchange and the connection to the server took their time.
    presented: Option<Token>,
    /// The SCRAM exchange, for a static password.
    scram: Option<scram::Client>,
    /// Whether the server proved it knows the password too (its SASLFinal): required before `R 0`.
    verified: bool,
}

impl Exchange {
    /// `AuthenticationOk` counts only from a server that, in a SCRAM exchange, proved the password.
    fn check_server_proved_itself(&self) -> Result<(), SessionError> {
        if self.scram.is_some() && !self.verified {
            return Err(SessionError::Upstream(
                "the server ended the SCRAM-SHA-256 exchange without its final message, so it never \
                 proved that it knows the password; not trusting it"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The SASLInitialResponse to an `AuthenticationSASL` offering `mechanisms`.
    fn start_scram(&mut self, mechanisms: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mechanisms = protocol::sasl_mechanisms(mechanisms);
        if !mechanisms.iter().any(|m| m == scram::MECHANISM) {
            return Err(SessionError::Upstream(format!(
                "the server offers SASL mechanisms {mechanisms:?}, not SCRAM-SHA-256"
            )));
        }
        let (state, first) = scram::Client::start()?;
        self.scram = Some(state);
        Ok(protocol::sasl_initial_response(
            scram::MECHANISM,
            first.as_bytes(),
        ))
    }

    /// The client-final message answering the server-first one, proving the presented password.
    async fn continue_scram(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SessionError> {
        let state = self
            .scram
            .take()
            .ok_or_else(|| SessionError::Upstream("SASL continue before SASL start".into()))?;
        let server_first = String::from_utf8_lossy(server_first).into_owned();
        let password = Zeroizing::new(
            self.presented
                .as_ref()
                .map(|t| t.secret().expose().to_owned())
                .unwrap_or_default(),
        );
        let (state, last) = scram_client_final(state, server_first, password).await?;
        self.scram = Some(state);
        Ok(protocol::with_length(Some(b'p'), last.into_bytes()))
    }

    /// Checks the server's final message: its proof that it knows the password.
    fn finish_scram(&mut self, server_final: &[u8]) -> Result<(), SessionError> {
        let state = self
            .scram
            .as_ref()
            .ok_or_else(|| SessionError::Upstream("SASL final before SASL start".into()))?;
        state.verify(&String::from_utf8_lossy(server_final))?;
        self.verified = true;
        Ok(())
    }
}

/// The server asks for a method the proxy does not answer (MD5, Kerberos, …).
fn unspoken_method(subtype: Option<i32>) -> SessionError {
    if subtype == Some(protocol::AUTH_MD5) {
        return SessionError::Upstream(
            "the server asks for an MD5 password; pgwi proxy answers cleartext password requests (Entra \
             ID tokens, over TLS) and SCRAM-SHA-256: use scram-sha-256 for this role"
                .into(),
        );
    }
    SessionError::Upstream(format!(
        "the server asks for an authentication method pgwi proxy does not speak ({subtype:?})"
    ))
}

/// A `PasswordMessage` carrying `secret`, built in one buffer of its final size that is wiped when dropped
/// (a growing `Vec` would leave copies of the token in freed memory).
fn password_message(secret: &[u8]) -> Zeroizing<Vec<u8>> {
    let len = i32::try_from(secret.len() + 5).unwrap_or(i32::MAX);
    let mut packet = Zeroizing::new(Vec::with_capacity(secret.len() + 6));
    packet.push(b'p');
    packet.extend(len.to_be_bytes());
    packet.extend(secret);
    packet.push(0);
    packet
}

/// Appends a server message to what the client gets at `ReadyForQuery`, within
/// [`MAX_BUFFERED_BEFORE_READY`].
fn buffer(pending: &mut Vec<u8>, message: &Message) -> Result<(), SessionError> {
    if pending.len() + message.body.len() + 5 > MAX_BUFFERED_BEFORE_READY {
        return Err(SessionError::Upstream(format!(
            "the server sent more than {MAX_BUFFERED_BEFORE_READY} bytes before ReadyForQuery"
        )));
    }
    pending.extend(message.encode());
    Ok(())
}

/// The SCRAM client-final message for the server's first, on a blocking thread: PBKDF2 with the server's
/// iteration count (up to [`scram::MAX_ITERATIONS`]) would otherwise hold a runtime thread for milliseconds.
async fn scram_client_final(
    mut state: scram::Client,
    server_first: String,
    password: Zeroizing<String>,
) -> Result<(scram::Client, String), SessionError> {
    tokio::task::spawn_blocking(move || {
        let last = state.finish(&server_first, &password)?;
        Ok((state, last))
    })
    .await
    .map_err(|e| SessionError::Upstream(format!("the SCRAM computation failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn pbkdf2_for_the_server_runs_off_the_runtime_thread() {
        // Proves: the SCRAM client's PBKDF2 (here the most iterations a server may ask for) leaves the
        // runtime's one thread free: a task spawned beside it makes progress while it runs. Were it
        // computed inline, the await would complete in one poll and the other task could not run at all.
        let (state, first) = scram::Client::start().expect("start");
        let nonce = first.rsplit("r=").next().expect("nonce").to_owned();
        let server_first = format!("r={nonce}server,s=c2FsdA==,i={}", scram::MAX_ITERATIONS);
        let ticks = Arc::new(AtomicUsize::new(0));
        let counting = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counting.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        ticks.store(0, Ordering::Relaxed);
        let password = Zeroizing::new("pencil".to_owned());
        let (_, last) = scram_client_final(state, server_first, password)
            .await
            .expect("client final");
        assert!(last.contains(",p="), "{last}");
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime thread was blocked"
        );
        ticker.abort();
    }
}
