//! The `credential` section of pgwi's configuration: which source, and each source's own keys.
//!
//! Every key is optional; unset keys fall back to the environment variables named on each field, which is
//! what AKS's workload-identity webhook injects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::SecretString;

/// Entra ID scope for Azure Database for PostgreSQL in the public cloud. Sovereign clouds use other hosts.
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Configuration of the token source (`[<profile>.credential]` in `pgwi.toml`, `PGWI_CREDENTIAL__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CredentialConfig {
    /// `auto` (default), `workload-identity`, `az-cli`, `static-password`, or a kind an application
    /// registered.
    pub kind: String,
    /// The Entra ID scope to request. Default [`POSTGRES_SCOPE`].
    pub scope: String,
    /// Refresh a token this many seconds before it expires. Default 300.
    pub refresh_margin_secs: u64,
    /// Keys of the `workload-identity` source.
    pub workload_identity: WorkloadIdentityConfig,
    /// Keys of the `az-cli` source.
    pub az_cli: AzCliConfig,
    /// Keys of the `static-password` source.
    pub static_password: StaticPasswordConfig,
    /// Tables of registered sources, by kind (with `-` written as `_`).
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        Self {
            kind: "auto".into(),
            scope: POSTGRES_SCOPE.into(),
            refresh_margin_secs: 300,
            workload_identity: WorkloadIdentityConfig::default(),
            az_cli: AzCliConfig::default(),
            static_password: StaticPasswordConfig::default(),
            custom: BTreeMap::new(),
        }
    }
}

/// Keys of the `workload-identity` source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadIdentityConfig {
    /// The managed identity's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The projected service-account token. Falls back to `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

/// Keys of the `az-cli` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzCliConfig {
    /// Ask `az` for a token of this tenant (`--tenant`).
    pub tenant_id: Option<String>,
    /// Use this subscription (`--subscription`).
    pub subscription: Option<String>,
    /// Kill `az` when it has not answered after this many seconds. Default 30.
    pub timeout_secs: u64,
}

impl Default for AzCliConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            subscription: None,
            timeout_secs: 30,
        }
    }
}

/// Keys of the `static-password` source. At most one of `password_file` and `password` may be set; with
/// neither, the password comes from the variable `password_env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticPasswordConfig {
    /// The variable holding the password. Default `PGPASSWORD`.
    pub password_env: String,
    /// A file holding the password, re-read for every new connection (Kubernetes Secret rotation).
    pub password_file: Option<PathBuf>,
    /// The password itself. Allowed, but logged as a warning: prefer a variable or a file.
    pub password: Option<SecretString>,
}

impl Default for StaticPasswordConfig {
    fn default() -> Self {
        Self {
            password_env: "PGPASSWORD".into(),
            password_file: None,
            password: None,
        }
    }
}
