//! A PostgreSQL endpoint for programs that cannot use this library (psql, Python, Go, `pg_dump`): each
//! client session gets its own connection to the configured server, authenticated with a token that is
//! valid at that moment, and then the bytes flow both ways untouched.
//!
//! Per session: the client's TLS and GSS requests are answered `N` (the hop is loopback or a Unix socket);
//! a remote client (`--allow-remote`) proves the proxy's local password with SCRAM right after its start-up,
//! before it learns anything or a token is asked for (a wrong user fails like a wrong password); the start-up
//! must name the configured user (or the one `auto` derives from the token), else it gets one error naming
//! that user; the server's authentication request is answered here — cleartext with the token (what Azure
//! asks an Entra principal for), or SCRAM-SHA-256 with it (a static password; the server must prove the
//! password back before `AuthenticationOk` counts) — and from `AuthenticationOk` on, every message is the
//! server's own, including `BackendKeyData`, so a client's `CancelRequest` is forwarded as is, over a new
//! connection with the same TLS. An authentication failure reaches the client as the server's error with
//! pgwi's diagnosis in its message; a later one (no such database, no LOGIN) with pgwi's fix as its hint.
//!
//! "No expired token is presented" holds as for the pool: a token is taken from the token source's cache
//! for each session and presented only while `now < exp - skew` (the skew allowance capped at a quarter of
//! the token's life, measured from its issue, [`crate::connect`]'s rule); otherwise the client gets the
//! credential's error. The cache serves its last good token up to its very expiry while the source fails,
//! so this check, not the cache, keeps a token inside the allowance from the server. A keeper task asks the
//! cache ahead of expiry, so sessions rarely wait for a refresh. The listeners, signals and health endpoint
//! are the caller's (the `pgwi proxy` command); this module serves one accepted connection.

mod cancel;
mod client;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod scram;
mod tls;
mod upstream;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pgwi_credentials::{CachedTokenSource, CredentialError, Token, TokenSource as _};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

pub use client::{ClientTls, ClientTlsError};
pub use scram::{LocalSecret, ScramError};

use cancel::{CancelKeys, Issued};
use client::ClientConn;

use crate::config::Config;
use crate::connect::{self, AuthenticationFailure, ConnectError, fix_for_sqlstate};
use crate::protocol::{self, FirstMessage, Message, StartupError};

/// How long a client has, from its connection, to finish its start-up: TLS, the start-up message and, for a
/// remote client, the local password. PostgreSQL's `authentication_timeout` and PgBouncer's
/// `client_login_timeout` bound the same phase; a few seconds suffice for every client library.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default cap on sessions past their start-up: each holds a backend of the server.
pub const DEFAULT_MAX_CLIENTS: usize = 1000;
/// The most bytes of server messages buffered between `AuthenticationOk` and `ReadyForQuery` (a server
/// sends a few hundred).
const MAX_BUFFERED_BEFORE_READY: usize = 1 << 20;
/// How long a forwarded cancel request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// The keeper's longest sleep: the token's state is re-checked at least this often.
const KEEPER_TICK: Duration = Duration::from_secs(5);

/// The proxy: configuration, token source and TLS settings shared by every session. Cheap to clone.
///
/// Embedded in a Rust program (the `pgwi proxy` command adds Unix sockets, `/healthz` and the drain):
///
/// ```no_run
/// # async fn run(
/// #     config: pgwi_core::Config,
/// #     credential: std::sync::Arc<pgwi_credentials::CachedTokenSource>,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use pgwi_core::proxy::{Client, Proxy};
///
/// let proxy = Proxy::start(&config, credential).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:6432").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let proxy = proxy.clone();
///     let client = Client::local(peer.to_string());
///     tokio::spawn(async move { proxy.serve(stream, client).await });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    target: upstream::Target,
    configured_user: Option<String>,
    credential: Arc<CachedTokenSource>,
    skew: Duration,
    connect_timeout: Duration,
    options: ProxyOptions,
    /// One permit per session past its start-up ([`ProxyOptions::max_clients`]).
    sessions: Arc<Semaphore>,
    /// The cancel keys handed to clients, mapped to the upstream backends'.
    cancel_keys: Arc<CancelKeys>,
    /// The last token the cache gave (to a session or the keeper) and when it was first seen, for
    /// [`Proxy::health`] and for the deadline of a token without an `iat` claim.
    current: Arc<Mutex<Option<Seen>>>,
    keeper: tokio::task::AbortHandle,
}

