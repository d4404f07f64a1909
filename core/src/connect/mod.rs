//! A SeaORM connection whose pool always authenticates new connections with a fresh token.
//!
//! The first token is fetched before the pool is built (a bad credential fails fast) and the first
//! connection is opened with retries for a server that is starting. Then [`rotation`] keeps the pool's
//! password fresh for as long as the pool lives; open connections are unaffected (PostgreSQL checks the
//! password only at start-up). Errors live in [`error`]; the endpoint that refuses new connections while no
//! valid token exists in [`refusal`].

mod error;
mod keeper;
mod plan;
mod pool;
mod refusal;
mod rotation;

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_credentials::{CacheStats, CachedTokenSource, TokenSource};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::{self, PgPool, pool::PoolConnection};
use time::OffsetDateTime;
use tracing::Instrument as _;

pub use error::{AuthenticationFailure, ConnectError, fix_for_sqlstate};
pub(crate) use keeper::{ReadOnly, TokenKeeper, lock};
pub(crate) use plan::{Plan, user_from_token};
pub(crate) use pool::audience;
use pool::{Target, sqlstate};
use rotation::{Rotation, RotationCounts};

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

/// A connected database, used as SeaORM's `DatabaseConnection` (it derefs to one, and implements
/// `ConnectionTrait` so that `Entity::find().all(&db)` takes it), over an sqlx pool whose password a
/// background task keeps fresh for as long as the pool lives (until [`RotatingPool::close`], or until the
/// last clone of the pool or the SeaORM connection is closed). This value adds the rotation's figures
/// ([`RotatingPool::rotation_stats`]) and an `acquire` that names the credential's error; dropping it stops
/// nothing, so keeping only `connection().clone()` is enough. The rotation runs on the tokio runtime that
/// called `connect`, and keeps a clone of the pool until it is closed: a pool dropped without `close()`
/// lives until that runtime ends. `pool().connect_options()` holds the current token: never print its
/// `Debug`.
pub struct RotatingPool {
    connection: DatabaseConnection,
    pool: PgPool,
    keeper: Arc<TokenKeeper>,
    counts: Arc<RotationCounts>,
    target: Target,
}

impl std::fmt::Debug for RotatingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingPool")
            .field("target", &self.target)
            .field("credential", &self.keeper.credential().info().to_string())
            .finish_non_exhaustive()
    }
}

/// Connects with the token source `config.credential` names (process environment, built-in kinds): checks
/// a configuration built in code (one from [`crate::config::load`] was checked there), fetches the first
/// token, opens the first connection and starts the password rotation. Installs the TLS crypto provider
/// (`ring`) if the process has none.
///
/// ```no_run
/// # async fn run(config: pgwi_core::Config) -> Result<(), Box<dyn std::error::Error>> {
/// use sea_orm::ConnectionTrait as _;
///
/// let db = pgwi_core::connect(&config).await?;
/// db.execute_unprepared("SELECT 1").await?;
/// # Ok(()) }
/// ```
pub async fn connect(config: &Config) -> Result<RotatingPool, ConnectError> {
    Connector::new(config).connect().await
}

/// [`connect`] with a token source the caller built: any [`TokenSource`] (a cache is put in front unless it
/// is a [`CachedTokenSource`] already). [`crate::proxy::Proxy::start`] takes the same.
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
    after_connect: Option<pool::AfterConnect>,
}

