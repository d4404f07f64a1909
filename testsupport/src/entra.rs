//! A local stand-in for Entra ID's token endpoint, served over HTTPS from 127.0.0.1 with a test CA.
//!
//! Implements `POST /{tenant}/oauth2/v2.0/token` for the client-credentials grant: with a client assertion
//! (workload identity's projected token; a certificate-signed RS256 assertion, verified against the
//! certificates registered with [`EntraOptions::certificates`]; a GitHub Actions job token this stand-in
//! issued, matched against [`EntraOptions::github_subject`]) or with a client secret
//! ([`EntraOptions::client_secrets`], some of which may have expired). It checks the tenant, client id,
//! assertion type, grant type and scope and answers with Entra's AADSTS codes (700016 unknown client,
//! 7000215 wrong secret, 7000222 expired secret, 700027 bad certificate signature, 70021 / 700213 no
//! matching federated credential); issues distinct JWT-shaped tokens with a configurable lifetime; counts
//! requests; and injects faults on demand.
//!
//! The same server stands in for GitHub's OIDC token endpoint (`GET /github/idtoken?api-version=2.0&
//! audience=…` with the job's request token as bearer): see [`EntraStandIn::github_environment`]. In-process tests reach it through [`EntraStandIn::azure_client_options`]; a child process
//! through `AZURE_AUTHORITY_HOST` = [`EntraStandIn::authority_host`] and `SSL_CERT_FILE` =
//! [`EntraStandIn::ca_file`].
//!
//! With [`EntraOptions::signing_key`] (set by [`EntraOptions::for_server`]) it issues compact HS256 tokens
//! signed with the test server's key, which the server accepts for the identity's token role until they
//! expire, as Azure accepts Entra's tokens. Without a key its tokens carry random signatures and a test makes
//! the server accept them itself (for example with an [`IssueHook`] that sets the role's password).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{TestCertificates, TestSupportError, random_alphanumeric};
use crate::{jwt, lock};

/// The scope pgwi asks for by default.
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A failure the stand-in can be told to produce.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP 429 with Entra's throttling body.
    Throttled,
    /// HTTP 500 with an Entra error body.
    ServerError,
    /// HTTP 400 with this AADSTS code and description.
    Aadsts(u32, String),
    /// Answer correctly, but only after this delay.
    Delay(Duration),
    /// HTTP 200 with a body that is not JSON.
    Malformed,
}

/// What the stand-in accepts and issues.
#[derive(Clone)]
pub struct EntraOptions {
    /// The tenant in the URL path.
    pub tenant_id: String,
    /// The identity's client id.
    pub client_id: String,
    /// The projected service-account token it expects as `client_assertion`.
    pub expected_assertion: String,
    /// Further assertions it accepts, e.g. the kubelet's renewed projection while the old one is valid.
    pub also_accepted: Vec<String>,
    /// The scope it expects.
    pub scope: String,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// The managed identity's name, put into `xms_mirid`.
    pub identity_name: String,
    /// The identity's object id (`oid`).
    pub object_id: String,
    /// Give every token its own identity name (`<identity_name>-<n>`), so a test can make one role per
    /// token: PostgreSQL holds one password per role, while Azure accepts every unexpired token.
    pub identity_per_token: bool,
    /// Client secrets of the application, each current or expired.
    pub client_secrets: Vec<ClientSecret>,
    /// Certificates registered on the application (their public parts).
    pub certificates: Vec<RegisteredCertificate>,
    /// The subject of the GitHub Actions federated credential (`repo:<owner>/<repo>:ref:refs/heads/<branch>`);
    /// job tokens this stand-in issued are accepted as assertions when their `sub` is this and their `aud`
    /// is [`jwt::TOKEN_EXCHANGE_AUDIENCE`].
    pub github_subject: String,
    /// The `sub` of the job tokens the GitHub endpoint issues.
    pub github_job_subject: String,
    /// The bearer token the GitHub endpoint requires (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    pub github_request_token: String,
    /// Sign compact HS256 tokens with this key (the test server's
    /// [`crate::TestPostgres::token_signing_key`]), which the server checks as Azure does. `None`: Entra-like
    /// tokens with random signatures.
    pub signing_key: Option<Vec<u8>>,
}

/// A client secret of the application.
#[derive(Clone)]
pub struct ClientSecret {
    /// Its value.
    pub value: String,
    /// Past its end date: Entra answers AADSTS7000222.
    pub expired: bool,
}

