//! Test support for pgwi: a real PostgreSQL (TLS on, password authentication, never `trust`) shared by one test
//! binary with a fresh database per test, and local stand-ins for the services pgwi talks to.
//!
//! The server judges Entra-style tokens as Azure does for roles in [`TOKEN_GROUP`] (any unexpired token for the
//! role, signed with [`TestPostgres::token_signing_key`]); the Entra stand-in issues such tokens when given that
//! key ([`entra::EntraOptions::for_server`]).
//!
//! The PostgreSQL backend is chosen by `PGWI_TEST_POSTGRES` (`auto`, `container`, `native`, `external`); see
//! [`postgres`] and the README's "Testing" section.

pub mod az;
pub mod cargo;
pub mod certificate;
pub mod entra;
pub mod fixtures;
pub mod http;
pub mod jwt;
pub mod logs;
pub mod managed_identity;
pub mod postgres;
pub mod secrets;
pub mod tls;

pub use postgres::{
    Backend, CLEARTEXT_GROUP, PasswordAuth, TOKEN_GROUP, TestDatabase, TestPostgres, TestRole,
    TokenCheck,
};
pub use tls::{TestCertificates, TlsStandIn};

/// Everything that can go wrong while setting up a test resource. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TestSupportError {
    /// `PGWI_TEST_POSTGRES` (or a related variable) holds a value we do not understand.
    #[error("{0}")]
    Config(String),
    /// No PostgreSQL backend could be started.
    #[error("{0}")]
    NoPostgres(String),
    /// The server cannot judge tokens, so token roles cannot log in; says why and how to fix it.
    #[error("this test PostgreSQL cannot check tokens: {0}")]
    NoTokenChecks(String),
    /// Generating the test certificates failed.
    #[error("could not generate test TLS certificates: {0}")]
    Tls(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A SQL statement run by the test bench failed.
    #[error("{context}: {source}")]
    Sql {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: sea_orm::sqlx::Error,
    },
}

impl TestSupportError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(sea_orm::sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Sql { context, source }
    }
}

/// Turns on tracing output for this test binary when `TEST_LOG` is set (its value, or `RUST_LOG`, is the
/// filter; `TEST_LOG=1` means `debug`). Safe to call from every test: only the first call installs anything.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(level) = std::env::var("TEST_LOG") else {
            return;
        };
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| match level.as_str() {
            "" | "1" | "true" => "debug".to_owned(),
            other => other.to_owned(),
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// Locks `mutex`, going on with its data when a panicking test thread poisoned it: the stand-ins' records
/// stay readable for the test that reports the failure.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes one line straight to the process's stderr, past the test harness's output capture, so that CI logs
/// show which backend served the tests even when every test passes.
pub(crate) fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "pgwi-testsupport: {line}");
}

/// A random string of `len` letters and digits, for test passwords and unique names.
pub fn random_alphanumeric(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}
