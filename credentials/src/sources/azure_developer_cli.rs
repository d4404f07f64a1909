//! `azure-developer-cli`: a developer's own identity through `azd`, via
//! `azure_identity::AzureDeveloperCliCredential`, with the same deadline, process-group kill and error
//! explanations as `az-cli` (`sources/cli.rs`); the registry's cache sits in front of both.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_identity::{AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions};

use super::cli::{self, CliTool};
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
pub struct AzureDeveloperCliSource {
    credential: Arc<AzureDeveloperCliCredential>,
    scope: String,
    tenant_id: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AzureDeveloperCliSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureDeveloperCliSource")
            .field("tenant_id", &self.tenant_id)
            .field("timeout", &self.timeout)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl AzureDeveloperCliSource {
    /// Builds the source; `azd` itself is first run when a token is asked for.
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let azd = &config.azure_developer_cli;
        let timeout = cli::check_timeout(TOOL, azd.timeout_secs)?;
        let credential =
            AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
                executor: Some(cli::executor(TOOL, timeout, ctx)),
                tenant_id: azd.tenant_id.clone(),
            }))
            .map_err(cli::rejected(
                TOOL,
                "credential.azure_developer_cli.tenant_id",
            ))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            tenant_id: azd.tenant_id.clone(),
            timeout,
        })
    }
}

#[async_trait]
impl TokenSource for AzureDeveloperCliSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        cli::token(
            TOOL,
            self.credential.as_ref(),
            &self.scope,
            self.timeout,
            self.tenant_id.as_deref(),
        )
        .await
    }

    fn info(&self) -> SourceInfo {
        let mut info = SourceInfo::new(KIND);
        if let Some(tenant) = &self.tenant_id {
            info = info.with("tenant_id", tenant);
        }
        info
    }
}
