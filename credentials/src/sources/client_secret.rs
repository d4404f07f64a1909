//! `client-secret`: a service principal (an Entra application) with a client secret, through
//! `azure_identity::ClientSecretCredential` — what CI pipelines without federation use.
//!
//! Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, as the SDKs' environment credential
//! does, unless configuration overrides them. The secret comes from a file, a variable, or (with a warning)
//! configuration itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};

use super::common::{self, EntraApp};
use crate::{
    CredentialConfig, CredentialError, SecretString, SourceContext, SourceInfo, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "client-secret";

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
pub fn secret_origin(config: &CredentialConfig, ctx: &SourceContext) -> Option<SecretOrigin> {
    let cs = &config.client_secret;
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
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let cs = &config.client_secret;
        let app = EntraApp::resolve(
            KIND,
            "client_secret",
            [
                cs.tenant_id.as_ref(),
                cs.client_id.as_ref(),
                cs.authority_host.as_ref(),
            ],
            CLIENT_ID_FIX,
            ctx,
        )?;
        let (secret, secret_origin) = match (&cs.secret_file, &cs.secret) {
            (Some(_), Some(_)) => {
                return Err(CredentialError::configuration(
                    KIND,
                    "both credential.client_secret.secret_file and credential.client_secret.secret are set",
                    "keep one: a file (preferred, e.g. a mounted secret) or a variable named by secret_env",
                ));
            }
            (Some(file), None) => (
                common::read_secret_file(KIND, file, "credential.client_secret.secret_file")?,
                SecretOrigin::File(file.clone()),
            ),
            (None, Some(secret)) => {
                if !WARNED_INLINE.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "credential.client_secret.secret is set inline in configuration; put the secret in a \
                         file (credential.client_secret.secret_file) or a variable (credential.client_secret.\
                         secret_env, default AZURE_CLIENT_SECRET) instead"
                    );
                }
                (secret.clone(), SecretOrigin::Inline)
            }
            (None, None) => {
                let var = cs.secret_env.trim();
                if var.is_empty() {
                    return Err(CredentialError::configuration(
                        KIND,
                        "credential.client_secret.secret_env is empty",
                        "name the variable that holds the secret (default AZURE_CLIENT_SECRET), or set \
                         secret_file",
                    ));
                }
                let secret = ctx.env.get(var).ok_or_else(|| {
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
                (
                    SecretString::new(secret),
                    SecretOrigin::Variable(var.to_owned()),
                )
            }
        };
        if secret.is_blank() {
            return Err(CredentialError::configuration(
                KIND,
                format!("the client secret from {secret_origin} is empty"),
                "put the client secret's value there",
            ));
        }
        common::check_scope(KIND, &config.scope)?;
        let credential = ClientSecretCredential::new(
            &app.tenant_id.0,
            app.client_id.0.clone(),
            secret.expose().to_owned().into(),
            Some(ClientSecretCredentialOptions {
                client_options: app.client_options(ctx),
            }),
        )
        .map_err(|e| app.rejected(&e))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            app,
            secret_origin,
        })
    }
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
