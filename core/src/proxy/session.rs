//! One client session: the start-up within its deadline (TLS, start-up message, the local password on a
//! remote listener), a session slot, the user check, the connection to the server with exactly the
//! parameters checked, the login ([`super::login`]), then bytes both ways ([`super::relay`]) until either
//! side closes or the proxy ends the session at an idle point (a drain, an expired token).

use std::io;
use std::time::Instant;

use pgwi_credentials::{Token, TokenSource as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::accounting::{Counted, SessionLog};
use super::client::ClientConn;
use super::local_auth::{FAILURE_DELAY, local_authentication};
use super::relay::{EndReason, RelayEnd, relay};
use super::{Client, Proxy, ScramError, upstream};
use crate::connect::ConnectError;
use crate::protocol::{self, FirstMessage, StartupError};

/// A client past its start-up, or a cancel request.
enum StartUp {
    Session {
        version: i32,
        params: protocol::Params,
        user: String,
    },
    Cancel(Vec<u8>),
}

impl Proxy {
    /// Serves one accepted connection to its end, and logs one line about it then (also when the future is
    /// dropped, e.g. by a drain deadline): client, database, upstream pid, duration and bytes each way.
    pub async fn serve<S>(&self, stream: S, mut client: Client)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut log = SessionLog::new(client.address.clone());
        let mut conn = ClientConn::Plain(Counted::new(
            stream,
            log.bytes_from_client.clone(),
            log.bytes_from_server.clone(),
        ));
        if let Err(error) = self.session(&mut conn, &mut client, &mut log).await {
            log.error = Some(error);
        }
        let _ = conn.shutdown().await;
    }

    /// One session: the client's start-up within the start-up deadline, a session slot, the user check, the
    /// server's login with a token usable now, then bytes both ways until either side closes.
    async fn session<S>(
        &self,
        client: &mut ClientConn<S>,
        who: &mut Client,
        log: &mut SessionLog,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let deadline = self.shared.options.startup_timeout;
        let start_up = tokio::time::timeout(deadline, self.start_up(client, who, log))
            .await
            .map_err(|_| {
                SessionError::Client(format!(
                    "no complete start-up within {}s (the start-up timeout)",
                    deadline.as_secs_f32()
                ))
            })??;
        let (version, params, user) = match start_up {
            StartUp::Cancel(key) => {
                log.kind = "cancel";
                return self.forward_cancel(&key, log).await;
            }
            StartUp::Session {
                version,
                params,
                user,
            } => (version, params, user),
        };
        // Past its start-up the client leaves its listener's budget and needs one of the session slots.
        drop(who.admission.take());
        log.started_up = true;
        let Ok(_slot) = self.shared.sessions.clone().try_acquire_owned() else {
            log.refusal = Some("too_many_clients");
            let message = format!(
                "sorry, too many clients already: pgwi proxy serves at most {} at once",
                self.shared.options.max_clients
            );
            return Err(refuse(client, "53300", message).await);
        };
        // For the user check; the one presented is taken again when the server asks.
        log.refusal = Some("no_token");
        let token = self.token_for_server(client, &mut None).await?;
        log.refusal = Some("wrong_user");
        self.check_user(client, &user, raw_user(&params).as_deref(), &token)
            .await?;
        let connecting = std::time::Instant::now();
        log.refusal = Some("unreachable");
        let mut upstream = self.open_upstream(client, version, &params).await?;
        drop(params);
        log.refusal = Some("server_refused");
        let logged_in = self
            .log_in(client, &mut upstream, &token, &user, log)
            .await?;
        drop(token);
        log.refusal = None;
        metrics::histogram!(crate::metrics::PROXY_UPSTREAM_CONNECT)
            .record(connecting.elapsed().as_secs_f64());
        log.start_relaying();
        // Held while the session relays: its cancel key is valid until then.
        let _cancel_key = logged_in.issued;
        let end = self.end_request(logged_in.token_expires_at);
        if let RelayEnd::Ended(reason) = relay(client, &mut upstream, end).await? {
            log.ended_by = Some(reason.label());
            metrics::counter!(crate::metrics::PROXY_SESSIONS_ENDED, "reason" => reason.label())
                .increment(1);
        }
        Ok(())
    }

    /// Completes when the session is to end at its next idle point: when the proxy drains
    /// ([`Proxy::end_sessions_when_idle`]), or, with `end_sessions_after_token_expiry`, when the token it
    /// logged in with expires.
    fn end_request(
        &self,
        token_expires_at: Option<time::OffsetDateTime>,
    ) -> impl std::future::Future<Output = EndReason> + use<> {
        let mut drain = self.shared.end_when_idle.subscribe();
        let expiry = token_expires_at
            .filter(|_| self.shared.options.end_sessions_after_token_expiry)
            .map(|expires_at| {
                let left = expires_at - time::OffsetDateTime::now_utc();
                tokio::time::Instant::now() + left.try_into().unwrap_or_default()
            });
        async move {
            let drained = async {
                if drain.wait_for(|ending| *ending).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = drained => EndReason::Drain,
                () = expired => EndReason::TokenExpired,
            }
        }
    }

    /// The client's start-up: TLS if it asks and the proxy offers it, the start-up message (each key once),
    /// TLS if the listener requires it, a user, and on a remote listener the local password. A remote client
    /// proves the local password before it learns anything (the role, the credential's errors) or makes the
    /// proxy ask for a token; a wrong user gets the same 28P01 as a wrong password, as from PostgreSQL. The
    /// user is checked against the token held now, which asks nothing upstream.
    async fn start_up<S>(
        &self,
        client: &mut ClientConn<S>,
        who: &Client,
        log: &mut SessionLog,
    ) -> Result<StartUp, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let first = match client.negotiate(who.tls.as_ref()).await {
            Ok(first) => first,
            // As PostgreSQL: the client is told which versions are spoken.
            Err(StartupError::Version(version)) => {
                let message = format!(
                    "unsupported frontend protocol {}.{}: pgwi proxy supports 3.x",
                    version >> 16,
                    version & 0xffff
                );
                return Err(refuse(client, "0A000", message).await);
            }
            Err(error @ StartupError::Layout(_)) => {
                return Err(refuse(client, "08P01", error.to_string()).await);
            }
            Err(error) => return Err(error.into()),
        };
        let (version, params) = match first {
            FirstMessage::Cancel(key) => return Ok(StartUp::Cancel(key)),
            FirstMessage::Startup { version, params } => (version, params),
        };
        if who.tls_required && !client.is_tls() {
            log.refusal = Some("tls_required");
            let message = "pgwi proxy serves clients on this listener over TLS only: connect with \
                           sslmode=verify-full and the proxy's CA as sslrootcert (or at least sslmode=require)";
            return Err(refuse(client, "28000", message.into()).await);
        }
        // Values are bytes in the client's encoding; names and databases are shown as UTF-8 (lossy).
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name.as_bytes())
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        let Some(user) = param("user") else {
            return Err(refuse(client, "08P01", "the start-up names no user".into()).await);
        };
        log.database = Some(param("database").unwrap_or_else(|| user.clone()));
        if let Some(secret) = &who.local_secret {
            let user_allowed = self.user().map(String::into_bytes) == raw_user(&params);
            let end_point = who
                .tls
                .as_ref()
                .filter(|_| client.is_tls())
                .and_then(|tls| Some((tls.end_point()?, tls.binding_required())));
            log.refusal = Some("local_password");
            local_authentication(
                client,
                secret,
                &user,
                user_allowed,
                end_point,
                FAILURE_DELAY,
            )
            .await?;
            log.refusal = None;
        }
        Ok(StartUp::Session {
            version,
            params,
            user,
        })
    }

    /// The start-up names the user the proxy logs in as (the configured one, or the token's with `auto`),
    /// else the client gets one error naming that user.
    async fn check_user<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        user: &str,
        raw: Option<&[u8]>,
        token: &Token,
    ) -> Result<(), SessionError> {
        let Some(expected) = self.user_for(token) else {
            let error = ConnectError::UserNotDerivable {
                source_kind: self.shared.keeper.credential().info().kind,
            };
            return Err(refuse(client, "28000", format!("pgwi proxy: {error}")).await);
        };
        // The bytes the server will get, not their lossy UTF-8 reading: `app\xff` must not pass for a
        // role whose name holds U+FFFD.
        if raw != Some(expected.as_bytes()) {
            let message = format!(
                "pgwi proxy logs in to PostgreSQL as {expected:?} only, but this client asked for user \
                 {user:?}: connect with user {expected} (psql -U {expected}, PGUSER={expected})"
            );
            return Err(refuse(client, "28000", message).await);
        }
        Ok(())
    }

    /// Connects to the server and sends the client's start-up: exactly the parameters that were checked
    /// (each key once), so the server logs in the user the proxy checked.
    pub(super) async fn open_upstream<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        version: i32,
        params: &protocol::Params,
    ) -> Result<upstream::Upstream, SessionError> {
        let connecting = Instant::now();
        let opened = tokio::time::timeout(self.shared.connect_timeout, async {
            let mut upstream = self.shared.target.open().await?;
            upstream
                .write_all(&protocol::startup_message(version, params))
                .await
                .map_err(|e| self.unreachable(e))?;
            Ok::<_, ConnectError>(upstream)
        })
        .await
        .unwrap_or_else(|_| Err(self.unreachable(io::Error::from(io::ErrorKind::TimedOut))));
        match opened {
            Ok(upstream) => Ok(upstream),
            Err(mut error) => {
                if let ConnectError::Unreachable { waited_secs, .. } = &mut error {
                    *waited_secs = connecting.elapsed().as_secs();
                }
                Err(refuse(client, "08001", format!("pgwi proxy: {error}")).await)
            }
        }
    }
}

