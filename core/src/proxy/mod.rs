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
//! so this check, not the cache, keeps a token inside the allowance from the server. The pool's token keeper
//! (`connect::keeper`) holds the token and asks the cache ahead of expiry, so sessions rarely wait for a
//! refresh; [`Proxy::start`] settles the source, the server and the first token with the pool's own steps
//! (`connect::plan`). Listeners, start-up budgets, the health endpoint and the drain are
//! [`server::ProxyServer`]'s; [`Proxy::serve`] serves one accepted connection.

mod accounting;
mod cancel;
mod client;
mod connection_test;
mod diagnosis;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod local_auth;
mod login;
mod relay;
mod scram;
pub mod server;
mod session;
mod tls;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use pgwi_credentials::{CredentialError, Token, TokenSource};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use client::{ClientTls, ClientTlsError};
pub use connection_test::ConnectionTestError;
pub use scram::{LocalSecret, ScramError};

use cancel::CancelKeys;

use crate::config::Config;
use crate::connect::{ConnectError, Plan, ReadOnly, TokenKeeper, user_from_token};

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

/// The proxy: configuration, token source and TLS settings shared by every session. Cheap to clone.
///
/// Embedded in a Rust program (the `pgwi proxy` command adds Unix sockets, `/healthz` and the drain):
///
/// ```no_run
/// # async fn run(
/// #     config: pgwi_core::Config,
/// #     credential: std::sync::Arc<dyn pgwi_credentials::TokenSource>,
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
    shared: Arc<Shared>,
}

