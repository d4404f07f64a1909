//! A SeaORM connection whose pool always authenticates new connections with a fresh token.
//!
//! The first token is fetched before the pool is built (a bad credential fails fast) and the first
//! connection is opened with retries for a server that is starting. Then [`rotation`] keeps the pool's
//! password fresh for as long as the pool lives; open connections are unaffected (PostgreSQL checks the
//! password only at start-up). Errors live in [`error`]; the endpoint that refuses new connections while no
//! valid token exists in [`refusal`].

mod error;
mod pool;
mod refusal;
mod rotation;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_credentials::{CacheStats, CachedTokenSource, SourceContext, SourceRegistry, TokenSource};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::{self, PgPool, pool::PoolConnection};
use time::OffsetDateTime;
use tracing::Instrument as _;

pub use error::{AuthenticationFailure, ConnectError, fix_for_sqlstate};
use pool::{Target, sqlstate};
pub(crate) use pool::{audience, resolve_host, resolve_user};
use rotation::{Current, Rotation, RotationState};
pub(crate) use rotation::{expired_on_arrival, lock, usable_at, usable_now};

use crate::config::Config;
use crate::tls_rules::TlsRules;

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
/// background task keeps fresh for as long as the pool lives (until [`RotatingPool::close`], or until the last
/// clone of the pool or the SeaORM connection is closed). Dropping this value stops nothing: keeping only
/// `connection().clone()` is enough. The rotation runs on the tokio runtime that called `connect`, and keeps
/// a clone of the pool until it is closed: a pool dropped without `close()` lives until that runtime ends.
/// `pool().connect_options()` holds the current token: never print its `Debug`.
pub struct RotatingPool {
    connection: DatabaseConnection,
    pool: PgPool,
    credential: Arc<CachedTokenSource>,
    state: Arc<RotationState>,
    target: Target,
}

impl std::fmt::Debug for RotatingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingPool")
            .field("target", &self.target)
            .field("credential", &self.credential.info().to_string())
            .finish_non_exhaustive()
    }
}

/// Connects with the token source `config.credential` names (process environment, built-in kinds).
pub async fn connect(config: &Config) -> Result<RotatingPool, ConnectError> {
    Connector::new(config).connect().await
}

/// Connects with a token source the caller built: any [`TokenSource`] (a cache is put in front unless it is
/// a [`CachedTokenSource`] already).
pub async fn connect_with(
    config: &Config,
    source: Arc<dyn TokenSource>,
) -> Result<RotatingPool, ConnectError> {
    Connector::new(config).source(source).connect().await
}

/// Connects with more control: the token source, sqlx pool options, per-connection options.
///
/// What `sea_orm::ConnectOptions` would set maps onto these two: pool sizes, timeouts and
/// `test_before_acquire` are pool options; `sqlx_logging`, slow-statement logging and the schema search path
/// are per-connection options (`log_statements`, `log_slow_statements`, `options([("search_path", ..)])`).
/// A `ConnectOptions` itself cannot be taken: SeaORM applies it only to pools it builds from a URL.
///
/// ```no_run
/// # async fn run(config: pgwi_core::Config) -> Result<(), pgwi_core::ConnectError> {
/// use sea_orm::sqlx::postgres::PgPoolOptions;
///
/// let db = pgwi_core::Connector::new(&config)
///     .pool_options(PgPoolOptions::new().test_before_acquire(false))
///     .map_connect_options(|options| options.options([("search_path", "app")]))
///     .connect()
///     .await?;
/// let connection = db.connection().clone(); // all a service needs to keep
/// # Ok(()) }
/// ```
pub struct Connector<'a> {
    config: &'a Config,
    source: Option<Arc<dyn TokenSource>>,
    pool_options: PgPoolOptions,
    map_connect_options: Box<dyn Fn(PgConnectOptions) -> PgConnectOptions + Send + 'a>,
}

