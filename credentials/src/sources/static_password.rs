//! `static-password`: a password from an environment variable (default `PGPASSWORD`), from a file re-read
//! for every new connection (Kubernetes Secret rotation), or inline in configuration (with a warning).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    CredentialConfig, CredentialError, Environment, ErrorKind, SecretString, SourceContext,
    SourceInfo, SourceKind, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "static-password";

/// Keys of the `static-password` source. At most one of `password_file` and `password` may be set; with
/// neither, the password comes from the variable `password_env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticPasswordConfig {
    /// The variable holding the password. Default `PGPASSWORD`.
    pub password_env: String,
    /// A file holding the password, re-read for every new connection (Kubernetes Secret rotation).
    pub password_file: Option<PathBuf>,
    /// The password itself. Allowed, but logged as a warning: prefer a variable or a file.
    pub password: Option<SecretString>,
}

impl Default for StaticPasswordConfig {
    fn default() -> Self {
        Self {
            password_env: "PGPASSWORD".into(),
            password_file: None,
            password: None,
        }
    }
}

/// The `static-password` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticPasswordKind;

impl SourceKind for StaticPasswordKind {
    const NAME: &'static str = KIND;
    // First: a password the operator configured is meant to be used.
    const CHAIN_POSITION: Option<u16> = Some(10);
    type Config = StaticPasswordConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.static_password.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(StaticPasswordSource::new(config, ctx)?))
    }

    fn presence(
        &self,
        sp: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        if sp.password_file.is_some() || sp.password.is_some() {
            Ok("a static password is configured".into())
        } else if ctx.env.get(&sp.password_env).is_some() {
            Ok(format!(
                "the static password's variable {} is set",
                sp.password_env
            ))
        } else {
            Err(format!(
                "{} is not set and credential.static_password has no password_file",
                sp.password_env
            ))
        }
    }

    fn inputs(
        &self,
        sp: &Self::Config,
        _credential: &CredentialConfig,
        _ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        Ok(match (&sp.password_file, &sp.password) {
            (Some(file), _) => format!("password file {}", file.display()),
            (None, Some(_)) => "inline password in configuration".to_owned(),
            (None, None) => format!("variable {}", sp.password_env),
        })
    }
}

#[derive(Debug)]
enum Origin {
    Variable(String),
    File(PathBuf),
    Inline(SecretString),
}

/// A password that does not expire.
#[derive(Debug)]
pub struct StaticPasswordSource {
    origin: Origin,
    env: Environment,
}

impl StaticPasswordSource {
    /// Chooses the password's origin: `password_file`, else inline `password`, else `password_env`.
    pub fn new(sp: &StaticPasswordConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let origin = match (&sp.password_file, &sp.password) {
            (Some(_), Some(_)) => {
                return Err(CredentialError::configuration(
                    KIND,
                    "both credential.static_password.password_file and credential.static_password.password are set",
                    "keep one: a file (preferred, e.g. a mounted Kubernetes Secret) or the inline password",
                ));
            }
            (Some(file), None) => Origin::File(file.clone()),
            (None, Some(password)) => {
                tracing::warn!(
                    "credential.static_password.password is set inline in configuration; prefer \
                     password_file or the {} variable",
                    sp.password_env
                );
                Origin::Inline(password.clone())
            }
            (None, None) if sp.password_env.trim().is_empty() => {
                return Err(CredentialError::configuration(
                    KIND,
                    "credential.static_password.password_env is empty",
                    "name the variable that holds the password (default PGPASSWORD), or set password_file",
                ));
            }
            (None, None) => Origin::Variable(sp.password_env.clone()),
        };
        Ok(Self {
            origin,
            env: ctx.env.clone(),
        })
    }
}

#[async_trait]
impl TokenSource for StaticPasswordSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        let password = match &self.origin {
            Origin::Inline(password) => password.clone(),
            Origin::Variable(var) => self.env.get(var).map(SecretString::new).ok_or_else(|| {
                CredentialError::new(
                    ErrorKind::MissingInput,
                    KIND,
                    format!(
                        "the variable {var} (credential.static_password.password_env) is not set"
                    ),
                    format!(
                        "export {var}=<password>, or set credential.static_password.password_file"
                    ),
                )
            })?,
            Origin::File(path) => {
                let contents = tokio::fs::read_to_string(path).await.map_err(|e| {
                    CredentialError::new(
                        ErrorKind::MissingInput,
                        KIND,
                        format!(
                            "cannot read the password file {} (credential.static_password.password_file): {e}",
                            path.display()
                        ),
                        "check the path and that this user may read it (for a Kubernetes Secret, its volume mount)",
                    )
                })?;
                SecretString::new(contents.trim_end_matches(['\r', '\n']))
            }
        };
        if password.is_blank() {
            return Err(CredentialError::new(
                ErrorKind::MissingInput,
                KIND,
                format!("the password from {} is empty", self.info().details[0].1),
                "put the database password there",
            ));
        }
        Ok(Token::new(password, None))
    }

    fn info(&self) -> SourceInfo {
        let info = SourceInfo::new(KIND);
        match &self.origin {
            Origin::Variable(var) => info.with("variable", var),
            Origin::File(path) => info.with("file", path.display().to_string()),
            Origin::Inline(_) => info.with("inline", "configuration"),
        }
    }
}
