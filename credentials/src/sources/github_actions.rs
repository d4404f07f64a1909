//! `github-actions`: a GitHub Actions job's OIDC token exchanged for an Entra token — migrations from CI
//! with no stored secret.
//!
//! GitHub gives a job with `permissions: id-token: write` the variables `ACTIONS_ID_TOKEN_REQUEST_URL` and
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. For each token request this source asks GitHub for a job token
//! (`GET <url>&audience=<audience>` with `Authorization: Bearer <request token>`, answered with
//! `{"value": "<jwt>"}`) and hands it to `azure_identity::ClientAssertionCredential` as the client
//! assertion for the application or managed identity whose federated credential trusts the repository.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::http::{
    ClientMethodOptions, Context, ExponentialRetryOptions, Method, Pipeline, Request, RetryOptions,
    Url,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
};

use serde::{Deserialize, Serialize};

use super::common::{self, EntraApp, EntraKeys};
use crate::{
    Claims, CredentialConfig, CredentialError, ErrorKind, SecretString, SourceContext, SourceInfo,
    SourceKind, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "github-actions";

/// Keys of the `github-actions` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubActionsConfig {
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The client id of the application or managed identity with the federated credential. Falls back to
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// The audience of the job's OIDC token. Default `api://AzureADTokenExchange`.
    pub audience: String,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl Default for GithubActionsConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            audience: "api://AzureADTokenExchange".into(),
            authority_host: None,
        }
    }
}
/// The variable with the URL of the job's OIDC token endpoint.
pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The variable with the bearer token that authorizes requests to it.
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// The `github-actions` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct GithubActionsKind;

impl SourceKind for GithubActionsKind {
    const NAME: &'static str = KIND;
    // Not in the default chain: a job's identity is chosen by naming the kind.
    type Config = GithubActionsConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.github_actions.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(GithubActionsSource::new(config, credential, ctx)?))
    }

    fn presence(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        if variables_present(ctx) {
            Ok("ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are set (a GitHub \
                Actions job with id-token: write)"
                .into())
        } else {
            Err(variables_missing())
        }
    }
}

/// GitHub's OIDC issuer, which the federated credential must name.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

const CLIENT_ID_FIX: &str = "set AZURE_CLIENT_ID (e.g. `env: AZURE_CLIENT_ID: ${{ vars.AZURE_CLIENT_ID }}` in \
     the workflow) or credential.github_actions.client_id to the client id of the application or managed \
     identity with the federated credential";

/// The fix when the job has no OIDC token to give.
pub fn permission_fix() -> String {
    format!(
        "GitHub sets {REQUEST_URL_VAR} and {REQUEST_TOKEN_VAR} only for a job allowed to ask for an OIDC \
         token: add `permissions: id-token: write` (and `contents: read`) to the workflow or the job; \
         outside GitHub Actions choose another credential.kind"
    )
}

/// What is missing when the job's OIDC variables are not both set: the constructor's problem and `auto`'s
/// reason to skip.
pub fn variables_missing() -> String {
    format!(
        "{REQUEST_URL_VAR} and {REQUEST_TOKEN_VAR} are not both set: the workflow lacks `permissions: \
         id-token: write`, or this is not a GitHub Actions job"
    )
}

/// Whether the job's OIDC variables are both set: what `auto` checks before trying this source.
pub fn variables_present(ctx: &SourceContext) -> bool {
    ctx.env.get(REQUEST_URL_VAR).is_some() && ctx.env.get(REQUEST_TOKEN_VAR).is_some()
}

/// Hands the job token fetched just before the SDK's request to it.
#[derive(Default, Clone)]
struct JobToken(Arc<Mutex<Option<SecretString>>>);

impl std::fmt::Debug for JobToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobToken(<redacted>)")
    }
}

#[async_trait]
impl ClientAssertion for JobToken {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        let slot = self.0.lock().map_err(|_| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "lock poisoned",
            )
        })?;
        slot.as_ref().map(|t| t.expose().to_owned()).ok_or_else(|| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "no GitHub Actions OIDC token was fetched",
            )
        })
    }
}

/// Where and how the job asks GitHub for its OIDC token: the URL GitHub set, with the audience, and the
/// bearer token that authorizes the request.
struct JobTokenRequest {
    url: Url,
    token: SecretString,
}

impl JobTokenRequest {
    /// From the job's variables; refused when GitHub did not set them (no `id-token: write`).
    fn from_job(gh: &GithubActionsConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let (Some(url), Some(token)) =
            (ctx.env.get(REQUEST_URL_VAR), ctx.env.get(REQUEST_TOKEN_VAR))
        else {
            return Err(CredentialError::configuration(
                KIND,
                variables_missing(),
                permission_fix(),
            ));
        };
        let mut url = Url::parse(&url).map_err(|e| {
            CredentialError::configuration(
                KIND,
                format!("{REQUEST_URL_VAR} is not a URL: {e}"),
                "leave the variable as GitHub sets it",
            )
        })?;
        if gh.audience.trim().is_empty() {
            return Err(CredentialError::configuration(
                KIND,
                "credential.github_actions.audience is empty",
                "leave it unset (api://AzureADTokenExchange) or set the federated credential's audience",
            ));
        }
        url.query_pairs_mut().append_pair("audience", &gh.audience);
        Ok(Self {
            url,
            token: SecretString::new(token),
        })
    }
}