/// A token and when the proxy first got it.
#[derive(Clone)]
struct Seen {
    token: Token,
    received: OffsetDateTime,
}

/// Notes `token` as the last one seen (keeping when it was first seen, if it is the same); that time.
fn record(current: &Mutex<Option<Seen>>, token: &Token) -> OffsetDateTime {
    let mut current = connect::lock(current);
    match current.as_ref() {
        Some(seen) if seen.token.secret() == token.secret() => seen.received,
        _ => {
            let received = OffsetDateTime::now_utc();
            *current = Some(Seen {
                token: token.clone(),
                received,
            });
            received
        }
    }
}

impl Seen {
    /// Whether the token may be presented now: before its expiry less the skew allowance.
    fn usable(&self, skew: Duration) -> bool {
        connect::usable_at(&self.token, self.received, skew, OffsetDateTime::now_utc())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.inner.target.host)
            .field("port", &self.inner.target.port)
            .field("credential", &self.inner.credential.info().to_string())
            .finish_non_exhaustive()
    }
}

/// What the proxy allows its clients; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long a client has for its whole start-up ([`DEFAULT_STARTUP_TIMEOUT`]).
    pub startup_timeout: Duration,
    /// How many sessions may be past their start-up at once; one more gets PostgreSQL's 53300
    /// ([`DEFAULT_MAX_CLIENTS`]). Clients still in their start-up are bounded by the caller, per listener
    /// ([`Client::admission`]).
    pub max_clients: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// Who is connecting, and what they must prove before the server is contacted.
#[derive(Debug)]
pub struct Client {
    /// The peer, for logs: `127.0.0.1:50123`, or the socket path.
    pub address: String,
    /// Remote clients must prove this local password with SCRAM-SHA-256 (`None`: a local client).
    pub local_secret: Option<Arc<LocalSecret>>,
    /// TLS offered to the client (its SSLRequest answered `S`); `None`: answered `N`.
    pub tls: Option<ClientTls>,
    /// Whether a start-up outside TLS is refused (remote clients, when a certificate is configured).
    pub tls_required: bool,
    /// The listener's start-up slot this client holds, released as soon as its start-up is done, so that
    /// clients that never finish theirs cannot hold more than their listener's budget.
    pub admission: Option<OwnedSemaphorePermit>,
}

impl Client {
    /// A local client (loopback or a Unix socket): no local password, no TLS.
    pub fn local(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            local_secret: None,
            tls: None,
            tls_required: false,
            admission: None,
        }
    }
}

/// A client past its start-up, or a cancel request.
enum StartUp {
    Session {
        version: i32,
        params: protocol::Params,
        user: String,
    },
    Cancel(Vec<u8>),
}

/// Whether the proxy can serve new sessions now.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// A token is held that is before its deadline (`None`: a password without expiry).
    Ready {
        /// When that token expires.
        expires_at: Option<OffsetDateTime>,
    },
    /// No usable token: why, secret-free.
    NoToken(String),
}

impl Proxy {
    /// Checks the configuration, builds the TLS settings, fetches the first token (a bad credential fails
    /// here, not at the first client) and starts the keeper that asks for the next one ahead of expiry.
    /// The server is not contacted: it may come up after the proxy.
    pub async fn start(
        config: &Config,
        credential: Arc<CachedTokenSource>,
    ) -> Result<Self, ConnectError> {
        Self::start_with(config, credential, ProxyOptions::default()).await
    }

