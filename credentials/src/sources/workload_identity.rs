//! `workload-identity`: AKS workload identity through `azure_identity::WorkloadIdentityCredential`.
//!
//! Reads what the AKS webhook injects — `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST` — unless configuration overrides each one.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use azure_identity::{
    ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use serde::{Deserialize, Serialize};

use super::common;
pub use super::common::PUBLIC_AUTHORITY_HOST;
use crate::entra::{EntraContext, entra_error, federated_credential_hint};
use crate::{
    CredentialConfig, CredentialError, ErrorKind, SourceContext, SourceInfo, SourceKind, Token,
    TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "workload-identity";

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

/// The `workload-identity` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadIdentityKind;

impl SourceKind for WorkloadIdentityKind {
    const NAME: &'static str = KIND;
    const CHAIN_POSITION: Option<u16> = Some(40);
    type Config = WorkloadIdentityConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.workload_identity.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(WorkloadIdentitySource::new(
            config, credential, ctx,
        )?))
    }

    fn presence(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        if config.token_file.is_some() {
            Ok("credential.workload_identity.token_file is configured".into())
        } else if ctx.env.get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            Ok("AZURE_FEDERATED_TOKEN_FILE is set (AKS workload identity webhook)".into())
        } else {
            Err(
                "AZURE_FEDERATED_TOKEN_FILE is not set (not an AKS pod with workload identity)"
                    .into(),
            )
        }
    }

    /// Where each input came from, and the federated credential the projected token must match.
    fn inputs(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        Ok(describe(&inspect(config, ctx)?))
    }
}

/// What `pgwi doctor` shows of the inputs: each with where it came from, and what the projected token
/// says (the federated credential it must match; whether the kubelet let it expire).
fn describe(inputs: &WorkloadInputs) -> String {
    let mut detail = format!(
        "client id {} (from {}), tenant {} (from {}), token file {} (from {}), authority {}",
        inputs.client_id.0,
        inputs.client_id.1,
        inputs.tenant_id.0,
        inputs.tenant_id.1,
        inputs.token_file.0.display(),
        inputs.token_file.1,
        inputs.authority_host
    );
    if let Some(claims) = &inputs.token_claims {
        let expired = claims
            .expires_at()
            .is_some_and(|e| e <= time::OffsetDateTime::now_utc());
        detail.push_str(&format!(
            "; {}{}",
            federated_credential_hint(&inputs.token_file.0),
            if expired {
                "; the projected token has EXPIRED (the kubelet refreshes it: is the pod's clock right?)"
            } else {
                ""
            },
        ));
    }
    detail
}

const WEBHOOK_FIX: &str = "in AKS the workload-identity webhook injects it: label the pod \
    azure.workload.identity/use: \"true\", annotate its ServiceAccount with \
    azure.workload.identity/client-id: <the identity's client id>, and set the pod's serviceAccountName to \
    that ServiceAccount";

/// Tokens for the managed identity that the pod's ServiceAccount is federated with.
pub struct WorkloadIdentitySource {
    credential: Arc<WorkloadIdentityCredential>,
    scope: String,
    client_id: String,
    tenant_id: String,
    token_file: PathBuf,
    authority_host: String,
}

impl std::fmt::Debug for WorkloadIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentitySource")
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("token_file", &self.token_file)
            .field("authority_host", &self.authority_host)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The settings the source will use, resolved from configuration and the environment (no secret).