impl ClientSecret {
    /// A fresh random secret (registered with [`crate::secrets`]).
    pub fn generate(expired: bool) -> Self {
        let value = format!("pgwi~{}", random_alphanumeric(34));
        crate::secrets::register(&value);
        Self { value, expired }
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret")
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

/// The public part of a certificate registered on the application.
#[derive(Debug, Clone)]
pub struct RegisteredCertificate {
    /// base64url SHA-256 of the certificate's DER (`x5t#S256`).
    pub x5t_s256: String,
    /// base64url SHA-1 of the certificate's DER (`x5t`), which Entra also reads.
    pub x5t: String,
    /// The RSA public key (PKCS#1 `RSAPublicKey` DER).
    pub public_key: Vec<u8>,
}

/// A token the stand-in issued, as seen by an [`IssueHook`].
#[derive(Clone)]
pub struct IssuedToken {
    /// The access token.
    pub token: String,
    /// The identity name in its `xms_mirid` claim.
    pub identity_name: String,
    /// Its `exp`, seconds since the epoch.
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("identity_name", &self.identity_name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Runs before an issued token is returned: the place to make "the server" accept it.
pub type IssueHook = Arc<
    dyn Fn(IssuedToken) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for EntraOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraOptions")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("expected_assertion", &"<redacted>")
            .field("scope", &self.scope)
            .field("token_lifetime", &self.token_lifetime)
            .field("identity_name", &self.identity_name)
            .field("identity_per_token", &self.identity_per_token)
            .field("client_secrets", &self.client_secrets)
            .field("certificates", &self.certificates)
            .field("github_subject", &self.github_subject)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl EntraOptions {
    /// Options for a fresh identity, expecting `assertion`.
    pub fn new(assertion: impl Into<String>) -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "5a7bd1c0-3f12-4c8e-9d1e-0123456789ab".into(),
            expected_assertion: assertion.into(),
            also_accepted: Vec::new(),
            scope: POSTGRES_SCOPE.into(),
            token_lifetime: Duration::from_secs(3600),
            identity_name: "pgwi-app".into(),
            object_id: "0b5d2c47-9a0e-4b6f-8f55-a1b2c3d4e5f6".into(),
            identity_per_token: false,
            client_secrets: Vec::new(),
            certificates: Vec::new(),
            github_subject: GITHUB_SUBJECT.into(),
            github_job_subject: GITHUB_SUBJECT.into(),
            github_request_token: {
                let token = format!("ghs_{}", random_alphanumeric(36));
                crate::secrets::register(&token);
                token
            },
            signing_key: None,
        }
    }

    /// Options for a fresh identity, expecting `assertion`, whose tokens `server` accepts: they are signed
    /// with its key. The identity's role must be a token role
    /// ([`crate::TestDatabase::create_token_role`] with [`Self::identity_name`]).
    pub fn for_server(assertion: impl Into<String>, server: &crate::TestPostgres) -> Self {
        Self {
            signing_key: Some(server.token_signing_key().to_vec()),
            ..Self::new(assertion)
        }
    }
}

/// The subject of a job on the default branch of the test repository.
pub const GITHUB_SUBJECT: &str = "repo:pgwi/pgwi:ref:refs/heads/main";
/// GitHub's OIDC issuer.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// The `xms_mirid` of a user-assigned managed identity named `name`, kept short for compact tokens.
fn compact_mirid(name: &str) -> String {
    format!(
        "/subscriptions/0/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// A compact token the test server can check: HS256, and only `aud`, `iat`, `exp`, `jti`, `xms_mirid`.
/// Refused (with the reason) when it would be longer than [`jwt::MAX_CHECKABLE_TOKEN_LEN`]: PAM would cut
/// it, and the server refuse it.
pub(crate) fn compact_token(
    identity_name: &str,
    now: i64,
    lifetime: i64,
    key: &[u8],
) -> Result<String, String> {
    let token = jwt::sign_compact(
        &json!({
            "aud": jwt::POSTGRES_AUDIENCE,
            "iat": now,
            "exp": now + lifetime,
            // Tokens issued in the same second must still differ.
            "jti": random_alphanumeric(8),
            "xms_mirid": compact_mirid(identity_name),
        }),
        key,
    );
    if token.len() > jwt::MAX_CHECKABLE_TOKEN_LEN {
        return Err(format!(
            "the Entra stand-in will not issue a {}-byte token for identity {identity_name:?}: the test \
             server's PAM checker gets at most {} bytes of a password; use a shorter identity name",
            token.len(),
            jwt::MAX_CHECKABLE_TOKEN_LEN
        ));
    }
    Ok(token)
}

#[derive(Default)]
struct Recorded {
    requests: usize,
    issued: Vec<String>,
    next_faults: VecDeque<Fault>,
    persistent_fault: Option<Fault>,
    rejections: Vec<String>,
    github_issued: Vec<String>,
    github_refusal: Option<u16>,
    certificate_headers: Vec<serde_json::Value>,
}

/// The simulated tenant: its address, what it accepts, what it saw and the hook for issued tokens.
struct Tenant {
    /// `https://127.0.0.1:<port>`, for the audience of client assertions.
    authority: String,
    options: Mutex<EntraOptions>,
    recorded: Mutex<Recorded>,
    on_issue: Mutex<Option<IssueHook>>,
}

/// The running stand-in. Stops when dropped.
pub struct EntraStandIn {
    tenant: Arc<Tenant>,
    port: u16,
    certs: TestCertificates,
    ca_file: tempfile::NamedTempFile,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EntraStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraStandIn")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for EntraStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl EntraStandIn {
    /// Starts serving HTTPS on a free port of 127.0.0.1, in the current tokio runtime.
    pub async fn start(options: EntraOptions) -> Result<Self, TestSupportError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = TestCertificates::generate()?;
        let tls = server_tls_config(&certs)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(TestSupportError::io("binding the Entra stand-in"))?;
        let port = listener
            .local_addr()
            .map_err(TestSupportError::io("reading the Entra stand-in's port"))?
            .port();
        let mut ca_file = tempfile::Builder::new()
            .prefix("pgwi-entra-ca-")
            .suffix(".pem")
            .tempfile()
            .map_err(TestSupportError::io("creating the CA file"))?;
        std::io::Write::write_all(&mut ca_file, certs.ca_pem.as_bytes())
            .map_err(TestSupportError::io("writing the CA file"))?;
        let tenant = Arc::new(Tenant {
            authority: format!("https://127.0.0.1:{port}"),
            options: Mutex::new(options),
            recorded: Mutex::new(Recorded::default()),
            on_issue: Mutex::new(None),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .route("/github/idtoken", axum::routing::get(github_endpoint))
            .with_state(tenant.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Ok(Self {
            tenant,
            port,
            certs,
            ca_file,
            server,
        })
    }

    /// `https://127.0.0.1:<port>/`, for `AZURE_AUTHORITY_HOST`.
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// The CA that signed the stand-in's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// A file with [`Self::ca_pem`], for a child process's `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.path()
    }

    /// The options in force.
    pub fn options(&self) -> EntraOptions {
        lock(&self.tenant.options).clone()
    }

    /// Accepts `assertion` too from now on (a renewed projected token: Entra accepts any unexpired one
    /// signed by the cluster's issuer).
    pub fn accept_assertion(&self, assertion: impl Into<String>) {
        lock(&self.tenant.options)
            .also_accepted
            .push(assertion.into());
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.tenant.options).token_lifetime = lifetime;
    }

    /// Runs `hook` for every issued token before it is returned.
    pub fn set_on_issue(&self, hook: IssueHook) {
        *lock(&self.tenant.on_issue) = Some(hook);
    }

    /// Token requests received so far (including refused ones).
    pub fn request_count(&self) -> usize {
        lock(&self.tenant.recorded).requests
    }

    /// Every token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.tenant.recorded).issued.clone()
    }

    /// Why requests were refused (for assertions and debugging).
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.tenant.recorded).rejections.clone()
    }

    /// Answers the next request with `fault` (queued after earlier ones).
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.tenant.recorded).next_faults.push_back(fault);
    }

    /// Answers every request with `fault` until set to `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        lock(&self.tenant.recorded).persistent_fault = fault;
    }

    /// Refuses every GitHub job-token request with this HTTP status from now on (`None`: answer again).
    pub fn refuse_github(&self, status: Option<u16>) {
        lock(&self.tenant.recorded).github_refusal = status;
    }

    /// The JOSE headers of the certificate-signed assertions received so far (`x5t#S256`, `x5c`, ...).
    pub fn certificate_assertion_headers(&self) -> Vec<serde_json::Value> {
        lock(&self.tenant.recorded).certificate_headers.clone()
    }

    /// GitHub job tokens issued so far.
    pub fn github_tokens(&self) -> Vec<String> {
        lock(&self.tenant.recorded).github_issued.clone()
    }

    /// What a GitHub Actions job with `permissions: id-token: write` sees, pointing at this stand-in, plus
    /// the application's `AZURE_CLIENT_ID` / `AZURE_TENANT_ID` / `AZURE_AUTHORITY_HOST` as a workflow sets
    /// them.
    pub fn github_environment(&self) -> Vec<(String, String)> {
        let options = self.options();
        vec![
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL".into(),
                format!(
                    "https://127.0.0.1:{}/github/idtoken?api-version=2.0",
                    self.port
                ),
            ),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(),
                options.github_request_token,
            ),
            ("AZURE_CLIENT_ID".into(), options.client_id),
            ("AZURE_TENANT_ID".into(), options.tenant_id),
            ("AZURE_AUTHORITY_HOST".into(), self.authority_host()),
        ]
    }

    /// A service principal's variables as the SDKs' environment credential reads them (without its secret
    /// or certificate), pointing at this stand-in.
    pub fn service_principal_environment(&self) -> Vec<(String, String)> {
        let options = self.options();
        vec![
            ("AZURE_CLIENT_ID".into(), options.client_id),
            ("AZURE_TENANT_ID".into(), options.tenant_id),
            ("AZURE_AUTHORITY_HOST".into(), self.authority_host()),
        ]
    }

    /// Azure SDK client options for in-process tests: HTTPS trusting only the stand-in's CA, no retries.
    pub fn azure_client_options(
        &self,
    ) -> Result<azure_core::http::ClientOptions, TestSupportError> {
        let ca = reqwest::Certificate::from_pem(self.certs.ca_pem.as_bytes())
            .map_err(|e| TestSupportError::Tls(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .map_err(|e| TestSupportError::Tls(e.to_string()))?;
        Ok(azure_core::http::ClientOptions {
            transport: Some(azure_core::http::Transport::new(Arc::new(client))),
            retry: azure_core::http::RetryOptions::none(),
            ..Default::default()
        })
    }

    /// Environment a workload-identity pod gets from the AKS webhook, pointing at this stand-in.
    pub fn webhook_environment(&self, token_file: &Path) -> Vec<(String, String)> {
        let options = self.options();
        vec![
            ("AZURE_CLIENT_ID".into(), options.client_id),
            ("AZURE_TENANT_ID".into(), options.tenant_id),
            (
                "AZURE_FEDERATED_TOKEN_FILE".into(),
                token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST".into(), self.authority_host()),
        ]
    }
}

fn server_tls_config(certs: &TestCertificates) -> Result<rustls::ServerConfig, TestSupportError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| TestSupportError::Tls(e.to_string());
    let cert =
        CertificateDer::from_pem_slice(certs.server_cert_pem.as_bytes()).map_err(|e| tls(&e))?;
    let key =
        PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes()).map_err(|e| tls(&e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(&e))
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: 2026-11-28 00:00:00Z", random_alphanumeric(8), random_alphanumeric(8)),
        "error_codes": [code],
        "timestamp": "2026-11-28 00:00:00Z",
        "trace_id": random_alphanumeric(8),
        "correlation_id": random_alphanumeric(8),
    });
    (status, Json(body)).into_response()
}