/// What every session of the proxy shares: the server and the user to log in as, the limits, the session
/// slots, the cancel keys and the token keeper.
struct Shared {
    target: upstream::Target,
    configured_user: Option<String>,
    connect_timeout: Duration,
    options: ProxyOptions,
    /// One permit per session past its start-up ([`ProxyOptions::max_clients`]).
    sessions: Arc<Semaphore>,
    /// The cancel keys handed to clients, mapped to the upstream backends'.
    cancel_keys: Arc<CancelKeys>,
    /// The last token the cache gave (to a session or the keeper's task) and when it was first received,
    /// for [`Proxy::health`] and for the deadline of a token without an `iat` claim.
    keeper: Arc<TokenKeeper>,
    /// Ends the keeper's task when the last clone of the proxy goes.
    _stop_keeper: tokio::sync::watch::Sender<()>,
    /// Set once every session is to end at its next idle point ([`Proxy::end_sessions_when_idle`]).
    end_when_idle: tokio::sync::watch::Sender<bool>,
    /// `database.name`: the connection test's database, and what `pgwi exec` gives its command.
    database: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.shared.target.host)
            .field("port", &self.shared.target.port)
            .field(
                "credential",
                &self.shared.keeper.credential().info().to_string(),
            )
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
    /// End each session at its first idle point after the token it logged in with has expired (PostgreSQL's
    /// 57P01, with a hint), so that an identity revoked in Entra loses its sessions within one token
    /// lifetime, also those of clients that never reconnect. Off by default: long-lived sessions (a
    /// `LISTEN`er, a session with temporary tables or prepared statements) then end about hourly and their
    /// clients must reconnect.
    pub end_sessions_after_token_expiry: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            max_clients: DEFAULT_MAX_CLIENTS,
            end_sessions_after_token_expiry: false,
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
    /// Checks a configuration built in code (one from [`crate::config::load`] was checked there), builds
    /// the TLS settings, fetches the first token (a bad credential fails here, not at the first client) and
    /// starts the keeper that asks for the next one ahead of expiry: the steps of [`crate::connect`], with
    /// the same token source type as [`crate::connect_with`] (a cache is put in front unless it is a
    /// [`pgwi_credentials::CachedTokenSource`] already). The server is not contacted: it may come up after
    /// the proxy.
    pub async fn start(
        config: &Config,
        source: Arc<dyn TokenSource>,
    ) -> Result<Self, ConnectError> {
        Self::start_with(config, source, ProxyOptions::default()).await
    }

    /// [`Proxy::start`] with these limits.
    pub async fn start_with(
        config: &Config,
        source: Arc<dyn TokenSource>,
        options: ProxyOptions,
    ) -> Result<Self, ConnectError> {
        let plan = Plan::new(config, Some(source))?;
        let db = &config.database;
        let tls = if plan.host.starts_with('/') {
            None
        } else {
            tls::client_config(db)?
        };
        let first = plan.first_login(db).await?;
        let configured_user = (!user_from_token(db)).then_some(first.user);
        let keeper = Arc::new(TokenKeeper::new(plan.credential, plan.skew, first.token));
        let (events, stop_keeper) = ReadOnly::new();
        keeper.spawn(Arc::new(events));
        let target = upstream::Target {
            sslmode: crate::tls_rules::TlsRules::new(db, &plan.host).effective_sslmode(),
            host: plan.host,
            port: plan.port,
            tls,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                configured_user,
                connect_timeout: Duration::from_secs(db.connect_timeout_secs),
                sessions: Arc::new(Semaphore::new(
                    options.max_clients.clamp(1, Semaphore::MAX_PERMITS),
                )),
                options,
                cancel_keys: Arc::default(),
                keeper,
                _stop_keeper: stop_keeper,
                end_when_idle: tokio::sync::watch::channel(false).0,
                database: db.name.clone(),
            }),
        })
    }

    /// The user sessions log in as now (from the token's claims with `user = "auto"`).
    pub fn user(&self) -> Option<String> {
        self.user_for(&self.shared.keeper.held().token)
    }

    /// Ends every session at its next idle point: at once for a session outside a transaction with nothing
    /// in flight, else at the `ReadyForQuery` that ends its transaction. The client gets PostgreSQL's
    /// `57P01 terminating connection due to administrator command` (drivers reconnect), the server a
    /// `Terminate`. Sessions that start afterwards end as soon as they are logged in. The drain of
    /// [`server::BoundProxyServer::serve`] calls this once it stops accepting.
    pub fn end_sessions_when_idle(&self) {
        self.shared.end_when_idle.send_replace(true);
    }

    /// The configured database (`database.name`), which the connection test logs in to.
    pub fn database(&self) -> Option<&str> {
        self.shared.database.as_deref()
    }

    /// The limits the proxy was started with.
    pub fn options(&self) -> &ProxyOptions {
        &self.shared.options
    }

    /// The server, as `host:port` (or the socket directory and port).
    pub fn upstream(&self) -> String {
        format!("{}:{}", self.shared.target.host, self.shared.target.port)
    }

    /// Whether a token usable for new sessions is held (for a health endpoint); asks nothing upstream.
    pub fn health(&self) -> Health {
        let keeper = &self.shared.keeper;
        let held = keeper.held();
        if held.usable_now(keeper.skew()) {
            return Health::Ready {
                expires_at: held.token.expires_at(),
            };
        }
        Health::NoToken(match keeper.credential().last_failure() {
            Some(error) => error.to_string(),
            None => "the token is within the skew allowance of its expiry and no new one has \
                     arrived yet"
                .into(),
        })
    }

    fn user_for(&self, token: &Token) -> Option<String> {
        match &self.shared.configured_user {
            Some(user) => Some(user.clone()),
            None => token.claims().and_then(|c| c.database_user()),
        }
    }

    /// A token that may be presented now: before its expiry less the skew allowance (the cache serves its
    /// last good token while the source fails, up to its expiry), else the credential's error.
    async fn token_now(&self) -> Result<Token, CredentialError> {
        let keeper = &self.shared.keeper;
        let credential = keeper.credential();
        let token = credential.token().await?;
        let received = keeper.note(&token);
        if !pgwi_credentials::validity::usable_at(
            &token,
            received,
            keeper.skew(),
            OffsetDateTime::now_utc(),
        ) {
            return Err(credential.last_failure().unwrap_or_else(|| {
                pgwi_credentials::validity::expired_on_arrival(credential.info().kind, &token)
            }));
        }
        Ok(token)
    }
}