    /// [`Proxy::start`] with these limits.
    pub async fn start_with(
        config: &Config,
        credential: Arc<CachedTokenSource>,
        options: ProxyOptions,
    ) -> Result<Self, ConnectError> {
        config.validate()?;
        let skew = Duration::from_secs(config.credential.expiry_skew_secs);
        connect::check_cache_timing(&credential, skew)?;
        let db = &config.database;
        let (host, port) = connect::resolve_host(db)?;
        let tls = if host.starts_with('/') {
            None
        } else {
            tls::client_config(db)?
        };
        let token = credential.token().await?;
        if !connect::usable_now(&token, skew) {
            return Err(connect::expired_on_arrival(credential.info().kind, &token).into());
        }
        let user = connect::resolve_user(db, &token, &credential)?;
        let configured_user = (db.user.as_deref().map(str::trim) != Some("auto")).then_some(user);
        let current = Arc::new(Mutex::new(Some(Seen {
            token,
            received: OffsetDateTime::now_utc(),
        })));
        let keeper = tokio::spawn(keep_fresh(credential.clone(), current.clone())).abort_handle();
        let proxy = Self {
            inner: Arc::new(Inner {
                target: upstream::Target {
                    host,
                    port,
                    sslmode: db.sslmode,
                    tls,
                },
                configured_user,
                credential,
                skew,
                connect_timeout: Duration::from_secs(db.connect_timeout_secs),
                sessions: Arc::new(Semaphore::new(
                    options.max_clients.clamp(1, Semaphore::MAX_PERMITS),
                )),
                options,
                cancel_keys: Arc::default(),
                current,
                keeper,
            }),
        };
        Ok(proxy)
    }

    /// The user sessions log in as now (from the token's claims with `user = "auto"`).
    pub fn user(&self) -> Option<String> {
        let current = connect::lock(&self.inner.current).clone();
        current.and_then(|seen| self.user_for(&seen.token))
    }

    /// The server, as `host:port` (or the socket directory and port).
    pub fn upstream(&self) -> String {
        format!("{}:{}", self.inner.target.host, self.inner.target.port)
    }

    /// Whether a token usable for new sessions is held (for a health endpoint); asks nothing upstream.
    pub fn health(&self) -> Health {
        let current = connect::lock(&self.inner.current).clone();
        match current {
            Some(seen) if seen.usable(self.inner.skew) => Health::Ready {
                expires_at: seen.token.expires_at(),
            },
            _ => Health::NoToken(match self.inner.credential.last_failure() {
                Some(error) => error.to_string(),
                None => "the token is within the skew allowance of its expiry and no new one has \
                         arrived yet"
                    .into(),
            }),
        }
    }

    fn user_for(&self, token: &Token) -> Option<String> {
        match &self.inner.configured_user {
            Some(user) => Some(user.clone()),
            None => token.claims().and_then(|c| c.database_user()),
        }
    }

    /// A token that may be presented now: before its expiry less the skew allowance (the cache serves its
    /// last good token while the source fails, up to its expiry), else the credential's error.
    async fn token_now(&self) -> Result<Token, CredentialError> {
        let credential = &self.inner.credential;
        let token = credential.token().await?;
        let received = record(&self.inner.current, &token);
        if !connect::usable_at(&token, received, self.inner.skew, OffsetDateTime::now_utc()) {
            return Err(credential
                .last_failure()
                .unwrap_or_else(|| connect::expired_on_arrival(credential.info().kind, &token)));
        }
        Ok(token)
    }