impl<'a> Connector<'a> {
    /// Starts from `config`; the token source defaults to the one `config.credential` names.
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            source: None,
            pool_options: PgPoolOptions::new(),
            map_connect_options: Box::new(|options| options),
            after_connect: None,
        }
    }

    /// Uses `source` for passwords (a cache is put in front unless it is a [`CachedTokenSource`]).
    pub fn source(mut self, source: Arc<dyn TokenSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Starts the pool from these sqlx options (hooks such as `test_before_acquire`, `before_acquire`).
    /// pgwi then sets from configuration: `max_connections`, `acquire_timeout` (`connect_timeout_secs`),
    /// `max_lifetime` and `idle_timeout`; and its own `after_connect`, which counts new connections
    /// ([`crate::metrics::POOL_CONNECTIONS_OPENED`]): give yours to [`Connector::after_connect`].
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool_options = options;
        self
    }

    /// Runs `hook` on each new physical connection, after pgwi has counted it (sqlx's `after_connect`,
    /// which pgwi sets itself).
    pub fn after_connect(
        mut self,
        hook: impl for<'c> Fn(
            &'c mut sqlx::PgConnection,
            sqlx::pool::PoolConnectionMetadata,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>,
        > + Send
        + Sync
        + 'static,
    ) -> Self {
        self.after_connect = Some(Arc::new(hook));
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

    /// Checks the configuration (unless the loader did), fetches the first token, opens the first
    /// connection and starts the rotation.
    pub async fn connect(self) -> Result<RotatingPool, ConnectError> {
        let plan = Plan::new(self.config, self.source)?;
        let db = &self.config.database;
        let tls = TlsRules::new(db, &plan.host).for_sqlx();
        let span = tracing::info_span!("connect", host = %plan.host, port = plan.port, database = db.name.as_deref().unwrap_or_default(), credential = %plan.credential.info());
        let pool_options = pool::counting_connections(self.pool_options, self.after_connect);
        let map_connect_options = self.map_connect_options;
        async move {
            // Said once per pool, before any credential is fetched or sent.
            tls.announce();
            let first = plan.first_login(db).await?;
            let target = Target {
                host: plan.host,
                port: plan.port,
                database: db.name.clone().unwrap_or_default(),
                user: first.user,
                user_from_token: user_from_token(db),
            };
            let base = map_connect_options(pool::base_options(db, &target, &tls));
            let lifetime = Duration::from_secs(db.max_lifetime_secs.max(1));
            let pool = pool_options
                .max_connections(db.max_connections)
                .acquire_timeout(Duration::from_secs(db.connect_timeout_secs))
                .max_lifetime(lifetime)
                .idle_timeout(lifetime.min(Duration::from_secs(600)))
                .connect_lazy_with(base.clone().password(first.token.secret().expose()));
            let first_connection =
                pool::establish(&pool, db, &target, &first.token, tls.effective_sslmode()).await?;
            // The version the server reported at start-up (ParameterStatus): no round trip of its own.
            let version = first_connection
                .server_version_num()
                .map_or_else(|| "unknown".to_owned(), |n| format!("{}.{}", n / 10000, n % 10000));
            drop(first_connection);
            tracing::info!(user = %target.user, server_version = %version, token_expires_at = ?first.token.expires_at(), max_lifetime_secs = lifetime.as_secs(), "connected");
            let keeper = Arc::new(TokenKeeper::new(plan.credential, plan.skew, first.token));
            let counts = Arc::new(RotationCounts::default());
            let rotation = Rotation {
                pool: pool.clone(),
                base: Mutex::new(base),
                user_from_token: target.user_from_token,
                keeper: keeper.clone(),
                counts: counts.clone(),
                refusal: tokio::sync::Mutex::new(None),
            };
            keeper.spawn(Arc::new(rotation));
            tokio::spawn(pool::sample_connections(pool.clone()));
            Ok(RotatingPool {
                connection: sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
                pool,
                keeper,
                counts,
                target,
            })
        }
        .instrument(span)
        .await
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
        self.keeper.credential()
    }

    /// Password rotation figures.
    pub fn rotation_stats(&self) -> RotationStats {
        RotationStats {
            rotations: self.counts.rotations.load(Ordering::Relaxed),
            current_expiry: self.keeper.held().token.expires_at(),
            last_rotation: *lock(&self.counts.last_rotation),
            credential: self.keeper.credential().stats(),
        }
    }

    /// A connection from the pool: an idle one when there is one (also while the credential fails), else a
    /// new one. While no valid token exists, opening a new one fails at once with the credential's own error.
    pub async fn acquire(&self) -> Result<PoolConnection<sqlx::Postgres>, ConnectError> {
        match self.pool.acquire().await {
            Ok(conn) => Ok(conn),
            Err(error) => Err(match self.keeper.outage() {
                // Counted by the refusal endpoint, which refused the connection.
                Some(credential)
                    if sqlstate(&error).as_deref() == Some(refusal::REFUSAL_SQLSTATE) =>
                {
                    ConnectError::Credential(credential)
                }
                _ => {
                    let error = ConnectError::from_sqlx(error);
                    pool::count_failed_connection(&error);
                    error
                }
            }),
        }
    }

    /// Closes the pool, waiting for connections to be returned; the password rotation ends with it.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

impl Deref for RotatingPool {
    type Target = DatabaseConnection;

    /// The SeaORM connection ([`RotatingPool::connection`]).
    fn deref(&self) -> &DatabaseConnection {
        &self.connection
    }
}

impl AsRef<DatabaseConnection> for RotatingPool {
    fn as_ref(&self) -> &DatabaseConnection {
        &self.connection
    }
}

/// SeaORM's queries take `&db` as they take a `DatabaseConnection`; each call goes to the connection.
#[async_trait::async_trait]
impl sea_orm::ConnectionTrait for RotatingPool {
    fn get_database_backend(&self) -> sea_orm::DbBackend {
        self.connection.get_database_backend()
    }

    async fn execute_raw(
        &self,
        statement: sea_orm::Statement,
    ) -> Result<sea_orm::ExecResult, sea_orm::DbErr> {
        self.connection.execute_raw(statement).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, sea_orm::DbErr> {
        self.connection.execute_unprepared(sql).await
    }

    async fn query_one_raw(
        &self,
        statement: sea_orm::Statement,
    ) -> Result<Option<sea_orm::QueryResult>, sea_orm::DbErr> {
        self.connection.query_one_raw(statement).await
    }

    async fn query_all_raw(
        &self,
        statement: sea_orm::Statement,
    ) -> Result<Vec<sea_orm::QueryResult>, sea_orm::DbErr> {
        self.connection.query_all_raw(statement).await
    }

    fn support_returning(&self) -> bool {
        self.connection.support_returning()
    }
}
