//! The `credential` section of pgwi's configuration: which source, and each source's own keys.
//!
//! Every key is optional; unset keys fall back to the environment variables named on each field, which is
//! what AKS's workload-identity webhook injects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::SecretString;

/// The kinds `auto` tries when `credential.chain` is not set, in this order: a static password only where
/// one is configured, then a service principal from the environment, workload identity, managed identity,
/// and a developer's own login through `az` then `azd` (the order of the Azure SDKs'
/// `DefaultAzureCredential`). `github-actions` is tried only when named in `credential.chain`.
pub const DEFAULT_CHAIN: [&str; 7] = [
    "static-password",
    "client-secret",
    "client-certificate",
    "workload-identity",
    "managed-identity",
    "az-cli",
    "azure-developer-cli",
];

/// Entra ID scope for Azure Database for PostgreSQL in the public cloud. Sovereign clouds use other hosts.
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Configuration of the token source (`[<profile>.credential]` in `pgwi.toml`, `PGWI_CREDENTIAL__*`).
///
/// `Debug` shows the tables of registered sources by key only: their settings are the application's and may
/// hold secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CredentialConfig {
    /// `auto` (default), one of the built-in kinds (`static-password`, `client-secret`,
    /// `client-certificate`, `github-actions`, `workload-identity`, `managed-identity`, `az-cli`,
    /// `azure-developer-cli`), or a kind an application registered.
    pub kind: String,
    /// The kinds `auto` tries, in order. `None`: [`DEFAULT_CHAIN`] (kinds this build lacks left out).
    pub chain: Option<Vec<String>>,
    /// The Entra ID scope to request. Default [`POSTGRES_SCOPE`].
    pub scope: String,
    /// Refresh a token this many seconds before it expires. Default 300. A token that lives less than this
    /// is refreshed at half its lifetime instead.
    pub refresh_margin_secs: u64,
    /// The deadline of one token request, in seconds: a source that has not answered by then has failed.
    /// Default 30; must be at most half of `refresh_margin_secs`.
    pub fetch_timeout_secs: u64,
    /// Clock-skew allowance, in seconds: a token is treated as expired this long before its `exp`, and new
    /// connections are refused from then until a new token arrives. Default 10; must be below
    /// `refresh_margin_secs`.
    pub expiry_skew_secs: u64,
    /// Keys of the `workload-identity` source.
    pub workload_identity: WorkloadIdentityConfig,
    /// Keys of the `az-cli` source.
    pub az_cli: AzCliConfig,
    /// Keys of the `static-password` source.
    pub static_password: StaticPasswordConfig,
    /// Keys of the `managed-identity` source.
    pub managed_identity: ManagedIdentityConfig,
    /// Keys of the `client-secret` source.
    pub client_secret: ClientSecretConfig,
    /// Keys of the `client-certificate` source.
    pub client_certificate: ClientCertificateConfig,
    /// Keys of the `github-actions` source.
    pub github_actions: GithubActionsConfig,
    /// Keys of the `azure-developer-cli` source.
    pub azure_developer_cli: AzureDeveloperCliConfig,
    /// Tables of registered sources, by kind (with `-` written as `_`).
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        Self {
            kind: "auto".into(),
            chain: None,
            scope: POSTGRES_SCOPE.into(),
            refresh_margin_secs: 300,
            fetch_timeout_secs: 30,
            expiry_skew_secs: 10,
            workload_identity: WorkloadIdentityConfig::default(),
            az_cli: AzCliConfig::default(),
            static_password: StaticPasswordConfig::default(),
            managed_identity: ManagedIdentityConfig::default(),
            client_secret: ClientSecretConfig::default(),
            client_certificate: ClientCertificateConfig::default(),
            github_actions: GithubActionsConfig::default(),
            azure_developer_cli: AzureDeveloperCliConfig::default(),
            custom: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let custom: BTreeMap<&str, &str> = self
            .custom
            .keys()
            .map(|key| (key.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("CredentialConfig")
            .field("kind", &self.kind)
            .field("chain", &self.chain)
            .field("scope", &self.scope)
            .field("refresh_margin_secs", &self.refresh_margin_secs)
            .field("fetch_timeout_secs", &self.fetch_timeout_secs)
            .field("expiry_skew_secs", &self.expiry_skew_secs)
            .field("workload_identity", &self.workload_identity)
            .field("az_cli", &self.az_cli)
            .field("static_password", &self.static_password)
            .field("managed_identity", &self.managed_identity)
            .field("client_secret", &self.client_secret)
            .field("client_certificate", &self.client_certificate)
            .field("github_actions", &self.github_actions)
            .field("azure_developer_cli", &self.azure_developer_cli)
            .field("custom", &custom)
            .finish()
    }
}

impl CredentialConfig {
    /// The cache's options from `refresh_margin_secs` and `fetch_timeout_secs`.
    pub fn cache_options(&self) -> crate::CacheOptions {
        crate::CacheOptions {
            refresh_margin: std::time::Duration::from_secs(self.refresh_margin_secs),
            fetch_timeout: std::time::Duration::from_secs(self.fetch_timeout_secs),
            ..crate::CacheOptions::default()
        }
    }

    /// The deadline of `az` or `azd`: its configured `timeout_secs`, else two thirds of
    /// `fetch_timeout_secs` (at least a second). The tool must be killed before the whole request's
    /// deadline passes, or that deadline fires first and the tool's own error (and its kill) never comes.
    pub fn cli_timeout(&self, configured: Option<u64>) -> std::time::Duration {
        std::time::Duration::from_secs(
            configured.unwrap_or_else(|| (self.fetch_timeout_secs.saturating_mul(2) / 3).max(1)),
        )
    }

    /// What is wrong with a CLI's configured `timeout_secs` (named `key`): `(problem, fix)`, or `None`.
    pub fn cli_timeout_problem(
        &self,
        key: &str,
        configured: Option<u64>,
    ) -> Option<(String, String)> {
        let timeout = configured?;
        if timeout == 0 {
            return Some((
                "is 0".into(),
                format!(
                    "set {key} to the seconds the tool may take, below credential.fetch_timeout_secs, or \
                     leave it unset (two thirds of credential.fetch_timeout_secs)"
                ),
            ));
        }
        (timeout >= self.fetch_timeout_secs).then(|| {
            (
                format!(
                    "is {timeout}, but must be below credential.fetch_timeout_secs ({}), the deadline of the \
                     whole token request (auto's chain included): the tool would never be killed at its own \
                     deadline",
                    self.fetch_timeout_secs
                ),
                format!(
                    "lower {key} below credential.fetch_timeout_secs, raise credential.fetch_timeout_secs (and \
                     credential.refresh_margin_secs, at least twice it), or leave {key} unset (two thirds of \
                     credential.fetch_timeout_secs)"
                ),
            )
        })
    }

    /// Checks the timing keys against each other: `(key, problem, fix)` for the first that is wrong.
    pub fn timing_problem(&self) -> Option<(&'static str, String, String)> {
        const DAY: u64 = 24 * 3600;
        if self.refresh_margin_secs == 0 || self.refresh_margin_secs > DAY {
            return Some((
                "credential.refresh_margin_secs",
                format!("is {}", self.refresh_margin_secs),
                format!(
                    "use 1 to {DAY} seconds; 300 suits Entra tokens, which live 60 to 90 minutes"
                ),
            ));
        }
        if self.fetch_timeout_secs == 0
            || self.fetch_timeout_secs.saturating_mul(2) > self.refresh_margin_secs
        {
            return Some((
                "credential.fetch_timeout_secs",
                format!(
                    "is {}, but must be between 1 and half of credential.refresh_margin_secs ({})",
                    self.fetch_timeout_secs, self.refresh_margin_secs
                ),
                "lower fetch_timeout_secs (default 30) or raise refresh_margin_secs, so a hung request \
                 leaves time to retry before the token expires"
                    .into(),
            ));
        }
        for (key, configured) in [
            ("credential.az_cli.timeout_secs", self.az_cli.timeout_secs),
            (
                "credential.azure_developer_cli.timeout_secs",
                self.azure_developer_cli.timeout_secs,
            ),
        ] {
            if let Some((problem, fix)) = self.cli_timeout_problem(key, configured) {
                return Some((key, problem, fix));
            }
        }
        if self.expiry_skew_secs >= self.refresh_margin_secs {
            return Some((
                "credential.expiry_skew_secs",
                format!(
                    "is {}, but must be below credential.refresh_margin_secs ({})",
                    self.expiry_skew_secs, self.refresh_margin_secs
                ),
                "lower expiry_skew_secs (default 10) or raise refresh_margin_secs".into(),
            ));
        }
        None
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzCliConfig {
    /// Ask `az` for a token of this tenant (`--tenant`).
    pub tenant_id: Option<String>,
    /// Use this subscription (`--subscription`).
    pub subscription: Option<String>,
    /// Kill `az` when it has not answered after this many seconds; must be below `fetch_timeout_secs`.
    /// Unset: two thirds of `fetch_timeout_secs` (20 with the defaults), see
    /// [`CredentialConfig::cli_timeout`].
    pub timeout_secs: Option<u64>,
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

/// Keys of the `managed-identity` source. At most one of `client_id`, `object_id` and `resource_id`; none
/// means the system-assigned identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagedIdentityConfig {
    /// A user-assigned identity's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// A user-assigned identity's object (principal) id.
    pub object_id: Option<String>,
    /// A user-assigned identity's Azure resource id (not supported by App Service's endpoint).
    pub resource_id: Option<String>,
    /// The instance metadata service's base URL. Falls back to `AZURE_POD_IDENTITY_AUTHORITY_HOST`, then
    /// `http://169.254.169.254`.
    pub imds_endpoint: Option<String>,
}

/// Keys of the `client-secret` source. At most one of `secret_file` and `secret`; with neither, the secret
/// comes from the variable `secret_env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSecretConfig {
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The application's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// A file holding the client secret.
    pub secret_file: Option<PathBuf>,
    /// The variable holding the client secret. Default `AZURE_CLIENT_SECRET`.
    pub secret_env: String,
    /// The secret itself. Allowed, but logged as a warning: prefer a variable or a file.
    pub secret: Option<SecretString>,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl Default for ClientSecretConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            secret_file: None,
            secret_env: "AZURE_CLIENT_SECRET".into(),
            secret: None,
            authority_host: None,
        }
    }
}