/// `POST /{tenant}/oauth2/v2.0/token`: an injected fault, else the request checked as Entra checks it, then
/// a token issued.
async fn token_endpoint(
    State(tenant_state): State<Arc<Tenant>>,
    UrlPath(tenant): UrlPath<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(response) = injected_fault(&tenant_state).await {
        return response;
    }
    let options = lock(&tenant_state.options).clone();
    let request = TokenRequest {
        tenant: &tenant,
        form: &form,
    };
    if let Err(refusal) = check_token_request(&tenant_state, &options, &request) {
        return refusal.answer(&tenant_state);
    }
    match issue_token(&tenant_state, &options).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(&tenant_state),
    }
}

/// Counts the request and answers with the next fault the test queued (or the persistent one), if any; a
/// [`Fault::Delay`] waits, then lets the request through.
async fn injected_fault(tenant_state: &Tenant) -> Option<Response> {
    let fault = {
        let mut recorded = lock(&tenant_state.recorded);
        recorded.requests += 1;
        recorded
            .next_faults
            .pop_front()
            .or_else(|| recorded.persistent_fault.clone())
    };
    let (status, error, code, description) = match fault? {
        Fault::Throttled => (
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            50196,
            "The server is busy; too many requests.".to_owned(),
        ),
        Fault::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
            "There was an error issuing a token.".to_owned(),
        ),
        Fault::Aadsts(code, description) => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            code,
            description,
        ),
        Fault::Malformed => {
            return Some((StatusCode::OK, "<html>proxy error</html>").into_response());
        }
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            return None;
        }
    };
    Some(entra_error(status, error, code, &description))
}

