//! Turning the Azure SDK's errors into [`CredentialError`]s that say what to fix, with Entra ID's well-known
//! `AADSTS` codes explained.

use std::path::Path;

use azure_core::error::ErrorKind as SdkErrorKind;

use crate::{Claims, CredentialError, ErrorKind};

/// Audience a federated credential for AKS workload identity must have.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// What Entra said, dug out of an SDK error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntraFailure {
    /// HTTP status of the token endpoint's answer, if there was one.
    pub status: Option<u16>,
    /// The `AADSTS` codes, comma-separated (e.g. `70021`).
    pub codes: Option<String>,
    /// Entra's `error_description`, or the SDK's message.
    pub description: String,
}

impl EntraFailure {
    /// Walks the error and its sources for an HTTP answer from the token endpoint.
    pub fn from_sdk(error: &azure_core::Error) -> Self {
        let mut failure = Self {
            description: error.to_string(),
            ..Self::default()
        };
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = current {
            if let Some(sdk) = e.downcast_ref::<azure_core::Error>()
                && let SdkErrorKind::HttpResponse {
                    status, error_code, ..
                } = sdk.kind()
            {
                failure.status = Some(u16::from(*status));
                failure.codes = error_code.clone();
                failure.description = sdk.to_string();
                break;
            }
            current = e.source();
        }
        failure
    }

    fn has_code(&self, code: &str) -> bool {
        self.codes
            .as_deref()
            .is_some_and(|codes| codes.split(',').any(|c| c.trim() == code))
    }
}

/// What a source knows when Entra refuses it, to explain the refusal.
pub(crate) struct EntraContext<'a> {
    /// The source's kind.
    pub source: &'static str,
    pub client_id: &'a str,
    pub tenant_id: &'a str,
    pub authority_host: &'a str,
    /// How to set the client id, for AADSTS700016 ("set AZURE_CLIENT_ID or ...").
    pub client_id_fix: &'a str,
    /// How to set the tenant id, for AADSTS90002.
    pub tenant_fix: &'a str,
    /// What the source presented and how to make Entra accept it: the federated credential a token
    /// needs, where the secret came from, the certificate's thumbprint.
    pub credential_hint: String,
}

/// The fix for a federated-credential mismatch: the projected token's claims, and the federated credential
/// they require.
pub fn federated_credential_hint(token_file: &Path) -> String {
    let claims = std::fs::read_to_string(token_file)
        .ok()
        .and_then(|jwt| Claims::decode_unverified(&jwt));
    match claims {
        Some(claims) => {
            let claim = |name: &str| claims.get(name).unwrap_or_else(|| "<missing>".into());
            format!(
                "the projected token (from {}) has iss={}, sub={}, aud={}; the managed identity needs a \
                 federated credential with exactly issuer={} subject={} audience={TOKEN_EXCHANGE_AUDIENCE} \
                 (matching is case-sensitive: the issuer is the cluster's OIDC issuer URL, the subject is \
                 system:serviceaccount:<namespace>:<serviceaccount>)",
                token_file.display(),
                claim("iss"),
                claim("sub"),
                claim("aud"),
                claim("iss"),
                claim("sub"),
            )
        }
        None => format!(
            "create a federated credential on the managed identity with issuer = the cluster's OIDC issuer \
             URL, subject = system:serviceaccount:<namespace>:<serviceaccount>, audience = \
             {TOKEN_EXCHANGE_AUDIENCE} (the token in {} could not be decoded to show its claims)",
            token_file.display()
        ),
    }
}

/// Entra's refusal of a token request as an error with the fix.
pub(crate) fn entra_error(error: &azure_core::Error, ctx: &EntraContext<'_>) -> CredentialError {
    let failure = EntraFailure::from_sdk(error);
    let (kind, fix) = match known_code_fix(&failure, ctx) {
        Some(fix) => (ErrorKind::Entra, fix),
        None => fix_without_known_code(&failure, ctx),
    };
    let error = CredentialError::new(kind, ctx.source, refusal_problem(&failure), fix);
    match failure.codes {
        Some(code) => error.with_code(code),
        None => error,
    }
}

/// What Entra's refusal says: its status and codes, when there were any, and its description.
fn refusal_problem(failure: &EntraFailure) -> String {
    match (&failure.status, &failure.codes) {
        (Some(status), Some(code)) => format!(
            "Entra ID refused the token request (HTTP {status}, AADSTS{code}): {}",
            failure.description
        ),
        (Some(status), None) => format!("Entra ID answered HTTP {status}: {}", failure.description),
        _ => format!("no token from Entra ID: {}", failure.description),
    }
}

