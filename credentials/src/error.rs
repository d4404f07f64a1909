//! The one error type of this crate: what went wrong, where it came from, and how to fix it.

use std::fmt;

/// What kind of failure a [`CredentialError`] is, for callers that react differently (exit status, retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is wrong or incomplete (a missing variable, an unknown kind, a bad value).
    Configuration,
    /// An input the source reads at run time is missing or unusable (token file, password file).
    MissingInput,
    /// The `az` (or `azd`) executable is not installed or not on `PATH`.
    AzCliMissing,
    /// `az` (or `azd`) is installed but not logged in.
    AzCliNotLoggedIn,
    /// `az` (or `azd`) did not answer in time and was killed.
    AzCliTimeout,
    /// The source cannot work here at all: no managed identity endpoint answers, no identity is assigned,
    /// the variables a CI system provides are absent. `auto` moves on to the next source.
    Unavailable,
    /// Entra ID refused the request with an `AADSTS` code.
    Entra,
    /// Entra ID is throttling requests (HTTP 429).
    Throttled,
    /// The source did not answer within the fetch deadline (`credential.fetch_timeout_secs`).
    Timeout,
    /// The source panicked: a bug in the source, retried like any failure.
    Panicked,
    /// Any other failure to obtain a token (network, malformed answer, `az` failing otherwise).
    Upstream,
}

/// A failure to produce a password, with the fix. Never contains a token, password or service-account token.
#[derive(Debug, Clone, thiserror::Error)]
pub struct CredentialError {
    kind: ErrorKind,
    source_name: String,
    problem: String,
    fix: String,
    code: Option<String>,
}

impl CredentialError {
    /// A new error for `source_name` (e.g. `workload-identity`).
    pub fn new(
        kind: ErrorKind,
        source_name: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            source_name: source_name.into(),
            problem: redact_tokens(&problem.into()),
            fix: redact_tokens(&fix.into()),
            code: None,
        }
    }

    /// A configuration error (exit status 2 in the `pgwi` binary).
    pub fn configuration(
        source_name: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(ErrorKind::Configuration, source_name, problem, fix)
    }

    pub(crate) fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when fixing the configuration (not retrying) is what helps.
    pub fn is_configuration(&self) -> bool {
        self.kind == ErrorKind::Configuration
    }

    /// True when the source cannot work in this environment at all (not installed, not logged in, no
    /// endpoint, no identity assigned): `auto` then tries the next source of its chain. Every other failure
    /// (a refusal by Entra ID, a broken input, a timeout) stops the chain, because the source was meant
    /// to work and its error is the one to fix.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable | ErrorKind::AzCliMissing | ErrorKind::AzCliNotLoggedIn
        )
    }

    /// The token source that failed (`workload-identity`, `az-cli`, ...).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// What went wrong.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// How to fix it.
    pub fn fix(&self) -> &str {
        &self.fix
    }

    /// The service's error code, when it gave one (Entra's `AADSTS` number, e.g. `70021`).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; fix: {}",
            self.source_name, self.problem, self.fix
        )
    }
}

/// Replaces every JWT-shaped run of text (`eyJ…` `.` `…` `.` `…`) with `<redacted token>`: text copied from
/// the SDK, `az` or a server into an error may quote a token, and errors must never carry one.
pub fn redact_tokens(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("eyJ") {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let len = candidate
            .find(|c: char| !is_token_char(c))
            .unwrap_or(candidate.len());
        let run = &candidate[..len];
        if run.split('.').filter(|part| !part.is_empty()).count() >= 2
            && run.matches('.').count() >= 2
        {
            out.push_str("<redacted token>");
        } else {
            out.push_str(run);
        }
        rest = &candidate[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_tokens;

    #[test]
    fn jwt_shaped_text_is_redacted_and_the_rest_kept() {
        // Scenario: an error text quoting a token keeps its words but loses the token.
        let text = "az said: bad token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl, try again (eyJ alone stays)";
        assert_eq!(
            redact_tokens(text),
            "az said: bad token <redacted token>, try again (eyJ alone stays)"
        );
        let error =
            super::CredentialError::new(super::ErrorKind::Upstream, "az-cli", text, "eyJa.eyJb.c");
        assert!(!error.to_string().contains("eyJhbGci"));
        assert!(error.fix().contains("<redacted token>"));
    }
}