/// The parts of a token request the checks read.
struct TokenRequest<'a> {
    /// The tenant in the URL's path.
    tenant: &'a str,
    form: &'a HashMap<String, String>,
}

impl TokenRequest<'_> {
    /// A form field, empty when absent.
    fn field(&self, name: &str) -> &str {
        self.form.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// Why the stand-in refuses a token request: what [`EntraStandIn::rejections`] records, and Entra's answer.
struct Refusal {
    reason: String,
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl Refusal {
    fn new(
        reason: impl Into<String>,
        status: StatusCode,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            reason: reason.into(),
            status,
            error,
            code,
            description: description.into(),
        }
    }

    /// A refused client assertion: HTTP 400 `invalid_client`.
    fn assertion(reason: impl Into<String>, code: u32, description: impl Into<String>) -> Self {
        Self::new(
            reason,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            code,
            description,
        )
    }

    /// Records the refusal and answers with Entra's error body.
    fn answer(self, tenant_state: &Tenant) -> Response {
        lock(&tenant_state.recorded).rejections.push(self.reason);
        entra_error(self.status, self.error, self.code, &self.description)
    }
}

/// The checks Entra makes, in its order: tenant, client id, grant type, the credential, scope.
fn check_token_request(
    tenant_state: &Tenant,
    options: &EntraOptions,
    request: &TokenRequest<'_>,
) -> Result<(), Refusal> {
    check_client(options, request)?;
    match request.form.get("client_secret") {
        Some(secret) => check_secret(options, secret)?,
        None => {
            if request.field("client_assertion_type") != ASSERTION_TYPE {
                return Err(Refusal::new(
                    "client_assertion_type",
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "Invalid client assertion type.",
                ));
            }
            check_assertion(
                tenant_state,
                options,
                request.tenant,
                request.field("client_assertion"),
            )?;
        }
    }
    if request.field("scope") != options.scope {
        return Err(Refusal::new(
            format!("scope {}", request.field("scope")),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            "The provided value for scope is not valid.",
        ));
    }
    Ok(())
}

/// The tenant, the client id and the grant type.
fn check_client(options: &EntraOptions, request: &TokenRequest<'_>) -> Result<(), Refusal> {
    let tenant = request.tenant;
    if tenant != options.tenant_id {
        return Err(Refusal::new(
            format!("tenant {tenant}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found."),
        ));
    }
    let client_id = request.field("client_id");
    if client_id != options.client_id {
        return Err(Refusal::new(
            format!("client_id {client_id}"),
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    let grant_type = request.field("grant_type");
    if grant_type != "client_credentials" {
        return Err(Refusal::new(
            format!("grant_type {grant_type}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The grant type is not supported.",
        ));
    }
    Ok(())
}

/// A client secret must be one of the registered ones, and not expired.
fn check_secret(options: &EntraOptions, secret: &str) -> Result<(), Refusal> {
    match options.client_secrets.iter().find(|s| s.value == secret) {
        Some(found) if found.expired => Err(Refusal::new(
            "client_secret expired",
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app.",
                options.client_id
            ),
        )),
        Some(_) => Ok(()),
        None => Err(Refusal::new(
            "client_secret",
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        )),
    }
}

/// Issues a token for the identity (compact and signed with the server's key when the options have one),
/// hands it to the issue hook, records it and answers with it.
async fn issue_token(tenant_state: &Tenant, options: &EntraOptions) -> Result<Response, Refusal> {
    let lifetime = options.token_lifetime.as_secs().max(1) as i64;
    let now = jwt::unix_now();
    let identity_name = if options.identity_per_token {
        format!(
            "{}-{}",
            options.identity_name,
            lock(&tenant_state.recorded).issued.len() + 1
        )
    } else {
        options.identity_name.clone()
    };
    let token = match &options.signing_key {
        Some(key) => compact_token(&identity_name, now, lifetime, key).map_err(|why| {
            Refusal::new(
                why.clone(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                why,
            )
        })?,
        None => full_token(options, &identity_name, now, lifetime),
    };
    let hook = lock(&tenant_state.on_issue).clone();
    if let Some(hook) = hook {
        hook(IssuedToken {
            token: token.clone(),
            identity_name,
            expires_at: now + lifetime,
        })
        .await;
    }
    lock(&tenant_state.recorded).issued.push(token.clone());
    Ok(Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    }))
    .into_response())
}

/// A token with Entra's full set of claims and a random signature.
fn full_token(options: &EntraOptions, identity_name: &str, now: i64, lifetime: i64) -> String {
    jwt::encode(&json!({
        "aud": jwt::POSTGRES_AUDIENCE,
        "iss": format!("https://sts.windows.net/{}/", options.tenant_id),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "appid": options.client_id,
        "oid": options.object_id,
        "sub": options.object_id,
        "tid": options.tenant_id,
        "idtyp": "app",
        "xms_mirid": format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/pgwi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            identity_name
        ),
        "uti": random_alphanumeric(22),
    }))
}

/// A client assertion split into its parts, header and claims decoded (the signature is not checked).
struct Assertion<'a> {
    parts: Vec<&'a str>,
    header: serde_json::Value,
    claims: serde_json::Value,
}

