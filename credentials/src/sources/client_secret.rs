//! `client-secret`: a service principal (an Entra application) with a client secret, through
//! `azure_identity::ClientSecretCredential` — what CI pipelines without federation use.
//!
//! Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, as the SDKs' environment credential
//! does, unless configuration overrides them. The secret comes from a file, a variable, or (with a warning)
//! configuration itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::path::PathBuf;

use async_trait::async_trait;
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use serde::{Deserialize, Serialize};

use super::common::{self, EntraApp, EntraKeys};
use crate::{
    CredentialConfig, CredentialError, SecretString, SourceContext, SourceInfo, SourceKind, Token,
    TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "client-secret";

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

/// Where the secret came from (never the secret itself).
#[derive(Debug, Clone)]
pub enum SecretOrigin {
    /// A file (`credential.client_secret.secret_file`).
    File(std::path::PathBuf),
    /// A variable (`credential.client_secret.secret_env`, default `AZURE_CLIENT_SECRET`).
    Variable(String),
    /// Configuration itself (`credential.client_secret.secret`).
    Inline,
}

impl std::fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Variable(var) => write!(f, "variable {var}"),
            Self::Inline => f.write_str("credential.client_secret.secret"),
        }
    }
}

/// Where the secret would come from, when one is there: what `auto` checks before trying this source.
pub fn secret_origin(cs: &ClientSecretConfig, ctx: &SourceContext) -> Option<SecretOrigin> {
    if let Some(file) = &cs.secret_file {
        return Some(SecretOrigin::File(file.clone()));
    }
    if cs.secret.is_some() {
        return Some(SecretOrigin::Inline);
    }
    ctx.env
        .get(&cs.secret_env)
        .map(|_| SecretOrigin::Variable(cs.secret_env.clone()))
}

/// The `client-secret` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSecretKind;

impl SourceKind for ClientSecretKind {
    const NAME: &'static str = KIND;
    // A service principal in the environment comes before the platform's identities, as in the SDKs.
    const CHAIN_POSITION: Option<u16> = Some(20);
    type Config = ClientSecretConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.client_secret.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(ClientSecretSource::new(config, credential, ctx)?))
    }

    fn presence(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        match secret_origin(config, ctx) {
            Some(origin) => Ok(format!(
                "a service principal's client secret is in {origin}"
            )),
            None => Err(format!(
                "{} is not set and credential.client_secret has no secret_file",
                config.secret_env
            )),
        }
    }
}

const CLIENT_ID_FIX: &str = "set AZURE_CLIENT_ID or credential.client_secret.client_id to the application's \
     client id (az ad app list --display-name <name> --query [].appId)";

/// The same warning is not repeated for every source built in one process.
static WARNED_INLINE: AtomicBool = AtomicBool::new(false);

/// Tokens for a service principal that proves itself with a client secret.
pub struct ClientSecretSource {
    credential: Arc<ClientSecretCredential>,
    scope: String,
    app: EntraApp,
    secret_origin: SecretOrigin,
}

impl std::fmt::Debug for ClientSecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecretSource")
            .field("app", &self.app)
            .field("secret_origin", &self.secret_origin)
            .finish_non_exhaustive()
    }
}

impl ClientSecretSource {
    /// Resolves the settings (configuration first, then the environment) and reads the secret.
    pub fn new(
        cs: &ClientSecretConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let app = EntraApp::resolve(
            KIND,
            EntraKeys {
                table: "client_secret",
                tenant_id: cs.tenant_id.as_ref(),
                client_id: cs.client_id.as_ref(),
                authority_host: cs.authority_host.as_ref(),
                client_id_fix: CLIENT_ID_FIX,
                missing_fix: None,
            },
            ctx,
        )?;
        let secret = read_secret(cs, ctx)?;
        common::check_scope(KIND, &config.scope)?;
        let credential = ClientSecretCredential::new(
            &app.tenant_id.value,
            app.client_id.value.clone(),
            secret.value.expose().to_owned().into(),
            Some(ClientSecretCredentialOptions {
                client_options: app.client_options(ctx),
            }),
        )
        .map_err(|e| app.rejected(&e))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            app,
            secret_origin: secret.origin,
        })
    }
}

/// The client secret and where it came from.
struct ClientSecret {
    value: SecretString,
    origin: SecretOrigin,
}

/// Reads the secret from the one place configured: a file, configuration itself (with a warning), or the
/// variable `secret_env`; refuses both a file and an inline secret, and an empty secret.
fn read_secret(
    cs: &ClientSecretConfig,
    ctx: &SourceContext,
) -> Result<ClientSecret, CredentialError> {
    let secret = match (&cs.secret_file, &cs.secret) {
        (Some(_), Some(_)) => {
            return Err(CredentialError::configuration(
                KIND,
                "both credential.client_secret.secret_file and credential.client_secret.secret are set",
                "keep one: a file (preferred, e.g. a mounted secret) or a variable named by secret_env",
            ));
        }
        (Some(file), None) => ClientSecret {
            value: common::read_secret_file(KIND, file, "credential.client_secret.secret_file")?,
            origin: SecretOrigin::File(file.clone()),
        },
        (None, Some(secret)) => {
            warn_inline_once();
            ClientSecret {
                value: secret.clone(),
                origin: SecretOrigin::Inline,
            }
        }
        (None, None) => secret_from_variable(&cs.secret_env, ctx)?,
    };
    if secret.value.is_blank() {
        return Err(CredentialError::configuration(
            KIND,
            format!("the client secret from {} is empty", secret.origin),
            "put the client secret's value there",
        ));
    }
    Ok(secret)
}

/// A secret in configuration is allowed, but said once per process: it belongs in a file or a variable.
fn warn_inline_once() {
    if !WARNED_INLINE.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "credential.client_secret.secret is set inline in configuration; put the secret in a \
             file (credential.client_secret.secret_file) or a variable (credential.client_secret.\
             secret_env, default AZURE_CLIENT_SECRET) instead"
        );
    }
}

/// The secret from the variable named by `credential.client_secret.secret_env`.
fn secret_from_variable(
    secret_env: &str,
    ctx: &SourceContext,
) -> Result<ClientSecret, CredentialError> {
    let var = secret_env.trim();
    if var.is_empty() {
        return Err(CredentialError::configuration(
            KIND,
            "credential.client_secret.secret_env is empty",
            "name the variable that holds the secret (default AZURE_CLIENT_SECRET), or set secret_file",
        ));
    }
    let value = ctx.env.get(var).ok_or_else(|| {
        CredentialError::configuration(
            KIND,
            format!(
                "the variable {var} (credential.client_secret.secret_env) is not set and \
                 credential.client_secret.secret_file is not configured"
            ),
            format!(
                "export {var}=<the client secret's value>, or point \
                 credential.client_secret.secret_file at a file holding it"
            ),
        )
    })?;
    Ok(ClientSecret {
        value: SecretString::new(value),
        origin: SecretOrigin::Variable(var.to_owned()),
    })
}

#[async_trait]
impl TokenSource for ClientSecretSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        common::sdk_token(self.credential.as_ref(), KIND, &self.scope)
            .await
            .map_err(|e| {
                self.app
                    .refusal(&e, format!("the secret came from {}", self.secret_origin))
            })
    }

    fn info(&self) -> SourceInfo {
        self.app.info(&[("secret", self.secret_origin.to_string())])
    }
}
