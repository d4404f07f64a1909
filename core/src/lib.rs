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
//! // defaults < pgwi.toml profile < PGWI_* variables
//! let loaded = config::load(&ConfigSources::default())?;
//! // Keep only the SeaORM connection: the password rotation lives as long as the pool under it.
//! let connection = pgwi_core::connect(&loaded.config).await?.connection().clone();
//! connection.execute_unprepared("SELECT 1").await?;
//! connection.close().await?;
//! # Ok(()) }
//! ```

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
