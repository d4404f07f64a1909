//! Token sources that yield PostgreSQL passwords: Microsoft Entra ID access tokens from AKS workload
//! identity, a managed identity, a service principal (client secret or certificate), a GitHub Actions job,
//! the Azure CLI or the Azure Developer CLI, or a static password — selected by name from configuration,
//! or by `auto`'s ordered chain.
//!
//! - [`TokenSource`]: the trait; [`Token`]: a secret plus an optional expiry.
//! - [`SourceKind`]: one kind of source — its name, keys, build, presence and what `pgwi doctor` shows; a
//!   kind is one file (the built-in ones in [`sources`]) and one [`SourceRegistry::register`] line.
//! - [`SourceRegistry`]: maps `credential.kind` to a kind; applications may register their own.
//! - [`ChainSource`]: `credential.kind = "auto"`, the kinds of `credential.chain` tried in order.
//! - [`validity`]: when a token may still be presented (expiry less skew), shared by the pool and the proxy.
//! - [`CachedTokenSource`]: single-flight cache with refresh ahead of expiry and last-good-token fallback.
//! - Each built-in source lives in [`sources`], behind a default-on cargo feature.
//!
//! This is the only pgwi crate that reads Azure's environment variables or talks to Entra ID, `az` and `azd`.
//!
//! # Example
//!
//! ```
//! use pgwi_credentials::{CredentialConfig, Environment, SourceContext, SourceRegistry, TokenSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), pgwi_credentials::CredentialError> {
//! let mut config = CredentialConfig::default();
//! config.kind = "static-password".into();
//! // Read variables from a fixed set here; `Environment::process()` (the default) reads the real ones.
//! let ctx = SourceContext {
//!     env: Environment::from_pairs([("PGPASSWORD", "local-dev-password")]),
//!     ..SourceContext::default()
//! };
//! let source = SourceRegistry::default().build_cached(&config, &ctx)?;
//! let token = source.token().await?;
//! assert_eq!(token.secret().expose(), "local-dev-password");
//! assert!(token.expires_at().is_none());
//! assert!(!format!("{token:?}").contains("local-dev-password"));
//! # Ok(())
//! # }
//! ```

// A build with only some kinds compiled in leaves some shared helpers unused; the default build (every kind,
// the `all-kinds` feature) is checked for dead code as usual.
#![cfg_attr(not(feature = "all-kinds"), allow(dead_code))]

mod cache;
mod chain;
mod config;
#[cfg(feature = "azure-sdk")]
pub mod entra;
mod environment;
mod error;
mod kind;
pub mod metrics;
mod registry;
mod secret;
mod source;
pub mod sources;
mod token;
pub mod validity;

pub use cache::{CacheOptions, CacheStats, CachedTokenSource, refresh_time};
pub use chain::{ChainOutcome, ChainSource, ChainStep, present_steps};
pub use config::{CredentialConfig, POSTGRES_SCOPE, TimingProblem};
pub use environment::Environment;
pub use error::{CredentialError, ErrorKind, redact_tokens};
pub use kind::SourceKind;
pub use registry::{AUTO, SourceContext, SourceRegistry};
pub use secret::{REDACTED, SecretString};
pub use source::{SourceInfo, TokenSource};
pub use token::{Claims, Token};

// Each kind's keys are defined next to its source; re-exported here, where they always were.
#[cfg(feature = "az-cli")]
pub use sources::az_cli::AzCliConfig;
#[cfg(feature = "azure-developer-cli")]
pub use sources::azure_developer_cli::AzureDeveloperCliConfig;
#[cfg(feature = "client-certificate")]
pub use sources::client_certificate::ClientCertificateConfig;
#[cfg(feature = "client-secret")]
pub use sources::client_secret::ClientSecretConfig;
#[cfg(feature = "github-actions")]
pub use sources::github_actions::GithubActionsConfig;
#[cfg(feature = "managed-identity")]
pub use sources::managed_identity::ManagedIdentityConfig;
#[cfg(feature = "static-password")]
pub use sources::static_password::StaticPasswordConfig;
#[cfg(feature = "workload-identity")]
pub use sources::workload_identity::WorkloadIdentityConfig;

/// Installs `ring` as the process's TLS crypto provider unless one is installed already. The Azure SDK's
/// HTTP client is built without a provider of its own so that the process has one (sqlx uses `ring` too).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
