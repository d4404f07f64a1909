//! `azure-developer-cli`: a developer's own identity through `azd`, via
//! `azure_identity::AzureDeveloperCliCredential`, with the same deadline, process-group kill and error
//! explanations as `az-cli` (`sources/cli.rs`); the registry's cache sits in front of both.

use std::sync::Arc;

use async_trait::async_trait;
use azure_identity::{AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions};

use azure_core::credentials::TokenCredential;

use super::cli::{self, CliSource, CliTool};
use crate::{CredentialConfig, CredentialError, SourceContext, SourceInfo, Token, TokenSource};

/// The kind's name in configuration.
pub const KIND: &str = "azure-developer-cli";

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
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let azd = &config.azure_developer_cli;
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