/// Keys of the `client-certificate` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The application's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// A PEM file with the certificate (and its chain) and its unencrypted private key. Falls back to
    /// `AZURE_CLIENT_CERTIFICATE_PATH`.
    pub certificate_path: Option<PathBuf>,
    /// A file holding the certificate's password (encrypted keys and PFX files are refused with the command
    /// that converts them).
    pub password_file: Option<PathBuf>,
    /// The variable holding the certificate's password. Default `AZURE_CLIENT_CERTIFICATE_PASSWORD`.
    pub password_env: String,
    /// Send the certificate chain (`x5c`) for subject-name/issuer authentication. Falls back to
    /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`; default false.
    pub send_certificate_chain: Option<bool>,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl Default for ClientCertificateConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            certificate_path: None,
            password_file: None,
            password_env: "AZURE_CLIENT_CERTIFICATE_PASSWORD".into(),
            send_certificate_chain: None,
            authority_host: None,
        }
    }
}

/// Keys of the `github-actions` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubActionsConfig {
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The client id of the application or managed identity with the federated credential. Falls back to
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// The audience of the job's OIDC token. Default `api://AzureADTokenExchange`.
    pub audience: String,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl Default for GithubActionsConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            audience: "api://AzureADTokenExchange".into(),
            authority_host: None,
        }
    }
}

/// Keys of the `azure-developer-cli` source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureDeveloperCliConfig {
    /// Ask `azd` for a token of this tenant (`--tenant-id`).
    pub tenant_id: Option<String>,
    /// Kill `azd` when it has not answered after this many seconds; must be below `fetch_timeout_secs`.
    /// Unset: two thirds of `fetch_timeout_secs` (20 with the defaults), see
    /// [`CredentialConfig::cli_timeout`].
    pub timeout_secs: Option<u64>,
}