/// The fix for an `AADSTS` code with a known cause, if the refusal has one.
fn known_code_fix(failure: &EntraFailure, ctx: &EntraContext<'_>) -> Option<String> {
    let (client_id, hint) = (ctx.client_id, &ctx.credential_hint);
    let federated = ["70021", "700211", "700212", "700213"];
    let fix = if federated.iter().any(|code| failure.has_code(code)) {
        hint.clone()
    } else if failure.has_code("7000222") {
        format!(
            "the client secret of application {client_id} has expired: create a new one (az ad app credential \
             reset --id {client_id} --append, or the portal's Certificates & secrets) and replace the old one; \
             {hint}"
        )
    } else if failure.has_code("7000215") {
        format!(
            "the client secret is not one of application {client_id}'s secrets: use the secret's Value (shown \
             once when it is created), not its Secret ID; {hint}"
        )
    } else if failure.has_code("700027") {
        format!(
            "the client assertion was not signed by a certificate registered on application {client_id}: \
             upload the certificate's public part to the application (az ad app credential reset --id \
             {client_id} --cert @cert.pem --append); {hint}"
        )
    } else if failure.has_code("700024") {
        format!(
            "the client assertion is not within its valid time range: this host's clock is probably off \
             (Entra compares the assertion's nbf and exp with its own time): sync the clock (NTP, \
             timedatectl / chronyc tracking) and retry; {hint}"
        )
    } else if failure.has_code("700016") {
        format!(
            "client id {client_id} is not an application or managed identity in tenant {}: {}, and check the \
             tenant",
            ctx.tenant_id, ctx.client_id_fix
        )
    } else if failure.has_code("90002") {
        format!(
            "tenant {} was not found at {}: {} to your directory's tenant id (az account show --query \
             tenantId), and check the authority host for your cloud",
            ctx.tenant_id, ctx.authority_host, ctx.tenant_fix
        )
    } else {
        return None;
    };
    Some(fix)
}

/// The error's kind and fix when no known code explains it: throttling, an unknown code, an HTTP error
/// without one, or no answer at all.
fn fix_without_known_code(failure: &EntraFailure, ctx: &EntraContext<'_>) -> (ErrorKind, String) {
    if failure.status == Some(429) {
        return (
            ErrorKind::Throttled,
            "Entra ID is throttling token requests; pgwi retries with backoff. Share one token source per \
             process (its cache makes one request per token lifetime) and avoid restarting in a loop"
                .to_owned(),
        );
    }
    if let Some(codes) = &failure.codes {
        return (
            ErrorKind::Entra,
            format!(
                "look up AADSTS{codes} in Microsoft's Entra ID error reference; check the client id ({}), \
                 the tenant ({}) and the credential; {}",
                ctx.client_id, ctx.tenant_id, ctx.credential_hint
            ),
        );
    }
    let fix = if failure.status.is_some() {
        format!(
            "the token endpoint at {} answered with an error; check that the authority host is Entra ID \
             for your cloud and retry",
            ctx.authority_host
        )
    } else {
        format!(
            "could not get a token from {}: check the network path to Entra ID (egress, proxy, DNS) and \
             that the authority host is right",
            ctx.authority_host
        )
    };
    (ErrorKind::Upstream, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> EntraContext<'static> {
        EntraContext {
            source: "client-certificate",
            client_id: "11111111-2222-3333-4444-555555555555",
            tenant_id: "tenant",
            authority_host: "https://login.microsoftonline.com/",
            client_id_fix: "set AZURE_CLIENT_ID",
            tenant_fix: "set AZURE_TENANT_ID",
            credential_hint: "the certificate has thumbprint ABC".into(),
        }
    }

    #[test]
    fn an_assertion_outside_its_time_range_says_to_check_the_clock() {
        // Scenario: Entra answers AADSTS700024 (the assertion's nbf/exp do not cover Entra's time): the fix
        // points at this host's clock, and the code is kept.
        let error = azure_core::Error::with_message(
            SdkErrorKind::HttpResponse {
                status: azure_core::http::StatusCode::BadRequest,
                error_code: Some("700024".into()),
                raw_response: None,
            },
            "AADSTS700024: Client assertion is not within its valid time range.",
        );

        let explained = entra_error(&error, &context());

        assert_eq!(explained.code(), Some("700024"));
        assert_eq!(explained.kind(), ErrorKind::Entra);
        assert!(explained.fix().contains("clock"), "{explained}");
    }
}
