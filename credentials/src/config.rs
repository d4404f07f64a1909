//! The `credential` section of pgwi's configuration: which source, the keys every source shares, a typed
//! table per built-in kind (its struct is defined in the kind's own file under `sources/`) and the tables of
//! the kinds an application registers.
//!
//! Every key is optional; unset keys fall back to the environment variables named on each field, which is
//! what AKS's workload-identity webhook injects.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// Each built-in kind's module, for the type of its table; a build without any kind uses none.
#[allow(unused_imports)]
use crate::sources::*;
use crate::{CredentialError, kind::section_name};

/// Entra ID scope for Azure Database for PostgreSQL in the public cloud. Sovereign clouds use other hosts.
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Configuration of the token source (`[<profile>.credential]` in `pgwi.toml`, `PGWI_CREDENTIAL__*`).
///
/// `Debug` shows the tables of registered sources by key only: their settings are the application's and may
/// hold secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CredentialConfig {
    /// `auto` (default), a built-in kind (one per module of [`crate::sources`]), or a kind an application
    /// registered: [`crate::SourceRegistry::kinds`] lists them.
    pub kind: String,
    /// The kinds `auto` tries, in order. `None`: [`crate::SourceRegistry::default_chain`].
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
    #[cfg(feature = "workload-identity")]
    pub workload_identity: workload_identity::WorkloadIdentityConfig,
    /// Keys of the `az-cli` source.
    #[cfg(feature = "az-cli")]
    pub az_cli: az_cli::AzCliConfig,
    /// Keys of the `static-password` source.
    #[cfg(feature = "static-password")]
    pub static_password: static_password::StaticPasswordConfig,
    /// Keys of the `managed-identity` source.
    #[cfg(feature = "managed-identity")]
    pub managed_identity: managed_identity::ManagedIdentityConfig,
    /// Keys of the `client-secret` source.
    #[cfg(feature = "client-secret")]
    pub client_secret: client_secret::ClientSecretConfig,
    /// Keys of the `client-certificate` source.
    #[cfg(feature = "client-certificate")]
    pub client_certificate: client_certificate::ClientCertificateConfig,
    /// Keys of the `github-actions` source.
    #[cfg(feature = "github-actions")]
    pub github_actions: github_actions::GithubActionsConfig,
    /// Keys of the `azure-developer-cli` source.
    #[cfg(feature = "azure-developer-cli")]
    pub azure_developer_cli: azure_developer_cli::AzureDeveloperCliConfig,
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
            #[cfg(feature = "workload-identity")]
            workload_identity: Default::default(),
            #[cfg(feature = "az-cli")]
            az_cli: Default::default(),
            #[cfg(feature = "static-password")]
            static_password: Default::default(),
            #[cfg(feature = "managed-identity")]
            managed_identity: Default::default(),
            #[cfg(feature = "client-secret")]
            client_secret: Default::default(),
            #[cfg(feature = "client-certificate")]
            client_certificate: Default::default(),
            #[cfg(feature = "github-actions")]
            github_actions: Default::default(),
            #[cfg(feature = "azure-developer-cli")]
            azure_developer_cli: Default::default(),
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
        let mut debug = f.debug_struct("CredentialConfig");
        debug
            .field("kind", &self.kind)
            .field("chain", &self.chain)
            .field("scope", &self.scope)
            .field("refresh_margin_secs", &self.refresh_margin_secs)
            .field("fetch_timeout_secs", &self.fetch_timeout_secs)
            .field("expiry_skew_secs", &self.expiry_skew_secs);
        #[cfg(feature = "workload-identity")]
        debug.field("workload_identity", &self.workload_identity);
        #[cfg(feature = "az-cli")]
        debug.field("az_cli", &self.az_cli);
        #[cfg(feature = "static-password")]
        debug.field("static_password", &self.static_password);
        #[cfg(feature = "managed-identity")]
        debug.field("managed_identity", &self.managed_identity);
        #[cfg(feature = "client-secret")]
        debug.field("client_secret", &self.client_secret);
        #[cfg(feature = "client-certificate")]
        debug.field("client_certificate", &self.client_certificate);
        #[cfg(feature = "github-actions")]
        debug.field("github_actions", &self.github_actions);
        #[cfg(feature = "azure-developer-cli")]
        debug.field("azure_developer_cli", &self.azure_developer_cli);
        debug.field("custom", &custom).finish()
    }
}