/// The `user` of a start-up, as bytes.
fn raw_user(params: &protocol::Params) -> Option<Vec<u8>> {
    params
        .iter()
        .find(|(key, _)| key == b"user")
        .map(|(_, value)| value.clone())
}

/// Sends `code`/`message` to the client as a FATAL error; the session's error.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    code: &str,
    message: String,
) -> SessionError {
    let _ = client.write_all(&protocol::fatal(code, &message)).await;
    SessionError::Refused(format!("{message} (SQLSTATE {code})"))
}

/// Why a session ended before or instead of relaying (secret-free).
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// The client sent something that is not PostgreSQL, or too late.
    #[error("client: {0}")]
    Client(String),
    /// The client was sent an error (wrong user, no token, the server refused it).
    #[error("refused: {0}")]
    Refused(String),
    /// The server misbehaved during authentication.
    #[error("server: {0}")]
    Upstream(String),
    /// Reaching the server failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// SCRAM failed.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// A connection failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<StartupError> for SessionError {
    fn from(error: StartupError) -> Self {
        match error {
            StartupError::Garbage(what) => {
                SessionError::Client(format!("not a PostgreSQL start-up: {what}"))
            }
            StartupError::Version(_) | StartupError::Layout(_) => {
                SessionError::Client(error.to_string())
            }
            StartupError::Io(error) => SessionError::Io(error),
        }
    }
}