#[derive(Debug, Clone)]
pub struct WorkloadInputs {
    /// The identity's client id, and where it came from.
    pub client_id: (String, &'static str),
    /// The tenant id, and where it came from.
    pub tenant_id: (String, &'static str),
    /// The projected token file, and where its path came from.
    pub token_file: (PathBuf, &'static str),
    /// Entra ID's base URL.
    pub authority_host: String,
    /// The projected token's claims (decoded, not verified).
    pub token_claims: Option<crate::Claims>,
}

/// Resolves and checks the source's inputs without contacting Entra ID: what `pgwi doctor` shows.
pub fn inspect(
    wi: &WorkloadIdentityConfig,
    ctx: &SourceContext,
) -> Result<WorkloadInputs, CredentialError> {
    let setting = |configured: Option<&String>, var: &'static str, key: &str, what: &str| {
        let key = format!("credential.workload_identity.{key}");
        let fix = format!("{WEBHOOK_FIX}; outside AKS set {key}");
        common::required(KIND, configured, &key, var, what, &fix, ctx)
    };
    let client_id = setting(
        wi.client_id.as_ref(),
        "AZURE_CLIENT_ID",
        "client_id",
        "the identity's client id",
    )?;
    let tenant_id = setting(
        wi.tenant_id.as_ref(),
        "AZURE_TENANT_ID",
        "tenant_id",
        "the Entra tenant id",
    )?;
    let (token_file, from) = setting(
        wi.token_file
            .as_ref()
            .map(|p| p.display().to_string())
            .as_ref(),
        "AZURE_FEDERATED_TOKEN_FILE",
        "token_file",
        "the projected service-account token",
    )?;
    let token_file = PathBuf::from(token_file);
    check_token_file(&token_file)?;
    let authority_host = common::authority_host(
        KIND,
        wi.authority_host.as_ref(),
        "credential.workload_identity.authority_host",
        ctx,
    )?;
    let token_claims = std::fs::read_to_string(&token_file)
        .ok()
        .and_then(|jwt| crate::Claims::decode_unverified(&jwt));
    Ok(WorkloadInputs {
        client_id,
        tenant_id,
        token_file: (token_file, from),
        authority_host,
        token_claims,
    })
}

impl WorkloadIdentitySource {
    /// Resolves the settings (configuration first, then the environment) and checks the token file.
    pub fn new(
        wi: &WorkloadIdentityConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let inputs = inspect(wi, ctx)?;
        let (client_id, tenant_id, token_file, authority_host) = (
            inputs.client_id.0,
            inputs.tenant_id.0,
            inputs.token_file.0,
            inputs.authority_host,
        );
        common::check_scope(KIND, &config.scope)?;
        let client_options = common::client_options(ctx, &authority_host);
        let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options,
            },
            client_id: Some(client_id.clone()),
            tenant_id: Some(tenant_id.clone()),
            token_file_path: Some(token_file.clone()),
        }))
        .map_err(|e| {
            CredentialError::configuration(
                KIND,
                format!("the Azure SDK rejected the settings: {e}"),
                "check AZURE_TENANT_ID (letters, digits, '.' and '-' only), AZURE_CLIENT_ID and the token file",
            )
        })?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            client_id,
            tenant_id,
            token_file,
            authority_host,
        })
    }
}

fn check_token_file(path: &std::path::Path) -> Result<(), CredentialError> {
    let problem = match std::fs::read_to_string(path) {
        Ok(contents) if !contents.trim().is_empty() => return Ok(()),
        Ok(_) => format!("the service-account token file {} is empty", path.display()),
        Err(e) => format!(
            "cannot read the service-account token file {}: {e}",
            path.display()
        ),
    };
    Err(CredentialError::new(
        ErrorKind::MissingInput,
        KIND,
        problem,
        format!(
            "the kubelet projects this file when the pod runs with workload identity; {WEBHOOK_FIX}. Outside \
             AKS point AZURE_FEDERATED_TOKEN_FILE or credential.workload_identity.token_file at a valid token"
        ),
    ))
}

#[async_trait]
impl TokenSource for WorkloadIdentitySource {
    async fn token(&self) -> Result<Token, CredentialError> {
        common::sdk_token(self.credential.as_ref(), KIND, &self.scope)
            .await
            .map_err(|e| {
                entra_error(
                    &e,
                    &EntraContext {
                        source: KIND,
                        client_id: &self.client_id,
                        tenant_id: &self.tenant_id,
                        authority_host: &self.authority_host,
                        client_id_fix: "set AZURE_CLIENT_ID (the ServiceAccount's \
                            azure.workload.identity/client-id annotation) or \
                            credential.workload_identity.client_id to the identity's client id (terraform output)",
                        tenant_fix: "set AZURE_TENANT_ID or credential.workload_identity.tenant_id",
                        credential_hint: federated_credential_hint(&self.token_file),
                    },
                )
            })
    }

    fn info(&self) -> SourceInfo {
        SourceInfo::new(KIND)
            .with("client_id", &self.client_id)
            .with("tenant_id", &self.tenant_id)
            .with("token_file", self.token_file.display().to_string())
            .with("authority_host", &self.authority_host)
    }
}