    /// Serves one accepted connection to its end, and logs one line about it then (also when the future is
    /// dropped, e.g. by a drain deadline): client, database, upstream pid, duration and bytes each way.
    pub async fn serve<S>(&self, stream: S, mut client: Client)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut log = SessionLog::new(client.address.clone());
        let mut conn = ClientConn::Plain(Counted {
            inner: stream,
            read: log.bytes_from_client.clone(),
            written: log.bytes_from_server.clone(),
        });
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
        let deadline = self.inner.options.startup_timeout;
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
        let Ok(_slot) = self.inner.sessions.clone().try_acquire_owned() else {
            let message = format!(
                "sorry, too many clients already: pgwi proxy serves at most {} at once \
                 (proxy.max_clients)",
                self.inner.options.max_clients
            );
            return Err(refuse(client, "53300", message).await);
        };
        // For the user check; the one presented is taken again when the server asks.
        let token = self.token_for_server(client, &mut None).await?;
        self.check_user(client, &user, &token).await?;
        let mut upstream = self.open_upstream(client, version, &params).await?;
        drop(params);
        let issued = self
            .log_in(client, &mut upstream, &token, &user, log)
            .await?;
        drop(token);
        log.relaying = true;
        tokio::io::copy_bidirectional(client, &mut upstream).await?;
        drop(issued);
        Ok(())
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
            let user_allowed = self.user().as_deref() == Some(user.as_str());
            let end_point = who
                .tls
                .as_ref()
                .filter(|_| client.is_tls())
                .map(ClientTls::end_point);
            local_authentication(client, secret, &user, user_allowed, end_point).await?;
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
        token: &Token,
    ) -> Result<(), SessionError> {
        let Some(expected) = self.user_for(token) else {
            let error = ConnectError::UserNotDerivable {
                source_kind: self.inner.credential.info().kind,
            };
            return Err(refuse(client, "28000", format!("pgwi proxy: {error}")).await);
        };
        if user != expected {
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
    async fn open_upstream<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        version: i32,
        params: &protocol::Params,
    ) -> Result<upstream::Upstream, SessionError> {
        let connecting = Instant::now();
        let opened = tokio::time::timeout(self.inner.connect_timeout, async {
            let mut upstream = self.inner.target.open().await?;
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

    /// The server's login within the connect timeout ([`Proxy::authenticate`]); anything the server did
    /// wrong reaches the client as one error (refusals were sent already). The session's cancel key.
    async fn log_in<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        token: &Token,
        user: &str,
        log: &mut SessionLog,
    ) -> Result<Option<Issued>, SessionError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let auth = tokio::time::timeout(
            self.inner.connect_timeout,
            self.authenticate(client, upstream, token, user, log),
        )
        .await
        .unwrap_or_else(|_| {
            Err(SessionError::Upstream(format!(
                "the server did not finish authentication within {}s",
                self.inner.connect_timeout.as_secs()
            )))
        });
        let error = match auth {
            Ok(issued) => return Ok(issued),
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

    fn unreachable(&self, error: io::Error) -> ConnectError {
        self.inner
            .target
            .unreachable(self.inner.connect_timeout.as_secs(), &error)
    }

    /// A token usable now for the server's password request, kept in `presented` for the rest of the
    /// exchange; without one the client gets the credential's error.
    async fn token_for_server<C: AsyncWrite + Unpin>(
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
    ) -> Result<Option<Issued>, SessionError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        // The token is taken again when the server asks for it: the local password exchange and the
        // connection to the server took time, and what is presented must be usable at that moment.
        let mut presented: Option<Token> = None;
        let mut scram: Option<scram::Client> = None;
        // Whether the server proved it knows the password too (its SASLFinal): required before `R 0`.
        let mut verified = false;
        let mut pending = Vec::new();
        loop {
            let message = protocol::read_message(upstream).await?;
            match (message.tag, message.int32(0)) {
                (b'R', Some(0)) => {
                    if scram.is_some() && !verified {
                        return Err(SessionError::Upstream(
                            "the server ended the SCRAM-SHA-256 exchange without its final message, \
                             so it never proved that it knows the password; not trusting it"
                                .into(),
                        ));
                    }
                    pending.extend(message.encode());
                    break;
                }
                (b'R', Some(3)) => {
                    let token = self.token_for_server(client, &mut presented).await?;
                    let mut body = Zeroizing::new(token.secret().expose().as_bytes().to_vec());
                    body.push(0);
                    let packet = Zeroizing::new(protocol::with_length(Some(b'p'), body.to_vec()));
                    upstream.write_all(&packet).await?;
                }
                (b'R', Some(10)) => {
                    let mechanisms: Vec<String> = message.body[4..]
                        .split(|&b| b == 0)
                        .filter(|m| !m.is_empty())
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect();
                    if !mechanisms.iter().any(|m| m == scram::MECHANISM) {
                        return Err(SessionError::Upstream(format!(
                            "the server offers SASL mechanisms {mechanisms:?}, not SCRAM-SHA-256"
                        )));
                    }
                    self.token_for_server(client, &mut presented).await?;
                    let (state, first) = scram::Client::start()?;
                    scram = Some(state);
                    let mut body = format!("{}\0", scram::MECHANISM).into_bytes();
                    body.extend(i32::try_from(first.len()).unwrap_or(0).to_be_bytes());
                    body.extend(first.as_bytes());
                    upstream
                        .write_all(&protocol::with_length(Some(b'p'), body))
                        .await?;
                }
                (b'R', Some(11)) => {
                    let state = scram.take().ok_or_else(|| {
                        SessionError::Upstream("SASL continue before SASL start".into())
                    })?;
                    let server_first = String::from_utf8_lossy(&message.body[4..]).into_owned();
                    let password = Zeroizing::new(
                        presented
                            .as_ref()
                            .map(|t| t.secret().expose().to_owned())
                            .unwrap_or_default(),
                    );
                    let (state, last) = scram_client_final(state, server_first, password).await?;
                    scram = Some(state);
                    upstream
                        .write_all(&protocol::with_length(Some(b'p'), last.into_bytes()))
                        .await?;
                }
                (b'R', Some(12)) => {
                    let state = scram.as_ref().ok_or_else(|| {
                        SessionError::Upstream("SASL final before SASL start".into())
                    })?;
                    state.verify(&String::from_utf8_lossy(&message.body[4..]))?;
                    verified = true;
                }
                (b'R', Some(5)) => {
                    return Err(SessionError::Upstream(
                        "the server asks for an MD5 password; pgwi proxy answers cleartext password \
                         requests (Entra ID tokens, over TLS) and SCRAM-SHA-256: use scram-sha-256 for \
                         this role"
                            .into(),
                    ));
                }
                (b'R', subtype) => {
                    return Err(SessionError::Upstream(format!(
                        "the server asks for an authentication method pgwi proxy does not speak ({subtype:?})"
                    )));
                }
                (b'E', _) => {
                    let token = presented.as_ref().unwrap_or(token);
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
        self.relay_until_ready(client, upstream, pending, log).await
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
                    let key = self.inner.cancel_keys.issue(message.body).ok_or_else(|| {
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

    /// The server's error during authentication, as the client will see it: for a refused login the
    /// message is pgwi's diagnosis (the same causes and fixes as `pgwi doctor`), else the server's words
    /// with a hint when the SQLSTATE says what to do.
    fn diagnose(
        &self,
        message: &Message,
        user: &str,
        token: &Token,
        database: Option<&str>,
    ) -> Diagnosed {
        let mut fields = protocol::parse_fields(&message.body);
        let code = field(&fields, b'C').unwrap_or_default();
        let server_message = field(&fields, b'M').unwrap_or_default();
        if code == "28P01" || code == "28000" {
            let diagnosis = AuthenticationFailure {
                host: self.inner.target.host.clone(),
                port: self.inner.target.port,
                user: user.to_owned(),
                database: database.unwrap_or_default().to_owned(),
                code: code.clone(),
                message: server_message,
                audience: connect::audience(token),
            }
            .to_string();
            set_field(&mut fields, b'M', diagnosis);
        } else if let Some(fix) = fix_for_sqlstate(&code)
            && field(&fields, b'H').is_none()
        {
            set_field(&mut fields, b'H', format!("pgwi: {fix}"));
        }
        diagnosed(&fields, &code)
    }

    /// Forwards a client's cancel request to the server over a new connection, if its key is one the proxy
    /// issued to an open session and no cancel for that session is on its way; then waits for the server to
    /// close it (it answers nothing). Any other key is dropped without contacting the server.
    async fn forward_cancel(&self, key: &[u8], log: &mut SessionLog) -> Result<(), SessionError> {
        let Some(forwarding) = self.inner.cancel_keys.forward(key) else {
            // Logged at debug: a flood of random keys must not flood the log either.
            log.quiet = true;
            return Err(SessionError::Client(
                "a cancel request for no open session (or one already on its way): dropped".into(),
            ));
        };
        let upstream_key = forwarding.upstream_key();
        log.upstream_pid = upstream_key
            .get(..4)
            .and_then(|pid| Some(i32::from_be_bytes(pid.try_into().ok()?)));
        let forwarded = tokio::time::timeout(CANCEL_TIMEOUT, async {
            let mut upstream = self.inner.target.open().await?;
            upstream
                .write_all(&protocol::cancel_request(upstream_key))
                .await?;
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut upstream, &mut rest).await;
            Ok::<_, SessionError>(())
        })
        .await;
        match forwarded {
            Ok(result) => result,
            Err(_) => Err(SessionError::Upstream(
                "the cancel request timed out".into(),
            )),
        }
    }
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

/// Sends `code`/`message` to the client as a FATAL error; the session's error.
async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    code: &str,
    message: String,
) -> SessionError {
    let _ = client.write_all(&protocol::fatal(code, &message)).await;
    SessionError::Refused(format!("{message} (SQLSTATE {code})"))
}

/// SCRAM-SHA-256 against the proxy's local password, before the server is contacted; over TLS,
/// SCRAM-SHA-256-PLUS is offered first, bound to the proxy's certificate (`end_point`).
/// `user_allowed`: whether the start-up names the user the proxy logs in as; if not, the exchange runs to its
/// end and fails as a wrong password does, so the reply does not tell which was wrong. Each client message
/// is read within PostgreSQL's limit for a client that has not authenticated.
async fn local_authentication<S>(
    client: &mut S,
    secret: &LocalSecret,
    user: &str,
    user_allowed: bool,
    end_point: Option<&[u8]>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut body = 10_i32.to_be_bytes().to_vec();
    if end_point.is_some() {
        body.extend(format!("{}\0", scram::MECHANISM_PLUS).as_bytes());
    }
    body.extend(format!("{}\0\0", scram::MECHANISM).as_bytes());
    client
        .write_all(&protocol::with_length(Some(b'R'), body))
        .await?;
    let result = async {
        let initial =
            protocol::read_message_within(client, protocol::MAX_PRE_AUTH_MESSAGE_LEN).await?;
        let (mechanism, rest) =
            split_cstr(&initial.body).ok_or_else(|| ScramError("malformed".into()))?;
        let binding = match (mechanism.as_str(), end_point) {
            (scram::MECHANISM_PLUS, Some(end_point)) => scram::Binding::Required(end_point),
            (scram::MECHANISM, Some(_)) => scram::Binding::Declined,
            (scram::MECHANISM, None) => scram::Binding::NotOffered,
            _ => {
                return Err(SessionError::Client(
                    "not a SCRAM-SHA-256 initial response".into(),
                ));
            }
        };
        if initial.tag != b'p' || rest.len() < 4 {
            return Err(SessionError::Client(
                "not a SCRAM-SHA-256 initial response".into(),
            ));
        }
        let (server, server_first) =
            scram::Server::start(secret, &String::from_utf8_lossy(&rest[4..]), binding)?;
        let mut body = 11_i32.to_be_bytes().to_vec();
        body.extend(server_first.as_bytes());
        client
            .write_all(&protocol::with_length(Some(b'R'), body))
            .await?;
        let last =
            protocol::read_message_within(client, protocol::MAX_PRE_AUTH_MESSAGE_LEN).await?;
        if last.tag != b'p' {
            return Err(SessionError::Client("not a SASL response".into()));
        }
        let server_final = server.finish(&String::from_utf8_lossy(&last.body))?;
        if !user_allowed {
            return Err(SessionError::Client(
                "the start-up names another user than the proxy's".into(),
            ));
        }
        let mut body = 12_i32.to_be_bytes().to_vec();
        body.extend(server_final.as_bytes());
        client
            .write_all(&protocol::with_length(Some(b'R'), body))
            .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(SessionError::Io(error)) if error.kind() != io::ErrorKind::InvalidData => {
            Err(SessionError::Io(error))
        }
        Err(error) => {
            // The client is told only what PostgreSQL tells it; why is for the log.
            let message = format!("password authentication failed for user \"{user}\"");
            let _ = client.write_all(&protocol::fatal("28P01", &message)).await;
            Err(SessionError::Refused(format!("local password: {error}")))
        }
    }
}

fn split_cstr(bytes: &[u8]) -> Option<(String, &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8_lossy(&bytes[..end]).into_owned(),
        &bytes[end + 1..],
    ))
}

fn field(fields: &[(u8, String)], code: u8) -> Option<String> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.clone())
}

fn set_field(fields: &mut Vec<(u8, String)>, code: u8, value: String) {
    match fields.iter_mut().find(|(c, _)| *c == code) {
        Some((_, v)) => *v = value,
        None => fields.push((code, value)),
    }
}

/// The server's error after `AuthenticationOk`, with pgwi's hint when the SQLSTATE says what to do.
fn with_hint(message: &Message) -> Diagnosed {
    let mut fields = protocol::parse_fields(&message.body);
    let code = field(&fields, b'C').unwrap_or_default();
    let fix = match code.as_str() {
        // The token was accepted; the role itself may not log in.
        "28000" => Some(
            "the role was authenticated but may not log in: an administrator must grant it LOGIN \
             (ALTER ROLE … LOGIN), or connect as another role",
        ),
        other => fix_for_sqlstate(other),
    };
    if let Some(fix) = fix
        && field(&fields, b'H').is_none()
    {
        set_field(&mut fields, b'H', format!("pgwi: {fix}"));
    }
    diagnosed(&fields, &code)
}

fn diagnosed(fields: &[(u8, String)], code: &str) -> Diagnosed {
    let summary = format!(
        "{} (SQLSTATE {code})",
        field(fields, b'M').unwrap_or_default()
    );
    let borrowed: Vec<(u8, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Diagnosed {
        packet: protocol::error_response(&borrowed),
        summary,
    }
}

struct Diagnosed {
    packet: Vec<u8>,
    summary: String,
}

/// Why a session ended before or instead of relaying (secret-free).
#[derive(Debug, thiserror::Error)]
enum SessionError {
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

/// The one log line of a session, written when it ends however it ends.
struct SessionLog {
    client: String,
    kind: &'static str,
    database: Option<String>,
    upstream_pid: Option<i32>,
    started: Instant,
    bytes_from_client: Arc<AtomicU64>,
    bytes_from_server: Arc<AtomicU64>,
    relaying: bool,
    /// Logged at debug: a connection that sent nothing, or a cancel request for no session (floods of
    /// either must not flood the log).
    quiet: bool,
    error: Option<SessionError>,
}

impl SessionLog {
    fn new(client: String) -> Self {
        Self {
            client,
            kind: "session",
            database: None,
            upstream_pid: None,
            started: Instant::now(),
            bytes_from_client: Arc::default(),
            bytes_from_server: Arc::default(),
            relaying: false,
            quiet: false,
            error: None,
        }
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let bytes_from_client = self.bytes_from_client.load(Ordering::Relaxed);
        let bytes_from_server = self.bytes_from_server.load(Ordering::Relaxed);
        let database = self.database.as_deref().unwrap_or_default();
        let upstream_pid = self.upstream_pid.unwrap_or_default();
        let quiet = self.quiet || bytes_from_client == 0;
        match &self.error {
            Some(error) if quiet => tracing::debug!(
                client = %self.client, kind = self.kind, duration_ms, %error, "connection dropped"
            ),
            // A session that was relaying ends with the connection: not the proxy's failure.
            Some(error) if !self.relaying => tracing::warn!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, %error, "connection refused"
            ),
            Some(error) => tracing::info!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, %error, "connection ended"
            ),
            None => tracing::info!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, "connection ended"
            ),
        }
    }
}

/// Counts the bytes read from and written to a stream (shared counters: the log reads them even when the
/// session is dropped midway).
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Asks the cache for a token at its refresh time, so that sessions seldom wait for one, and notes the last
/// one (and when it arrived) for [`Proxy::health`].
async fn keep_fresh(credential: Arc<CachedTokenSource>, current: Arc<Mutex<Option<Seen>>>) {
    loop {
        // Every token is noted, usable or not: when it was first seen bounds its deadline.
        if let Ok(token) = credential.token().await {
            record(&current, &token);
        }
        let now = OffsetDateTime::now_utc();
        let wait = credential
            .refresh_at()
            .and_then(|at| Duration::try_from(at - now).ok())
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(100), KEEPER_TICK);
        tokio::time::sleep(wait).await;
    }
}
