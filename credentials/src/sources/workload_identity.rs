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

pub use super::common::PUBLIC_AUTHORITY_HOST;
use super::common::{self, EntraApp, EntraKeys, Resolved};
use crate::entra::federated_credential_hint;
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
    let (client_id, tenant_id) = (inputs.client_id(), inputs.tenant_id());
    let mut detail = format!(
        "client id {} (from {}), tenant {} (from {}), token file {} (from {}), authority {}",
        client_id.value,
        client_id.origin,
        tenant_id.value,
        tenant_id.origin,
        inputs.token_file.value.display(),
        inputs.token_file.origin,
        inputs.authority_host()
    );
    if let Some(claims) = &inputs.token_claims {
        let expired = claims
            .expires_at()
            .is_some_and(|e| e <= time::OffsetDateTime::now_utc());
        detail.push_str(&format!(
            "; {}{}",
            federated_credential_hint(&inputs.token_file.value),
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

/// The fix for a missing input named `key`: the webhook provides it in AKS, the key outside.
fn webhook_fix(key: &str) -> String {
    format!("{WEBHOOK_FIX}; outside AKS set {key}")
}

const CLIENT_ID_FIX: &str = "set AZURE_CLIENT_ID (the ServiceAccount's azure.workload.identity/client-id \
    annotation) or credential.workload_identity.client_id to the identity's client id (terraform output)";

/// Tokens for the managed identity that the pod's ServiceAccount is federated with.
pub struct WorkloadIdentitySource {
    credential: Arc<WorkloadIdentityCredential>,
    scope: String,
    app: EntraApp,
    token_file: PathBuf,
}

impl std::fmt::Debug for WorkloadIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentitySource")
            .field("app", &self.app)
            .field("token_file", &self.token_file)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The settings the source will use, resolved from configuration and the environment (no secret).
#[derive(Debug, Clone)]
pub struct WorkloadInputs {
    /// The identity's client id and tenant, and the authority host.
    app: EntraApp,
    /// The projected token file, and where its path came from.
    pub token_file: Resolved<PathBuf>,
    /// The projected token's claims (decoded, not verified).
    pub token_claims: Option<crate::Claims>,
}

impl WorkloadInputs {
    /// The identity's client id, and where it came from.
    pub fn client_id(&self) -> &Resolved {
        &self.app.client_id
    }

    /// The tenant id, and where it came from.
    pub fn tenant_id(&self) -> &Resolved {
        &self.app.tenant_id
    }

    /// Entra ID's base URL.
    pub fn authority_host(&self) -> &str {
        &self.app.authority_host
    }
}

/// Resolves and checks the source's inputs without contacting Entra ID: what `pgwi doctor` shows.
pub fn inspect(
    wi: &WorkloadIdentityConfig,
    ctx: &SourceContext,
) -> Result<WorkloadInputs, CredentialError> {
    let app = EntraApp::resolve(
        KIND,
        EntraKeys {
            table: "workload_identity",
            tenant_id: wi.tenant_id.as_ref(),
            client_id: wi.client_id.as_ref(),
            authority_host: wi.authority_host.as_ref(),
            client_id_fix: CLIENT_ID_FIX,
            missing_fix: Some(webhook_fix),
        },
        ctx,
    )?;
    let token_file = token_file(wi, ctx)?;
    check_token_file(&token_file.value)?;
    let token_claims = std::fs::read_to_string(&token_file.value)
        .ok()
        .and_then(|jwt| crate::Claims::decode_unverified(&jwt));
    Ok(WorkloadInputs {
        app,
        token_file,
        token_claims,
    })
}

/// The projected token's path: configured, else `AZURE_FEDERATED_TOKEN_FILE`.
fn token_file(
    wi: &WorkloadIdentityConfig,
    ctx: &SourceContext,
) -> Result<Resolved<PathBuf>, CredentialError> {
    let key = "credential.workload_identity.token_file";
    let configured = wi.token_file.as_ref().map(|p| p.display().to_string());
    common::required(
        KIND,
        configured.as_ref(),
        key,
        "AZURE_FEDERATED_TOKEN_FILE",
        "the projected service-account token",
        &webhook_fix(key),
        ctx,
    )
    .map(|path| path.map(PathBuf::from))
}

impl WorkloadIdentitySource {
    /// Resolves the settings (configuration first, then the environment) and checks the token file.
    pub fn new(
        wi: &WorkloadIdentityConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let WorkloadInputs {
            app, token_file, ..
        } = inspect(wi, ctx)?;
        let token_file = token_file.value;
        common::check_scope(KIND, &config.scope)?;
        let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: app.client_options(ctx),
            },
            client_id: Some(app.client_id.value.clone()),
            tenant_id: Some(app.tenant_id.value.clone()),
            token_file_path: Some(token_file.clone()),
        }))
        .map_err(|e| app.rejected(&e))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            app,
            token_file,
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
                self.app
                    .refusal(&e, federated_credential_hint(&self.token_file))
            })
    }

    fn info(&self) -> SourceInfo {
        self.app
            .info(&[("token_file", self.token_file.display().to_string())])
    }
}
