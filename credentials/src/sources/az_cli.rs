//! `az-cli`: a developer's own identity, through `azure_identity::AzureCliCredential`.
//!
//! The SDK runs `az account get-access-token` with no timeout; we run it through an executor that kills the
//! whole process group when `timeout_secs` expires, and turn the usual failures into fixes (`sources/cli.rs`,
//! shared with `azure-developer-cli`).

use std::sync::Arc;

use async_trait::async_trait;
use azure_identity::{AzureCliCredential, AzureCliCredentialOptions};

use azure_core::credentials::TokenCredential;
use serde::{Deserialize, Serialize};

use super::cli::{self, CliSource, CliTool};
use crate::{
    CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceKind, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "az-cli";

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

/// The `az-cli` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct AzCliKind;

impl SourceKind for AzCliKind {
    const NAME: &'static str = KIND;
    // A developer's own login comes last, az before azd, as in the SDKs.
    const CHAIN_POSITION: Option<u16> = Some(60);
    type Config = AzCliConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.az_cli.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(AzCliSource::new(config, credential, ctx)?))
    }

    fn presence(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        locate(ctx)
            .map(|az| format!("az is installed ({})", az.display()))
            .ok_or_else(|| "az is not on PATH".into())
    }

    /// Where `az` is, without running it (building the source would not say more).
    fn inputs(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        match locate(ctx) {
            Some(az) => Ok(format!("az found at {}", az.display())),
            None => Err(az_missing()),
        }
    }
}

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
#[derive(Debug)]
pub struct AzCliSource {
    cli: CliSource,
    subscription: Option<String>,
}

impl AzCliSource {
    /// Builds the source; `az` itself is first run when a token is asked for.
    pub fn new(
        az: &AzCliConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let cli = CliSource::new(
            TOOL,
            config,
            ctx,
            az.timeout_secs,
            az.tenant_id.as_ref(),
            "credential.az_cli.tenant_id and credential.az_cli.subscription",
            |executor| {
                let credential: Arc<dyn TokenCredential> =
                    AzureCliCredential::new(Some(AzureCliCredentialOptions {
                        subscription: az.subscription.clone(),
                        tenant_id: az.tenant_id.clone(),
                        executor: Some(executor),
                    }))?;
                Ok(credential)
            },
        )?;
        Ok(Self {
            cli,
            subscription: az.subscription.clone(),
        })
    }
}

#[async_trait]
impl TokenSource for AzCliSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        self.cli.token().await
    }

    fn info(&self) -> SourceInfo {
        let info = self.cli.info();
        match &self.subscription {
            Some(subscription) => info.with("subscription", subscription),
            None => info,
        }
    }
}
