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

/// A setting's value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<T = String> {
    /// The value.
    pub value: T,
    /// `configuration`, or the variable it was read from.
    pub origin: Origin,
}

impl<T> Resolved<T> {
    /// The same origin with the value turned into another type (a path read as text, say).
    pub fn map<U>(self, into: impl FnOnce(T) -> U) -> Resolved<U> {
        Resolved {
            value: into(self.value),
            origin: self.origin,
        }
    }
}

/// The configured value, else the variable `var`; `None` when neither is set.
pub(crate) fn optional(
    configured: Option<&String>,
    var: Origin,
    ctx: &SourceContext,
) -> Option<Resolved> {
    let configured = configured
        .filter(|v| !v.trim().is_empty())
        .map(|v| Resolved {
            value: v.clone(),
            origin: "configuration",
        });
    configured.or_else(|| {
        ctx.env
            .get(var)
            .map(|value| Resolved { value, origin: var })
    })
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
        .map_or_else(|| PUBLIC_AUTHORITY_HOST.to_owned(), |host| host.value);
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

/// Where an Entra source's keys are, and how to tell the user to set them.
pub(crate) struct EntraKeys<'a> {
    /// The table under `credential` that holds the keys (`client_secret`).
    pub table: &'static str,
    pub tenant_id: Option<&'a String>,
    pub client_id: Option<&'a String>,
    pub authority_host: Option<&'a String>,
    /// How to set the client id: the fix when Entra does not know it (and, by default, when it is missing).
    pub client_id_fix: &'static str,
    /// The fix when the tenant or client id is missing, given the key that would hold it; `None`: say how
    /// to set each one.
    pub missing_fix: Option<fn(&str) -> String>,
}

/// The Entra application (or managed identity) a service-principal-like source authenticates as: tenant,
/// client id and authority host from `credential.<table>`, else `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
/// `AZURE_AUTHORITY_HOST`.
#[derive(Debug, Clone)]
pub(crate) struct EntraApp {
    pub kind: &'static str,
    pub tenant_id: Resolved,
    pub client_id: Resolved,
    pub authority_host: String,
    /// The `credential.<table>` its keys are in.
    table: &'static str,
    /// How to set the tenant id.
    tenant_fix: String,
    /// How to set the client id.
    client_id_fix: &'static str,
}

impl EntraApp {
    /// Resolves the application from its keys and the variables, tenant id first.
    pub(crate) fn resolve(
        kind: &'static str,
        keys: EntraKeys<'_>,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let table = keys.table;
        let tenant_fix = format!("set AZURE_TENANT_ID or credential.{table}.tenant_id");
        let key = |name: &str| format!("credential.{table}.{name}");
        let missing_fix = |name: &str, otherwise: String| match keys.missing_fix {
            Some(fix) => fix(&key(name)),
            None => otherwise,
        };
        let tenant_id = required(
            kind,
            keys.tenant_id,
            &key("tenant_id"),
            "AZURE_TENANT_ID",
            "the Entra tenant id",
            &missing_fix(
                "tenant_id",
                format!("{tenant_fix} (az account show --query tenantId)"),
            ),
            ctx,
        )?;
        let client_id = required(
            kind,
            keys.client_id,
            &key("client_id"),
            "AZURE_CLIENT_ID",
            "the client id",
            &missing_fix("client_id", keys.client_id_fix.to_owned()),
            ctx,
        )?;
        let authority_host =
            authority_host(kind, keys.authority_host, &key("authority_host"), ctx)?;
        Ok(Self {
            kind,
            tenant_id,
            client_id,
            authority_host,
            table,
            tenant_fix,
            client_id_fix: keys.client_id_fix,
        })
    }

    /// The SDK's options, pointed at the authority host.
    pub(crate) fn client_options(&self, ctx: &SourceContext) -> azure_core::http::ClientOptions {
        client_options(ctx, &self.authority_host)
    }

    /// The SDK's refusal to build a credential from these settings, as a configuration error naming where
    /// the tenant and client ids came from.
    pub(crate) fn rejected(&self, error: &azure_core::Error) -> CredentialError {
        let from = |origin: &str, key: &str| match origin {
            "configuration" => key.to_owned(),
            var => var.to_owned(),
        };
        CredentialError::configuration(
            self.kind,
            format!("the Azure SDK rejected the settings: {error}"),
            format!(
                "check the tenant id {:?} (from {}; letters, digits, '.' and '-' only) and the client id \
                 (from {}); {}",
                self.tenant_id.value,
                from(
                    self.tenant_id.origin,
                    &format!("credential.{}.tenant_id", self.table)
                ),
                from(
                    self.client_id.origin,
                    &format!("credential.{}.client_id", self.table)
                ),
                self.tenant_fix
            ),
        )
    }

    /// Entra's refusal of a token request, explained; `credential_hint` says what the source presented.
    pub(crate) fn refusal(
        &self,
        error: &azure_core::Error,
        credential_hint: String,
    ) -> CredentialError {
        crate::entra::entra_error(
            error,
            &crate::entra::EntraContext {
                source: self.kind,
                client_id: &self.client_id.value,
                tenant_id: &self.tenant_id.value,
                authority_host: &self.authority_host,
                client_id_fix: self.client_id_fix,
                tenant_fix: &self.tenant_fix,
                credential_hint,
            },
        )
    }

    /// The source's description: its kind, the client and tenant ids, then `details`, then the authority.
    pub(crate) fn info(&self, details: &[(&'static str, String)]) -> crate::SourceInfo {
        let mut info = crate::SourceInfo::new(self.kind)
            .with("client_id", &self.client_id.value)
            .with("tenant_id", &self.tenant_id.value);
        for (key, value) in details {
            info = info.with(key, value.clone());
        }
        info.with("authority_host", &self.authority_host)
    }
}
