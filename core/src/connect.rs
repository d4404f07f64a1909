//! A SeaORM connection whose pool always authenticates new connections with a fresh token.
//!
//! The first token is fetched before the pool is built (a bad credential fails fast). A background task then
//! keeps the pool's connect options ahead of token expiry (`Pool::set_connect_options`), waking when the
//! cached token enters the refresh margin. Open connections are unaffected: PostgreSQL checks the password
//! only at start-up. If no new token can be had and the last one expires, new connections are refused
//! without presenting the expired token, and [`Database::acquire`] returns the credential's own error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwi_credentials::{
    CacheStats, CachedTokenSource, CredentialError, SourceContext, SourceRegistry, Token,
    TokenSource,
};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sea_orm::sqlx::{self, ConnectOptions as _, PgPool, pool::PoolConnection};
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::config::{Config, ConfigError, DatabaseConfig, SslMode, split_host_port};

/// Why connecting failed. Each variant's message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No password could be had from the token source.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The server refused the user and password (SQLSTATE 28P01 or 28000).
    #[error(transparent)]
    Authentication(Box<AuthenticationFailure>),
    /// TLS failed: handshake or certificate verification.
    #[error(
        "TLS to {host}:{port} failed ({detail}); with sslmode={sslmode} the server certificate must chain to \
         a trusted CA{}: check database.ssl_root_cert and that database.host is the name on the certificate",
        if *.sslmode == SslMode::VerifyFull { " and name the host" } else { "" }
    )]
    Tls {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// sslmode in force.
        sslmode: SslMode,
        /// What the TLS stack said.
        detail: String,
    },
    /// The server could not be reached within the connect timeout.
    #[error(
        "could not reach PostgreSQL at {host}:{port} within {waited_secs}s ({last}); check database.host and \
         database.port, DNS, firewall rules or private endpoint, and that the server is running"
    )]
    Unreachable {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// How long we tried.
        waited_secs: u64,
        /// The last error.
        last: String,
    },
    /// The user could not be derived from the token (`user = "auto"`).
    #[error(
        "database.user = \"auto\" needs a token whose claims name the identity (xms_mirid, upn, \
         preferred_username or unique_name), but the {source_kind} token has none; set database.user to \
         the managed identity's name"
    )]
    UserNotDerivable {
        /// The token source's kind.
        source_kind: String,
    },
    /// Any other database error.
    #[error("PostgreSQL error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ConnectError {
    /// True when the fix is in configuration (exit status 2 in the `pgwi` binary).
    pub fn is_configuration(&self) -> bool {
        match self {
            ConnectError::Config(_) | ConnectError::UserNotDerivable { .. } => true,
            ConnectError::Credential(e) => e.is_configuration(),
            _ => false,
        }
    }
}

/// The server refused the login: who, where, and the server's words (never the password).
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL at {host}:{port} refused user {user:?} on database {database:?} ({code}: {message}). \
     Likely causes: the user must be the managed identity's NAME (not its client id; `user = \"auto\"` \
     derives it from the token); the role must exist on the server (created with \
     pgaadauth_create_principal_with_oid, see `pgwi admin bootstrap`); the token's audience must be \
     Azure Database for PostgreSQL ({audience}); for a static password, the password must be right"
)]
pub struct AuthenticationFailure {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The user presented.
    pub user: String,
    /// The database asked for.
    pub database: String,
    /// SQLSTATE.
    pub code: String,
    /// The server's message.
    pub message: String,
    /// The token's `aud` claim, or a note that there was none.
    pub audience: String,
}

/// The resolved connection target.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    database: String,
    user: String,
    /// `user = "auto"`: the user follows the claims of the token in use.
    user_from_token: bool,
}

#[derive(Default)]
struct RotationState {
    rotations: AtomicU64,
    current_expiry: Mutex<Option<OffsetDateTime>>,
    last_rotation: Mutex<Option<OffsetDateTime>>,
    /// Set while the credential fails and the last token has expired.
    outage: Mutex<Option<CredentialError>>,
}

/// Figures about the connection's password, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationStats {
    /// How often the pool's password was replaced after the first.
    pub rotations: u64,
    /// When the password new connections present expires.
    pub current_expiry: Option<OffsetDateTime>,
    /// When it was last replaced.
    pub last_rotation: Option<OffsetDateTime>,
    /// The token source's cache figures.
    pub credential: CacheStats,
}

