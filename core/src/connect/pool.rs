//! Building the sqlx pool: the connection target, each connection's options (without a password: the
//! rotation adds it), and the first connection, retried while a server is starting.

use std::time::{Duration, Instant};

use pgwi_credentials::Token;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use sea_orm::sqlx::{self, ConnectOptions as _, PgPool, pool::PoolConnection};

use super::{AuthenticationFailure, ConnectError};
use crate::config::{DatabaseConfig, SslMode};
use crate::tls_rules::{TlsRules, Verification};

/// The resolved connection target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) database: String,
    pub(crate) user: String,
    /// `user = "auto"`: the user follows the claims of the token in use.
    pub(crate) user_from_token: bool,
}

/// Each connection's options; TLS per `tls`, the rules as sqlx can apply them ([`TlsRules::for_sqlx`]).
pub(crate) fn base_options(
    db: &DatabaseConfig,
    target: &Target,
    tls: &TlsRules,
) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&target.host)
        .port(target.port)
        .database(&target.database)
        .username(&target.user)
        .ssl_mode(sqlx_ssl_mode(tls));
    if let Verification::Full(Some(ca)) | Verification::ChainToFile(ca) = &tls.verification {
        options = options.ssl_root_cert(ca);
    }
    options = options
        .application_name(&db.application_name)
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
    if db.statement_timeout_secs > 0 {
        options = options.options([(
            "statement_timeout",
            format!("{}s", db.statement_timeout_secs),
        )]);
    }
    options
}

/// sqlx's mode for `tls`. sqlx's `VerifyCa` trusts Mozilla's roots besides the CA file and skips the name,
/// passing any public certificate: it is never used ([`TlsRules::for_sqlx`] has raised it to `verify-full`).
fn sqlx_ssl_mode(tls: &TlsRules) -> PgSslMode {
    match &tls.verification {
        Verification::Plaintext => PgSslMode::Disable,
        Verification::Unverified if tls.sslmode == SslMode::Prefer => PgSslMode::Prefer,
        Verification::Unverified => PgSslMode::Require,
        Verification::ChainToFile(_) | Verification::Full(_) => PgSslMode::VerifyFull,
    }
}

/// The token's audience as [`AuthenticationFailure`] words it.
pub(crate) fn audience(token: &Token) -> String {
    token.claims().and_then(|c| c.get("aud")).map_or_else(
        || "no token claims: a static password".into(),
        |aud| format!("the token's is {aud}"),
    )
}

pub(crate) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Opens the first connection, retrying transient failures with jittered backoff within the connect timeout.
pub(crate) async fn establish(
    pool: &PgPool,
    db: &DatabaseConfig,
    target: &Target,
    token: &Token,
    sslmode: SslMode,
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
                let message = error
                    .as_database_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                return Err(ConnectError::Authentication(Box::new(
                    AuthenticationFailure::new(
                        &target.host,
                        target.port,
                        &target.user,
                        &target.database,
                        code,
                        &message,
                        token,
                    ),
                )));
            }
            Some("57P03" | "53300") => {}
            Some(_) => return Err(ConnectError::from_sqlx(error)),
            None => match &error {
                sqlx::Error::Tls(detail) => {
                    return Err(ConnectError::Tls {
                        host: target.host.clone(),
                        port: target.port,
                        sslmode,
                        detail: detail.to_string(),
                    });
                }
                sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(ConnectError::Tls {
                        host: target.host.clone(),
                        port: target.port,
                        sslmode,
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

/// A hook run on each new physical connection (sqlx's `after_connect`).
pub(crate) type AfterConnect = std::sync::Arc<
    dyn for<'c> Fn(
            &'c mut sqlx::PgConnection,
            sqlx::pool::PoolConnectionMetadata,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>,
        > + Send
        + Sync,
>;

/// `options` with an `after_connect` that counts each new physical connection as opened, then runs the
/// application's own hook, if any.
pub(crate) fn counting_connections(
    options: sqlx::postgres::PgPoolOptions,
    hook: Option<AfterConnect>,
) -> sqlx::postgres::PgPoolOptions {
    options.after_connect(move |connection, metadata| {
        metrics::counter!(crate::metrics::POOL_CONNECTIONS_OPENED, "outcome" => "success")
            .increment(1);
        match &hook {
            Some(hook) => hook(connection, metadata),
            None => Box::pin(async { Ok(()) }),
        }
    })
}

/// Counts a connection the pool could not open, by the class of its failure.
pub(crate) fn count_failed_connection(error: &crate::ConnectError) {
    use crate::ConnectError;
    let outcome = match error {
        ConnectError::Authentication(_) | ConnectError::Server { .. } => "refused",
        ConnectError::Unreachable { .. } => "unreachable",
        ConnectError::Tls { .. } => "tls",
        ConnectError::Credential(_) => "no_token",
        _ => "other",
    };
    metrics::counter!(crate::metrics::POOL_CONNECTIONS_OPENED, "outcome" => outcome).increment(1);
}

/// How often the pool's shape is sampled into [`crate::metrics::POOL_CONNECTIONS`].
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples the pool's idle and used connections every few seconds, until it is closed (sqlx offers no
/// hook on checkout or return).
pub(crate) async fn sample_connections(pool: sqlx::PgPool) {
    while !pool.is_closed() {
        let (size, idle) = (pool.size(), pool.num_idle() as u32);
        metrics::gauge!(crate::metrics::POOL_CONNECTIONS, "state" => "idle").set(idle);
        metrics::gauge!(crate::metrics::POOL_CONNECTIONS, "state" => "used")
            .set(size.saturating_sub(idle));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}