impl<'a> Assertion<'a> {
    fn decode(assertion: &'a str) -> Option<Self> {
        let parts: Vec<&str> = assertion.split('.').collect();
        let decode = |part: &str| -> Option<serde_json::Value> {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        let header = decode(parts.first()?)?;
        let claims = decode(parts.get(1)?)?;
        Some(Self {
            parts,
            header,
            claims,
        })
    }

    /// A string claim, empty when absent.
    fn claim(&self, name: &str) -> String {
        self.claims[name].as_str().unwrap_or_default().to_owned()
    }
}

/// Accepts the projected token, a job token this stand-in issued whose claims match the GitHub federated
/// credential, or an RS256 assertion signed by a registered certificate with the right claims.
fn check_assertion(
    tenant_state: &Tenant,
    options: &EntraOptions,
    tenant: &str,
    assertion: &str,
) -> Result<(), Refusal> {
    if assertion == options.expected_assertion
        || options.also_accepted.iter().any(|a| a == assertion)
    {
        return Ok(());
    }
    let no_federation = || {
        Refusal::assertion(
            "client_assertion",
            70021,
            "No matching federated identity record found for presented assertion.",
        )
    };
    let decoded = Assertion::decode(assertion).ok_or_else(no_federation)?;
    let github_issued = lock(&tenant_state.recorded)
        .github_issued
        .iter()
        .any(|t| t == assertion);
    if github_issued {
        return check_github_assertion(options, &decoded);
    }
    if decoded.header["x5t#S256"].as_str().is_none() {
        return Err(no_federation());
    }
    lock(&tenant_state.recorded)
        .certificate_headers
        .push(decoded.header.clone());
    check_certificate_signature(options, &decoded)?;
    check_certificate_claims(tenant_state, options, tenant, &decoded)
}

/// A job token this stand-in issued must match the GitHub federated credential's subject and audience.
fn check_github_assertion(
    options: &EntraOptions,
    assertion: &Assertion<'_>,
) -> Result<(), Refusal> {
    let (subject, audience) = (assertion.claim("sub"), assertion.claim("aud"));
    if subject != options.github_subject || audience != jwt::TOKEN_EXCHANGE_AUDIENCE {
        return Err(Refusal::assertion(
            format!("github subject {subject} audience {audience}"),
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{subject}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion."
            ),
        ));
    }
    Ok(())
}

