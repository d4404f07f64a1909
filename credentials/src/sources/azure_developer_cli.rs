//! `azure-developer-cli`: a developer's own identity through `azd`, via
//! `azure_identity::AzureDeveloperCliCredential`, with the same deadline, process-group kill and error
//! explanations as `az-cli` (`sources/cli.rs`); the registry's cache sits in front of both.

use std::sync::Arc;

use async_trait::async_trait;
use azure_identity::{AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions};

use azure_core::credentials::TokenCredential;
use serde::{Deserialize, Serialize};

use super::cli::{self, CliSource, CliTool};
use crate::{
    CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceKind, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "azure-developer-cli";

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

/// The `azure-developer-cli` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct AzureDeveloperCliKind;

impl SourceKind for AzureDeveloperCliKind {
    const NAME: &'static str = KIND;
    const CHAIN_POSITION: Option<u16> = Some(70);
    type Config = AzureDeveloperCliConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.azure_developer_cli.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(AzureDeveloperCliSource::new(
            config, credential, ctx,
        )?))
    }

    fn presence(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        locate(ctx)
            .map(|azd| format!("azd is installed ({})", azd.display()))
            .ok_or_else(|| "azd is not on PATH".into())
    }
}

pub(crate) const TOOL: CliTool = CliTool {
    kind: KIND,
    program: "azd",
    name: "the Azure Developer CLI",
    install_url: "https://aka.ms/azd-install",
    login: "azd auth login",
    tenant_flag: "--tenant-id",
    token_command: "azd auth token -o json --no-prompt",
    timeout_key: "credential.azure_developer_cli.timeout_secs",
    minimum_version: "1.0",
};

/// Where `azd` is on the `PATH` the source will use, if anywhere: what `pgwi doctor` shows.
pub fn locate(ctx: &SourceContext) -> Option<std::path::PathBuf> {
    cli::locate(TOOL, ctx)
}

/// The error for an `azd` that is not installed or not on `PATH`, with the fix.
pub fn azd_missing() -> CredentialError {
    cli::missing(TOOL)
}

/// Tokens for whoever is logged in to the Azure Developer CLI.
#[derive(Debug)]
pub struct AzureDeveloperCliSource {
    cli: CliSource,
}

impl AzureDeveloperCliSource {
    /// Builds the source; `azd` itself is first run when a token is asked for.
    pub fn new(
        azd: &AzureDeveloperCliConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let cli = CliSource::new(
            TOOL,
            config,
            ctx,
            azd.timeout_secs,
            azd.tenant_id.as_ref(),
            "credential.azure_developer_cli.tenant_id",
            |executor| {
                let credential: Arc<dyn TokenCredential> =
                    AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
                        executor: Some(executor),
                        tenant_id: azd.tenant_id.clone(),
                    }))?;
                Ok(credential)
            },
        )?;
        Ok(Self { cli })
    }
}

#[async_trait]
impl TokenSource for AzureDeveloperCliSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        self.cli.token().await
    }

    fn info(&self) -> SourceInfo {
        self.cli.info()
    }
}