/// The pipeline that asks GitHub for job tokens. Its default retries (8 tries within 60 s) would outlive
/// the fetch deadline: a job-token request gets two retries within a third of it, leaving the rest for
/// Entra.
fn job_token_pipeline(
    client_options: &azure_core::http::ClientOptions,
    fetch_timeout_secs: u64,
) -> Pipeline {
    let mut options = client_options.clone();
    options.retry = RetryOptions::exponential(ExponentialRetryOptions {
        max_retries: 2,
        max_total_elapsed: azure_core::time::Duration::seconds(
            i64::try_from(fetch_timeout_secs / 3)
                .unwrap_or(i64::MAX)
                .max(1),
        ),
        ..ExponentialRetryOptions::default()
    });
    Pipeline::new(
        option_env!("CARGO_PKG_NAME"),
        option_env!("CARGO_PKG_VERSION"),
        options,
        Vec::new(),
        Vec::new(),
        None,
    )
}

/// Tokens for the identity a GitHub Actions job is federated with.
pub struct GithubActionsSource {
    credential: Arc<ClientAssertionCredential<JobToken>>,
    job_token: JobToken,
    http: Pipeline,
    request: JobTokenRequest,
    audience: String,
    scope: String,
    app: EntraApp,
}

impl std::fmt::Debug for GithubActionsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubActionsSource")
            .field("app", &self.app)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl GithubActionsSource {
    /// Resolves the settings and checks that the job may ask for an OIDC token.
    pub fn new(
        gh: &GithubActionsConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let request = JobTokenRequest::from_job(gh, ctx)?;
        let app = EntraApp::resolve(
            KIND,
            EntraKeys {
                table: "github_actions",
                tenant_id: gh.tenant_id.as_ref(),
                client_id: gh.client_id.as_ref(),
                authority_host: gh.authority_host.as_ref(),
                client_id_fix: CLIENT_ID_FIX,
                missing_fix: None,
            },
            ctx,
        )?;
        common::check_scope(KIND, &config.scope)?;
        let client_options = app.client_options(ctx);
        let http = job_token_pipeline(&client_options, config.fetch_timeout_secs);
        let job_token = JobToken::default();
        let credential = ClientAssertionCredential::new(
            app.tenant_id.value.clone(),
            app.client_id.value.clone(),
            job_token.clone(),
            Some(ClientAssertionCredentialOptions { client_options }),
        )
        .map_err(|e| app.rejected(&e))?;
        Ok(Self {
            credential,
            job_token,
            http,
            request,
            audience: gh.audience.clone(),
            scope: config.scope.clone(),
            app,
        })
    }

    /// Asks GitHub for the job's OIDC token.
    async fn fetch_job_token(&self) -> Result<SecretString, CredentialError> {
        let refused = |problem: String, fix: String| {
            CredentialError::new(ErrorKind::Upstream, KIND, problem, fix)
        };
        let mut request = Request::new(self.request.url.clone(), Method::Get);
        request.insert_header(
            "authorization",
            format!("Bearer {}", self.request.token.expose()),
        );
        request.insert_header("accept", "application/json");
        let response = self
            .http
            .send(
                &Context::new(),
                &mut request,
                Some(azure_core::http::PipelineSendOptions {
                    skip_checks: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| {
                refused(
                    format!(
                        "GitHub's OIDC token endpoint ({REQUEST_URL_VAR}) could not be reached: {e}"
                    ),
                    "check the runner's network path to GitHub (proxy, egress rules)".into(),
                )
            })?;
        let status = u16::from(response.status());
        let body = String::from_utf8_lossy(response.body()).into_owned();
        if !(200..300).contains(&status) {
            let detail: String = crate::redact_tokens(body.trim())
                .chars()
                .take(200)
                .collect();
            return Err(refused(
                format!("GitHub refused the job's OIDC token request (HTTP {status}): {detail}"),
                format!(
                    "the request token lives only as long as the job: run pgwi inside the job that received \
                     it; {}",
                    permission_fix()
                ),
            ));
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json.get("value")?.as_str().map(SecretString::new))
            .filter(|token| !token.is_blank())
            .ok_or_else(|| {
                refused(
                    "GitHub's OIDC token endpoint answered without a token (no \"value\" in its JSON)".into(),
                    format!("check that {REQUEST_URL_VAR} is the URL GitHub set"),
                )
            })
    }

    /// The federated credential the job's token would match.
    fn federated_hint(&self, job_token: &SecretString) -> String {
        match Claims::decode_unverified(job_token.expose()) {
            Some(claims) => {
                let claim = |name: &str| claims.get(name).unwrap_or_else(|| "<missing>".into());
                format!(
                    "the job's token has iss={}, sub={}, aud={}; the identity {} needs a federated credential \
                     with exactly issuer={} subject={} audience={} (the subject depends on the trigger: \
                     repo:<owner>/<repo>:ref:refs/heads/<branch>, :environment:<name>, :pull_request)",
                    claim("iss"),
                    claim("sub"),
                    claim("aud"),
                    self.app.client_id.value,
                    claim("iss"),
                    claim("sub"),
                    self.audience,
                )
            }
            None => format!(
                "add a federated credential on identity {} with issuer={GITHUB_ISSUER}, subject=repo:<owner>/\
                 <repo>:ref:refs/heads/<branch> and audience={}",
                self.app.client_id.value, self.audience
            ),
        }
    }
}

#[async_trait]
impl TokenSource for GithubActionsSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        let job_token = self.fetch_job_token().await?;
        if let Ok(mut slot) = self.job_token.0.lock() {
            *slot = Some(job_token.clone());
        }
        common::sdk_token(self.credential.as_ref(), KIND, &self.scope)
            .await
            .map_err(|e| self.app.refusal(&e, self.federated_hint(&job_token)))
    }

    fn info(&self) -> SourceInfo {
        self.app.info(&[("audience", self.audience.clone())])
    }
}
