//! A SeaORM connection whose pool always authenticates new connections with a fresh token.
//!
//! The first token is fetched before the pool is built (a bad credential fails fast) and the first
//! connection is opened with retries for a server that is starting. Then [`rotation`] keeps the pool's
//! password fresh for as long as the pool lives; open connections are unaffected (PostgreSQL checks the
//! password only at start-up). Errors live in [`error`]; the endpoint that refuses new connections while no
//! valid token exists in [`refusal`].

mod error;
mod refusal;
mod rotation;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwi_credentials::{
    CacheStats, CachedTokenSource, SourceContext, SourceRegistry, Token, TokenSource,
};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sea_orm::sqlx::{self, ConnectOptions as _, PgPool, pool::PoolConnection};
use time::OffsetDateTime;
use tracing::Instrument as _;

pub use error::{AuthenticationFailure, ConnectError, fix_for_sqlstate};
use rotation::{Current, Rotation, RotationState, lock};

use crate::config::{Config, ConfigError, DatabaseConfig, SslMode, split_host_port};

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

/// A connected database: SeaORM's `DatabaseConnection` and the sqlx pool under it, whose password a
/// background task keeps fresh for as long as the pool lives (until [`Database::close`], or until the last
/// clone of the pool or the SeaORM connection is closed). Dropping this value stops nothing: keeping only
/// `connection().clone()` is enough.
pub struct Database {
    connection: DatabaseConnection,
    pool: PgPool,
    credential: Arc<CachedTokenSource>,
    state: Arc<RotationState>,
    target: Target,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("credential", &self.credential.info().to_string())
            .finish_non_exhaustive()
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
        let lifetime = Duration::from_secs(db.max_lifetime_secs.max(1));
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
        Rotation {
            pool: pool.clone(),
            base: Mutex::new(base),
            user_from_token: target.user_from_token,
            credential: credential.clone(),
            state: state.clone(),
            skew: Duration::from_secs(config.credential.expiry_skew_secs),
            current: Mutex::new(Current::new(token, credential.options().refresh_margin)),
            refusal: tokio::sync::Mutex::new(None),
        }
        .spawn();
        Ok(Database {
            connection: sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
            pool,
            credential,
            state,
            target,
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

    /// A connection from the pool: an idle one when there is one (also while the credential fails), else a
    /// new one. While no valid token exists, opening a new one fails at once with the credential's own error.
    pub async fn acquire(&self) -> Result<PoolConnection<sqlx::Postgres>, ConnectError> {
        match self.pool.acquire().await {
            Ok(conn) => Ok(conn),
            Err(error) => Err(match self.state.outage() {
                Some(credential)
                    if sqlstate(&error).as_deref() == Some(refusal::REFUSAL_SQLSTATE) =>
                {
                    ConnectError::Credential(credential)
                }
                _ => ConnectError::from_sqlx(error),
            }),
        }
    }

    /// Closes the pool, waiting for connections to be returned; the password rotation ends with it.
    pub async fn close(self) {
        self.pool.close().await;
    }
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
            Some(_) => return Err(ConnectError::from_sqlx(error)),
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
                _ => return Err(ConnectError::from_sqlx(error)),
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