/// A connected database: SeaORM's `DatabaseConnection`, the sqlx pool under it, and the task that keeps its
/// password fresh (stopped on [`Database::close`] or drop).
pub struct Database {
    connection: DatabaseConnection,
    pool: PgPool,
    credential: Arc<CachedTokenSource>,
    state: Arc<RotationState>,
    target: Target,
    refresher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("credential", &self.credential.info().to_string())
            .finish_non_exhaustive()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Connects with the token source `config.credential` names (process environment, built-in kinds).
pub async fn connect(config: &Config) -> Result<Database, ConnectError> {
    let credential =
        SourceRegistry::default().build_cached(&config.credential, &SourceContext::default())?;
    connect_with(config, credential).await
}

/// Connects with a token source the caller built (a registered kind, a test context).
pub async fn connect_with(
    config: &Config,
    credential: Arc<CachedTokenSource>,
) -> Result<Database, ConnectError> {
    let db = &config.database;
    let (host, port) = resolve_host(db)?;
    let span = tracing::info_span!("connect", %host, port, database = db.name.as_deref().unwrap_or_default(), credential = %credential.info());
    async move {
        let token = credential.token().await?;
        let user = resolve_user(db, &token, &credential)?;
        let target = Target {
            host,
            port,
            database: db.name.clone().unwrap_or_default(),
            user,
            user_from_token: db.user.as_deref().map(str::trim) == Some("auto"),
        };
        let base = base_options(db, &target);
        let lifetime = pool_lifetime(db, &token);
        let state = Arc::new(RotationState::default());
        *lock(&state.current_expiry) = token.expires_at();
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(db.connect_timeout_secs))
            .max_lifetime(lifetime)
            .idle_timeout(lifetime.min(Duration::from_secs(600)))
            .connect_lazy_with(base.clone().password(token.secret().expose()));
        let mut first = establish(&pool, db, &target, &token).await?;
        let (version,): (String,) = sqlx::query_as("SHOW server_version").fetch_one(&mut *first).await?;
        drop(first);
        tracing::info!(user = %target.user, server_version = %version, token_expires_at = ?token.expires_at(), max_lifetime_secs = lifetime.as_secs(), "connected");
        let refresher = tokio::spawn(refresh_loop(
            pool.clone(),
            base,
            target.user_from_token,
            credential.clone(),
            state.clone(),
            token,
        ));
        Ok(Database {
            connection: sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
            pool,
            credential,
            state,
            target,
            refresher,
        })
    }
    .instrument(span)
    .await
}

impl Database {
    /// The SeaORM connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    /// The sqlx pool under it, for code that uses sqlx directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database user in use (resolved when `user = "auto"`).
    pub fn user(&self) -> &str {
        &self.target.user
    }

    /// The token source behind the pool.
    pub fn credential(&self) -> &Arc<CachedTokenSource> {
        &self.credential
    }

    /// Password rotation figures.
    pub fn rotation_stats(&self) -> RotationStats {
        RotationStats {
            rotations: self.state.rotations.load(Ordering::Relaxed),
            current_expiry: *lock(&self.state.current_expiry),
            last_rotation: *lock(&self.state.last_rotation),
            credential: self.credential.stats(),
        }
    }

    /// A connection from the pool. While the credential cannot produce a valid token, this fails at once with
    /// the credential's own error.
    pub async fn acquire(&self) -> Result<PoolConnection<sqlx::Postgres>, ConnectError> {
        if let Some(error) = lock(&self.state.outage).clone() {
            return Err(ConnectError::Credential(error));
        }
        self.pool.acquire().await.map_err(ConnectError::Database)
    }

    /// Stops the refresh task and closes the pool, waiting for connections to be returned.
    pub async fn close(self) {
        self.refresher.abort();
        self.pool.close().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn resolve_host(db: &DatabaseConfig) -> Result<(String, u16), ConnectError> {
    let raw = db.host.clone().unwrap_or_default();
    let (host, port) = split_host_port(&raw).map_err(|problem| {
        ConnectError::Config(ConfigError::Rejected {
            key: "database.host".into(),
            origin: "configuration".into(),
            problem,
            fix: "write host or host:port".into(),
        })
    })?;
    Ok((host, port.unwrap_or(db.port)))
}

fn resolve_user(
    db: &DatabaseConfig,
    token: &Token,
    credential: &CachedTokenSource,
) -> Result<String, ConnectError> {
    match db.user.as_deref().map(str::trim) {
        Some("auto") => token
            .claims()
            .and_then(|c| c.database_user())
            .inspect(|user| tracing::info!(%user, "database.user = auto: derived the user from the token's claims"))
            .ok_or_else(|| ConnectError::UserNotDerivable {
                source_kind: credential.info().kind,
            }),
        Some(user) => Ok(user.to_owned()),
        None => Err(ConnectError::Config(ConfigError::Rejected {
            key: "database.user".into(),
            origin: "nowhere".into(),
            problem: "is not set".into(),
            fix: "set DBUSER, PGWI_DATABASE__USER or database.user".into(),
        })),
    }
}

fn base_options(db: &DatabaseConfig, target: &Target) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&target.host)
        .port(target.port)
        .database(&target.database)
        .username(&target.user)
        .ssl_mode(match db.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        })
        .application_name(&db.application_name)
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
    if let Some(ca) = &db.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    if db.statement_timeout_secs > 0 {
        options = options.options([(
            "statement_timeout",
            format!("{}s", db.statement_timeout_secs),
        )]);
    }
    options
}

