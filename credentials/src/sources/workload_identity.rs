//! `workload-identity`: AKS workload identity through `azure_identity::WorkloadIdentityCredential`.
//!
//! Reads what the AKS webhook injects — `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST` — unless configuration overrides each one.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::TokenCredential as _;
use azure_identity::{
    ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use tracing::Instrument as _;

use crate::entra::{WorkloadContext, workload_identity_error};
use crate::{
    CredentialConfig, CredentialError, ErrorKind, SourceContext, SourceInfo, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "workload-identity";
/// Entra ID of the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";

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
    config: &CredentialConfig,
    ctx: &SourceContext,
) -> Result<WorkloadInputs, CredentialError> {
    let wi = &config.workload_identity;
    let setting = |configured: &Option<String>, var: &'static str, key: &str, what: &str| {
        if let Some(value) = configured {
            return Ok((value.clone(), "configuration"));
        }
        ctx.env.get(var).map(|v| (v, var)).ok_or_else(|| {
            CredentialError::configuration(
                KIND,
                format!("{var} is not set and credential.workload_identity.{key} is not configured ({what})"),
                format!("{WEBHOOK_FIX}; outside AKS set credential.workload_identity.{key}"),
            )
        })
    };
    let client_id = setting(
        &wi.client_id,
        "AZURE_CLIENT_ID",
        "client_id",
        "the identity's client id",
    )?;
    let tenant_id = setting(
        &wi.tenant_id,
        "AZURE_TENANT_ID",
        "tenant_id",
        "the Entra tenant id",
    )?;
    let (token_file, from) = setting(
        &wi.token_file.as_ref().map(|p| p.display().to_string()),
        "AZURE_FEDERATED_TOKEN_FILE",
        "token_file",
        "the projected service-account token",
    )?;
    let token_file = PathBuf::from(token_file);
    check_token_file(&token_file)?;
    let authority_host = wi
        .authority_host
        .clone()
        .or_else(|| ctx.env.get("AZURE_AUTHORITY_HOST"))
        .unwrap_or_else(|| PUBLIC_AUTHORITY_HOST.to_owned());
    if !authority_host.starts_with("https://") {
        return Err(CredentialError::configuration(
            KIND,
            format!(
                "authority host {authority_host:?} (AZURE_AUTHORITY_HOST or credential.workload_identity.authority_host) is not an https:// URL"
            ),
            format!("use Entra ID's https URL for your cloud, e.g. {PUBLIC_AUTHORITY_HOST}"),
        ));
    }
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
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let inputs = inspect(config, ctx)?;
        let (client_id, tenant_id, token_file, authority_host) = (
            inputs.client_id.0,
            inputs.tenant_id.0,
            inputs.token_file.0,
            inputs.authority_host,
        );
        if config.scope.trim().is_empty() {
            return Err(CredentialError::configuration(
                KIND,
                "credential.scope is empty",
                format!(
                    "set it to {} or your cloud's equivalent",
                    crate::POSTGRES_SCOPE
                ),
            ));
        }

        crate::install_crypto_provider();
        let mut client_options = ctx.azure_client_options.clone().unwrap_or_default();
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = authority_host.clone();
        client_options.cloud = Some(Arc::new(cloud.into()));
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
        let span =
            tracing::debug_span!("token_request", source = KIND, client_id = %self.client_id);
        match self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .instrument(span)
            .await
        {
            Ok(access) => Ok(Token::new(
                access.token.secret().to_owned(),
                Some(access.expires_on),
            )),
            Err(e) => Err(workload_identity_error(
                &e,
                &WorkloadContext {
                    client_id: &self.client_id,
                    tenant_id: &self.tenant_id,
                    token_file: &self.token_file,
                    authority_host: &self.authority_host,
                },
            )),
        }
    }

    fn info(&self) -> SourceInfo {
        SourceInfo::new(KIND)
            .with("client_id", &self.client_id)
            .with("tenant_id", &self.tenant_id)
            .with("token_file", self.token_file.display().to_string())
            .with("authority_host", &self.authority_host)
    }
}
