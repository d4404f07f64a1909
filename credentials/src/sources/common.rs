//! What the sources that talk to Entra ID share: a setting taken from configuration or else from its
//! variable, the authority host, the SDK's client options, a secret read from a file, and asking an SDK
//! credential for a token.

use std::path::Path;
use std::sync::Arc;

use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::TokenCredential;
use tracing::Instrument as _;

use crate::{CredentialError, ErrorKind, SecretString, SourceContext, Token};

/// Entra ID of the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";

/// Where a setting's value came from: `configuration`, or the variable's name.
pub type Origin = &'static str;

/// A setting and where it came from.
pub type Resolved = (String, Origin);

/// The configured value, else the variable `var`; `None` when neither is set.
pub(crate) fn optional(
    configured: Option<&String>,
    var: Origin,
    ctx: &SourceContext,
) -> Option<Resolved> {
    configured
        .filter(|v| !v.trim().is_empty())
        .map(|v| (v.clone(), "configuration"))
        .or_else(|| ctx.env.get(var).map(|v| (v, var)))
}

/// The configured value, else the variable `var`, else a configuration error naming both and `fix`.
pub(crate) fn required(
    kind: &'static str,
    configured: Option<&String>,
    key: &str,
    var: Origin,
    what: &str,
    fix: &str,
    ctx: &SourceContext,
) -> Result<Resolved, CredentialError> {
    optional(configured, var, ctx).ok_or_else(|| {
        CredentialError::configuration(
            kind,
            format!("{var} is not set and {key} is not configured ({what})"),
            fix.to_owned(),
        )
    })
}

/// Entra ID's base URL: the configured one, else `AZURE_AUTHORITY_HOST`, else the public cloud's; always
/// `https://` (the SDK refuses anything else).
pub(crate) fn authority_host(
    kind: &'static str,
    configured: Option<&String>,
    key: &str,
    ctx: &SourceContext,
) -> Result<String, CredentialError> {
    let host = optional(configured, "AZURE_AUTHORITY_HOST", ctx)
        .map_or_else(|| PUBLIC_AUTHORITY_HOST.to_owned(), |(host, _)| host);
    if !host.starts_with("https://") {
        return Err(CredentialError::configuration(
            kind,
            format!(
                "authority host {host:?} (AZURE_AUTHORITY_HOST or {key}) is not an https:// URL"
            ),
            format!("use Entra ID's https URL for your cloud, e.g. {PUBLIC_AUTHORITY_HOST}"),
        ));
    }
    Ok(host)
}

/// The SDK's client options from the context, pointed at `authority_host`.
pub(crate) fn client_options(
    ctx: &SourceContext,
    authority_host: &str,
) -> azure_core::http::ClientOptions {
    crate::install_crypto_provider();
    let mut options = ctx.azure_client_options.clone().unwrap_or_default();
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.to_owned();
    options.cloud = Some(Arc::new(cloud.into()));
    options
}

/// Refuses an empty `credential.scope`.
pub(crate) fn check_scope(kind: &'static str, scope: &str) -> Result<(), CredentialError> {
    if scope.trim().is_empty() {
        return Err(CredentialError::configuration(
            kind,
            "credential.scope is empty",
            format!(
                "set it to {} or your cloud's equivalent",
                crate::POSTGRES_SCOPE
            ),
        ));
    }
    Ok(())
}

/// Reads a secret from `path` (named by `key`), without its trailing line break; refuses an empty one.
pub(crate) fn read_secret_file(
    kind: &'static str,
    path: &Path,
    key: &str,
) -> Result<SecretString, CredentialError> {
    let contents = std::fs::read_to_string(path).map_err(|e| {
        CredentialError::new(
            ErrorKind::MissingInput,
            kind,
            format!("cannot read {} ({key}): {e}", path.display()),
            "check the path and that this user may read it (for a Kubernetes Secret, its volume mount)",
        )
    })?;
    let secret = SecretString::new(contents.trim_end_matches(['\r', '\n']));
    if secret.is_blank() {
        return Err(CredentialError::new(
            ErrorKind::MissingInput,
            kind,
            format!("{} ({key}) is empty", path.display()),
            "put the secret in that file",
        ));
    }
    Ok(secret)
}

/// Asks an SDK credential for a token of `scope`, in a span naming the source.
pub(crate) async fn sdk_token(
    credential: &dyn TokenCredential,
    kind: &'static str,
    scope: &str,
) -> Result<Token, azure_core::Error> {
    let span = tracing::debug_span!("token_request", source = kind);
    let access = credential
        .get_token(&[scope], None)
        .instrument(span)
        .await?;
    Ok(Token::new(
        access.token.secret().to_owned(),
        Some(access.expires_on),
    ))
}