/// `max_lifetime` from configuration, kept below the token's remaining lifetime.
fn pool_lifetime(db: &DatabaseConfig, token: &Token) -> Duration {
    let configured = Duration::from_secs(db.max_lifetime_secs.max(1));
    match token.expires_at() {
        Some(expiry) => {
            let remaining = (expiry - OffsetDateTime::now_utc()).max(time::Duration::seconds(1));
            configured.min(Duration::try_from(remaining).unwrap_or(configured))
        }
        None => configured,
    }
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Opens the first connection, retrying transient failures with jittered backoff within the connect timeout.
async fn establish(
    pool: &PgPool,
    db: &DatabaseConfig,
    target: &Target,
    token: &Token,
) -> Result<PoolConnection<sqlx::Postgres>, ConnectError> {
    let started = Instant::now();
    let limit = Duration::from_secs(db.connect_timeout_secs);
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match pool.acquire().await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let code = sqlstate(&error);
        match code.as_deref() {
            Some(code @ ("28P01" | "28000")) => {
                return Err(ConnectError::Authentication(Box::new(
                    AuthenticationFailure {
                        host: target.host.clone(),
                        port: target.port,
                        user: target.user.clone(),
                        database: target.database.clone(),
                        code: code.to_owned(),
                        message: error
                            .as_database_error()
                            .map(|e| e.message().to_owned())
                            .unwrap_or_default(),
                        audience: token.claims().and_then(|c| c.get("aud")).map_or_else(
                            || "no token claims: a static password".into(),
                            |aud| format!("the token's is {aud}"),
                        ),
                    },
                )));
            }
            Some("57P03" | "53300") => {}
            Some(_) => return Err(ConnectError::Database(error)),
            None => match &error {
                sqlx::Error::Tls(detail) => {
                    return Err(ConnectError::Tls {
                        host: target.host.clone(),
                        port: target.port,
                        sslmode: db.sslmode,
                        detail: detail.to_string(),
                    });
                }
                sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(ConnectError::Tls {
                        host: target.host.clone(),
                        port: target.port,
                        sslmode: db.sslmode,
                        detail: io.to_string(),
                    });
                }
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {}
                _ => return Err(ConnectError::Database(error)),
            },
        }
        let jittered = backoff.mul_f64(0.5 + fastrand::f64());
        if started.elapsed() + jittered >= limit {
            return Err(ConnectError::Unreachable {
                host: target.host.clone(),
                port: target.port,
                waited_secs: started.elapsed().as_secs(),
                last: error.to_string(),
            });
        }
        tracing::warn!(error = %error, retry_in_ms = jittered.as_millis() as u64, "PostgreSQL not reachable yet; retrying");
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often a password without expiry (static) is re-read.
const STATIC_RECHECK: Duration = Duration::from_secs(30);
/// How soon to retry after a failed refresh when the cache has nothing newer.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Where new connections are sent while no valid token exists: a socket that cannot exist, so the expired
/// token is never presented.
const NO_VALID_TOKEN_SOCKET: &str = "/nonexistent/pgwi-no-valid-token";

async fn refresh_loop(
    pool: PgPool,
    mut base: PgConnectOptions,
    user_from_token: bool,
    credential: Arc<CachedTokenSource>,
    state: Arc<RotationState>,
    mut current: Token,
) {
    let margin = credential.options().refresh_margin;
    loop {
        let wait = match current.expires_at() {
            Some(expiry) => {
                let until = expiry - margin - OffsetDateTime::now_utc();
                Duration::try_from(until)
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(50))
            }
            None => STATIC_RECHECK,
        };
        tokio::time::sleep(wait).await;
        let span = tracing::info_span!("token_refresh", credential = %credential.info());
        let result = credential.token().instrument(span.clone()).await;
        // Decide under the span, then wait outside it (a span must not stay entered across an await).
        let retry_soon = span.in_scope(|| match result {
            Ok(token) => {
                let outage_over = lock(&state.outage).take().is_some();
                if token.secret() != current.secret() || outage_over {
                    if user_from_token
                        && let Some(user) = token.claims().and_then(|c| c.database_user())
                        && user != base.get_username()
                    {
                        tracing::info!(%user, "database.user = auto: the new token names another user");
                        base = base.clone().username(&user);
                    }
                    pool.set_connect_options(base.clone().password(token.secret().expose()));
                    state.rotations.fetch_add(1, Ordering::Relaxed);
                    *lock(&state.current_expiry) = token.expires_at();
                    *lock(&state.last_rotation) = Some(OffsetDateTime::now_utc());
                    tracing::info!(expires_at = ?token.expires_at(), "new connections now use a fresh token");
                    current = token;
                    false
                } else {
                    // The cache served the same token again inside the margin (a failed refresh).
                    current
                        .expires_at()
                        .is_some_and(|e| e - margin <= OffsetDateTime::now_utc())
                }
            }
            Err(error) => {
                if !current.is_valid_at(OffsetDateTime::now_utc())
                    && lock(&state.outage).replace(error.clone()).is_none()
                {
                    pool.set_connect_options(base.clone().socket(NO_VALID_TOKEN_SOCKET));
                    tracing::error!(%error, "the last token expired and no new one can be had: new connections are refused until the credential recovers");
                }
                true
            }
        });
        if retry_soon {
            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        }
    }
}