impl<'a> Connector<'a> {
    /// Starts from `config`; the token source defaults to the one `config.credential` names.
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            source: None,
            pool_options: PgPoolOptions::new(),
            map_connect_options: Box::new(|options| options),
        }
    }

    /// Uses `source` for passwords (a cache is put in front unless it is a [`CachedTokenSource`]).
    pub fn source(mut self, source: Arc<dyn TokenSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Starts the pool from these sqlx options (hooks such as `after_connect`, `test_before_acquire`).
    /// pgwi then sets from configuration: `max_connections`, `acquire_timeout` (`connect_timeout_secs`),
    /// `max_lifetime` and `idle_timeout`.
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool_options = options;
        self
    }

    /// Adjusts each connection's options after pgwi has set host, user, TLS and timeouts (e.g. a
    /// `search_path`, statement logging). The password is set afterwards, by the rotation.
    pub fn map_connect_options(
        mut self,
        map: impl Fn(PgConnectOptions) -> PgConnectOptions + Send + 'a,
    ) -> Self {
        self.map_connect_options = Box::new(map);
        self
    }

    /// Validates the configuration, fetches the first token, opens the first connection and starts the
    /// rotation.
    pub async fn connect(self) -> Result<RotatingPool, ConnectError> {
        let config = self.config;
        config.validate()?;
        let credential = match self.source {
            Some(source) => CachedTokenSource::wrap(source, config.credential.cache_options()),
            None => SourceRegistry::default()
                .build_cached(&config.credential, &SourceContext::default())?,
        };
        let skew = Duration::from_secs(config.credential.expiry_skew_secs);
        check_cache_timing(&credential, skew)?;
        let db = &config.database;
        let (host, port) = pool::resolve_host(db)?;
        let tls = TlsRules::new(db, &host).for_sqlx();
        let span = tracing::info_span!("connect", %host, port, database = db.name.as_deref().unwrap_or_default(), credential = %credential.info());
        let pool_options = self.pool_options;
        let map_connect_options = self.map_connect_options;
        async move {
            // Said once per pool, before any credential is fetched or sent.
            tls.announce();
            let token = credential.token().await?;
            if !rotation::usable_now(&token, skew) {
                return Err(rotation::expired_on_arrival(credential.info().kind, &token).into());
            }
            let user = pool::resolve_user(db, &token, &credential)?;
            let target = Target {
                host,
                port,
                database: db.name.clone().unwrap_or_default(),
                user,
                user_from_token: db.user.as_deref().map(str::trim) == Some("auto"),
            };
            let base = map_connect_options(pool::base_options(db, &target, &tls));
            let lifetime = Duration::from_secs(db.max_lifetime_secs.max(1));
            let state = Arc::new(RotationState::default());
            *lock(&state.current_expiry) = token.expires_at();
            let pool = pool_options
                .max_connections(db.max_connections)
                .acquire_timeout(Duration::from_secs(db.connect_timeout_secs))
                .max_lifetime(lifetime)
                .idle_timeout(lifetime.min(Duration::from_secs(600)))
                .connect_lazy_with(base.clone().password(token.secret().expose()));
            let mut first =
                pool::establish(&pool, db, &target, &token, tls.effective_sslmode()).await?;
            let (version,): (String,) = sqlx::query_as("SHOW server_version").fetch_one(&mut *first).await?;
            drop(first);
            tracing::info!(user = %target.user, server_version = %version, token_expires_at = ?token.expires_at(), max_lifetime_secs = lifetime.as_secs(), "connected");
            Rotation {
                pool: pool.clone(),
                base: Mutex::new(base),
                user_from_token: target.user_from_token,
                credential: credential.clone(),
                state: state.clone(),
                skew,
                current: Mutex::new(Current::new(token, credential.options().refresh_margin)),
                refusal: tokio::sync::Mutex::new(None),
            }
            .spawn();
            Ok(RotatingPool {
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
}

/// A cache the caller built has its own margin and deadline: they must leave room for the skew and a retry,
/// as the loader checks for configuration.
pub(crate) fn check_cache_timing(
    credential: &CachedTokenSource,
    skew: Duration,
) -> Result<(), ConnectError> {
    let problem = pgwi_credentials::validity::cache_timing_problem(&credential.options(), skew);
    match problem {
        Some(problem) => Err(ConnectError::Config(crate::ConfigError::Rejected {
            key: "credential.expiry_skew_secs".into(),
            origin: "the configuration and the CachedTokenSource given to pgwi".into(),
            problem,
            fix: "give the cache a refresh_margin above the skew and a fetch_timeout of at most half \
                  the margin (CredentialConfig::cache_options builds them from the configuration)"
                .into(),
        })),
        None => Ok(()),
    }
}

impl RotatingPool {
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