/// A certificate assertion must name a registered certificate by both thumbprints and verify with its key.
fn check_certificate_signature(
    options: &EntraOptions,
    assertion: &Assertion<'_>,
) -> Result<(), Refusal> {
    let bad_signature = |why: &str| {
        Refusal::assertion(
            format!("certificate assertion: {why}"),
            700027,
            "Client assertion failed signature validation.",
        )
    };
    let header = &assertion.header;
    let x5t = header["x5t#S256"].as_str().unwrap_or_default();
    let Some(certificate) = options.certificates.iter().find(|c| c.x5t_s256 == x5t) else {
        return Err(bad_signature("unknown thumbprint"));
    };
    // Both thumbprints must name the same registered certificate: Entra reads x5t (SHA-1) too.
    if header["x5t"].as_str() != Some(certificate.x5t.as_str()) {
        return Err(bad_signature("x5t is missing or names another certificate"));
    }
    let parts = &assertion.parts;
    if header["alg"] != "RS256" || parts.len() != 3 {
        return Err(bad_signature("not RS256"));
    }
    let signature = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .map_err(|_| bad_signature("signature is not base64url"))?
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &certificate.public_key,
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
    .map_err(|_| bad_signature("signature does not verify"))
}

/// A certificate assertion's claims: the tenant's token endpoint as audience, the client id as issuer and
/// subject, a `jti`, and a time range that covers now.
fn check_certificate_claims(
    tenant_state: &Tenant,
    options: &EntraOptions,
    tenant: &str,
    assertion: &Assertion<'_>,
) -> Result<(), Refusal> {
    let audience = format!("{}/{tenant}/oauth2/v2.0/token", tenant_state.authority);
    let now = jwt::unix_now();
    let claims = &assertion.claims;
    let claims_ok = assertion.claim("aud") == audience
        && assertion.claim("iss") == options.client_id
        && assertion.claim("sub") == options.client_id
        && !assertion.claim("jti").is_empty()
        && claims["exp"].as_i64().is_some_and(|exp| exp > now)
        && claims["nbf"].as_i64().is_some_and(|nbf| nbf <= now + 60);
    if !claims_ok {
        return Err(Refusal::assertion(
            format!("certificate assertion claims {claims}"),
            700024,
            "Client assertion is not within its valid time range or has wrong claims.",
        ));
    }
    Ok(())
}