impl CredentialConfig {
    /// The `credential.<kind>` table of a registered kind (with `-` in `kind` written as `_`), as it is.
    pub fn custom_section(&self, kind: &str) -> Option<&serde_json::Value> {
        self.custom.get(&section_name(kind))
    }

    /// The `credential.<kind>` table of a registered kind read as `T` (an absent table as an empty one):
    /// what [`crate::SourceKind::config`] does by default. A key `T` refuses (`deny_unknown_fields`), lacks
    /// or cannot read is a configuration error naming the table.
    pub fn section<T: DeserializeOwned>(&self, kind: &str) -> Result<T, CredentialError> {
        let table = section_name(kind);
        let value = self
            .custom_section(kind)
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
        serde_json::from_value(value).map_err(|e| {
            CredentialError::configuration(
                kind.to_owned(),
                format!("credential.{table} is not valid: {e}"),
                format!("fix credential.{table} (the keys the {kind} token source reads)"),
            )
        })
    }

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

    /// What is wrong with a CLI's configured `timeout_secs` (named `key`), or `None`.
    pub fn cli_timeout_problem(
        &self,
        key: &'static str,
        configured: Option<u64>,
    ) -> Option<TimingProblem> {
        let timeout = configured?;
        if timeout == 0 {
            return Some(TimingProblem::new(
                key,
                "is 0",
                format!(
                    "set {key} to the seconds the tool may take, below credential.fetch_timeout_secs, or \
                     leave it unset (two thirds of credential.fetch_timeout_secs)"
                ),
            ));
        }
        (timeout >= self.fetch_timeout_secs).then(|| {
            TimingProblem::new(
                key,
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

    /// Checks the timing keys against each other: the first that is wrong, or `None`.
    pub fn timing_issue(&self) -> Option<TimingProblem> {
        self.refresh_margin_problem()
            .or_else(|| self.fetch_timeout_problem())
            .or_else(|| self.cli_timeouts_problem())
            .or_else(|| self.expiry_skew_problem())
    }

    fn refresh_margin_problem(&self) -> Option<TimingProblem> {
        const DAY: u64 = 24 * 3600;
        (self.refresh_margin_secs == 0 || self.refresh_margin_secs > DAY).then(|| {
            TimingProblem::new(
                "credential.refresh_margin_secs",
                format!("is {}", self.refresh_margin_secs),
                format!(
                    "use 1 to {DAY} seconds; 300 suits Entra tokens, which live 60 to 90 minutes"
                ),
            )
        })
    }

    fn fetch_timeout_problem(&self) -> Option<TimingProblem> {
        (self.fetch_timeout_secs == 0
            || self.fetch_timeout_secs.saturating_mul(2) > self.refresh_margin_secs)
            .then(|| {
                TimingProblem::new(
                    "credential.fetch_timeout_secs",
                    format!(
                        "is {}, but must be between 1 and half of credential.refresh_margin_secs ({})",
                        self.fetch_timeout_secs, self.refresh_margin_secs
                    ),
                    "lower fetch_timeout_secs (default 30) or raise refresh_margin_secs, so a hung request \
                     leaves time to retry before the token expires",
                )
            })
    }

    /// The CLIs' own deadlines must end before the whole request's, or their kill never comes.
    fn cli_timeouts_problem(&self) -> Option<TimingProblem> {
        let cli_timeouts: Vec<(&'static str, Option<u64>)> = vec![
            #[cfg(feature = "az-cli")]
            (az_cli::TOOL.timeout_key, self.az_cli.timeout_secs),
            #[cfg(feature = "azure-developer-cli")]
            (
                azure_developer_cli::TOOL.timeout_key,
                self.azure_developer_cli.timeout_secs,
            ),
        ];
        cli_timeouts
            .into_iter()
            .find_map(|(key, configured)| self.cli_timeout_problem(key, configured))
    }

    fn expiry_skew_problem(&self) -> Option<TimingProblem> {
        (self.expiry_skew_secs >= self.refresh_margin_secs).then(|| {
            TimingProblem::new(
                "credential.expiry_skew_secs",
                format!(
                    "is {}, but must be below credential.refresh_margin_secs ({})",
                    self.expiry_skew_secs, self.refresh_margin_secs
                ),
                "lower expiry_skew_secs (default 10) or raise refresh_margin_secs",
            )
        })
    }
}

/// A timing key whose value does not fit the others: what [`CredentialConfig::timing_issue`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingProblem {
    /// The key to change, e.g. `credential.fetch_timeout_secs`.
    pub key: &'static str,
    /// What is wrong with its value, to follow the key ("is 0").
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl TimingProblem {
    fn new(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
