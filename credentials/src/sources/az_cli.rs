//! `az-cli`: a developer's own identity, through `azure_identity::AzureCliCredential`.
//!
//! The SDK runs `az account get-access-token` with no timeout; we run it through an executor that kills the
//! whole process group when `timeout_secs` expires, and turn the usual failures into fixes (`sources/cli.rs`,
//! shared with `azure-developer-cli`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_identity::{AzureCliCredential, AzureCliCredentialOptions};

use super::cli::{self, CliTool};
use crate::{CredentialConfig, CredentialError, SourceContext, SourceInfo, Token, TokenSource};

/// The kind's name in configuration.
pub const KIND: &str = "az-cli";

pub(crate) const TOOL: CliTool = CliTool {
    kind: KIND,
    program: "az",
    name: "the Azure CLI",
    install_url: "https://learn.microsoft.com/cli/azure/install-azure-cli",
    login: "az login",
    tenant_flag: "--tenant",
    token_command: "az account get-access-token",
    timeout_key: "credential.az_cli.timeout_secs",
    minimum_version: "2.54",
};

/// The error for an `az` that is not installed or not on `PATH`, with the fix.
pub fn az_missing() -> CredentialError {
    cli::missing(TOOL)
}

/// Where `az` is on the `PATH` the source will use, if anywhere: what `pgwi doctor` shows.
pub fn locate(ctx: &SourceContext) -> Option<std::path::PathBuf> {
    cli::locate(TOOL, ctx)
}

/// Tokens for whoever is logged in to the Azure CLI.
pub struct AzCliSource {
    credential: Arc<AzureCliCredential>,
    scope: String,
    tenant_id: Option<String>,
    subscription: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AzCliSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzCliSource")
            .field("tenant_id", &self.tenant_id)
            .field("subscription", &self.subscription)
            .field("timeout", &self.timeout)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl AzCliSource {
    /// Builds the source; `az` itself is first run when a token is asked for.
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let az = &config.az_cli;
        let timeout = cli::check_timeout(TOOL, az.timeout_secs)?;
        let credential = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            subscription: az.subscription.clone(),
            tenant_id: az.tenant_id.clone(),
            executor: Some(cli::executor(TOOL, timeout, ctx)),
        }))
        .map_err(cli::rejected(
            TOOL,
            "credential.az_cli.tenant_id and credential.az_cli.subscription",
        ))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            tenant_id: az.tenant_id.clone(),
            subscription: az.subscription.clone(),
            timeout,
        })
    }
}

#[async_trait]
impl TokenSource for AzCliSource {
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
        if let Some(subscription) = &self.subscription {
            info = info.with("subscription", subscription);
        }
        info
    }
}
