//! pgwi-core: configuration profiles, and a SeaORM connection whose pool always authenticates new connections
//! with a fresh token.
//!
//! # Example
//!
//! A local PostgreSQL with a static password; the same code runs with workload identity in AKS by changing
//! `credential.kind` (or by nothing at all: `auto` picks it when the webhook's variables are present).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pgwi_core::config::{self, ConfigSources};
//! use sea_orm::ConnectionTrait as _;
//!
//! // defaults < pgwi.toml profile < PGWI_* variables; checked here
//! let config = config::load(&ConfigSources::default())?.config;
//! // The first token, the first connection, and the password rotation for as long as the pool lives.
//! let db = pgwi_core::connect(&config).await?;
//! // Used as SeaORM's DatabaseConnection (it derefs to one and implements ConnectionTrait).
//! db.execute_unprepared("SELECT 1").await?;
//! db.close().await;
//! # Ok(()) }
//! ```
//!
//! [`connect_with`] and [`proxy::Proxy::start`] take a token source of the caller's (any
//! `Arc<dyn TokenSource>`); [`Connector`] adds sqlx pool and per-connection options. Errors name
//! configuration keys (`database.host`), not the `pgwi` binary's flags or commands.

pub mod config;
mod connect;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
mod protocol;
pub mod proxy;
pub mod tls_rules;

pub use config::{Config, ConfigError, LoadedConfig};
pub use connect::{
    AuthenticationFailure, ConnectError, Connector, RotatingPool, RotationStats, connect,
    connect_with, fix_for_sqlstate,
};