/// GitHub's OIDC token endpoint: the request token as bearer, the audience as a query parameter.
async fn github_endpoint(
    State(tenant): State<Arc<Tenant>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let options = lock(&tenant.options).clone();
    if let Some(status) = lock(&tenant.recorded).github_refusal {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        return (
            status,
            Json(json!({"message": "Unable to get ACTIONS_ID_TOKEN_REQUEST_URL env variable"})),
        )
            .into_response();
    }
    let expected = format!("Bearer {}", options.github_request_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let audience = query_value(&uri, "audience").unwrap_or_default();
    let now = jwt::unix_now();
    let token = jwt::encode(&json!({
        "iss": GITHUB_ISSUER,
        "sub": options.github_job_subject,
        "aud": audience,
        "repository": "pgwi/pgwi",
        "ref": "refs/heads/main",
        "iat": now, "nbf": now, "exp": now + 300,
        "jti": random_alphanumeric(16),
    }));
    lock(&tenant.recorded).github_issued.push(token.clone());
    Json(json!({"count": 1, "value": token})).into_response()
}

/// A query parameter of `uri`, decoded.
pub(crate) fn query_value(uri: &axum::http::Uri, name: &str) -> Option<String> {
    let url = azure_core::http::Url::parse(&format!("http://localhost{uri}")).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Writes a projected service-account token to a file in `dir` and returns its path.
pub fn write_token_file(dir: &Path, token: &str) -> Result<PathBuf, TestSupportError> {
    let path = dir.join("azure-identity-token");
    std::fs::write(&path, token)
        .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_tokens_fit_pam_and_differ_within_a_second() {
        // Scenario: signed tokens for a typical identity stay within what PAM hands the checker, two issued in
        // the same second differ, and an identity name that would overflow the limit is refused with the
        // reason.
        let key = [7u8; 32];
        let first =
            compact_token("pgwi_t123456_0_abcdef_app", 1_764_400_000, 3600, &key).expect("token");
        let second =
            compact_token("pgwi_t123456_0_abcdef_app", 1_764_400_000, 3600, &key).expect("token");
        assert!(
            first.len() <= jwt::MAX_CHECKABLE_TOKEN_LEN,
            "{}",
            first.len()
        );
        assert_ne!(first, second);
        let why = compact_token(&"x".repeat(200), 1_764_400_000, 3600, &key).unwrap_err();
        assert!(why.contains("use a shorter identity name"), "{why}");
    }
}
