//! A PostgreSQL endpoint for programs that cannot use this library (psql, Python, Go, `pg_dump`): each
//! client session gets its own connection to the configured server, authenticated with a token that is
//! valid at that moment, and then the bytes flow both ways untouched.
//!
//! Per session (`session.rs`): the client's start-up within the start-up deadline — TLS if it asks and a
//! certificate is configured (`client.rs`), GSS encryption refused, each start-up key at most once; a remote
//! client proves the proxy's local password with SCRAM (`local_auth.rs`) before it learns anything or a token
//! is asked for (a wrong user fails like a wrong password); then a session slot; the start-up must name the
//! configured user (or the one `auto` derives from the token), else one error naming that user; the server
//! gets exactly the parameters checked, and its authentication request is answered here (`login.rs`) —
//! cleartext with the token (what Azure asks an Entra principal for), or SCRAM-SHA-256 with it (a static
//! password; the server must prove the password back before `AuthenticationOk` counts). From
//! `AuthenticationOk` on, every message is the server's own except `BackendKeyData`: the client gets a key
//! the proxy issued (`cancel.rs`), and its `CancelRequest` is mapped back and forwarded over a new
//! connection with the same TLS. A refused login reaches the client with pgwi's diagnosis
//! (`diagnosis.rs`); every connection ends with one log line (`accounting.rs`).
//!
//! "No expired token is presented" holds as for the pool: a token is taken from the token source's cache
//! for each session and presented only while `now < exp - skew` (the skew allowance capped at a quarter of
//! the token's life, measured from its issue, [`crate::connect`]'s rule); otherwise the client gets the
//! credential's error. The cache serves its last good token up to its very expiry while the source fails,
//! so this check, not the cache, keeps a token inside the allowance from the server. A keeper task asks the
//! cache ahead of expiry, so sessions rarely wait for a refresh. Listeners, start-up budgets, the health
//! endpoint and the drain are [`server::ProxyServer`]'s; [`Proxy::serve`] serves one accepted connection.

mod accounting;
mod cancel;
mod client;
mod diagnosis;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod local_auth;
mod login;
mod scram;
pub mod server;
mod session;
mod tls;
mod upstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_credentials::{CachedTokenSource, CredentialError, Token, TokenSource as _};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use client::{ClientTls, ClientTlsError};
pub use scram::{LocalSecret, ScramError};

use cancel::CancelKeys;

use crate::config::Config;
use crate::connect::{self, ConnectError};

/// How long a client has, from its connection, to finish its start-up: TLS, the start-up message and, for a
/// remote client, the local password. PostgreSQL's `authentication_timeout` and PgBouncer's
/// `client_login_timeout` bound the same phase; a few seconds suffice for every client library.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default cap on sessions past their start-up: each holds a backend of the server.
pub const DEFAULT_MAX_CLIENTS: usize = 1000;
/// The most bytes of server messages buffered between `AuthenticationOk` and `ReadyForQuery` (a server
/// sends a few hundred).
pub(crate) const MAX_BUFFERED_BEFORE_READY: usize = 1 << 20;
/// How long a forwarded cancel request may take.
pub(crate) const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The start-up slots this client holds (its listener's, its address's), released as soon as its
    /// start-up is done, so that clients that never finish theirs cannot hold more than their budget.
    pub admission: Option<Admission>,
}

/// Start-up slots a client holds until its start-up is done ([`server::ProxyServer`] hands them out).
#[derive(Debug)]
pub struct Admission {
    _listener: OwnedSemaphorePermit,
    _peer: Option<server::PeerSlot>,
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
                    sslmode: crate::tls_rules::TlsRules::new(db, &host).effective_sslmode(),
                    host,
                    port,
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

    /// The limits the proxy was started with.
    pub fn options(&self) -> &ProxyOptions {
        &self.inner.options
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
