//! Local stand-ins for Azure's managed identity endpoints, served over plain HTTP from 127.0.0.1 as Azure
//! serves them to the compute:
//!
//! - App Service / Container Apps / Functions: `GET /msi/token?api-version=2019-08-01&resource=…` with the
//!   `X-IDENTITY-HEADER` secret ([`ManagedIdentityStandIn::app_service_environment`] gives
//!   `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`); a wrong or missing header is refused with
//!   [`ManagedIdentityOptions::header_refusal`] (401 unless a test says otherwise). This is an assumption:
//!   Azure does not document the status for a wrong header, and public reports show both 400 and 403, so
//!   tests check the status pgwi cannot tell from "identity not assigned" (400) too.
//! - A VM's instance metadata service: `GET /metadata/identity/oauth2/token?…` with `Metadata: true`
//!   ([`ManagedIdentityStandIn::imds_endpoint`] is the base URL to put in
//!   `AZURE_POD_IDENTITY_AUTHORITY_HOST`); a request without the header is refused with HTTP 400 and
//!   counted as a probe ([`ManagedIdentityStandIn::probes`]).
//!
//! A user-assigned identity other than the one configured is refused with HTTP 400, as Azure refuses an
//! identity not assigned to the resource; so is the system-assigned identity when
//! [`ManagedIdentityOptions::system_assigned`] is false. Tokens are compact HS256 tokens signed with the test server's key
//! for [`ManagedIdentityOptions::identity_name`], which the test PostgreSQL accepts for that token role.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::entra::{compact_token, query_value};
use crate::{TestSupportError, jwt, lock, random_alphanumeric};

/// What the endpoints accept and issue.
#[derive(Clone)]
pub struct ManagedIdentityOptions {
    /// The identity's name: the token role its tokens log in as.
    pub identity_name: String,
    /// The user-assigned identity's client id; requests naming another client id are refused.
    pub client_id: String,
    /// The App Service endpoint's secret (`IDENTITY_HEADER`).
    pub header_secret: String,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// The test server's token key ([`crate::TestPostgres::token_signing_key`]).
    pub signing_key: Vec<u8>,
    /// The status the App Service endpoint answers a wrong `X-IDENTITY-HEADER` with (default 401; Azure does
    /// not document it, see the module documentation).
    pub header_refusal: u16,
    /// Whether the compute has a system-assigned identity (default true); without one, a request naming no
    /// identity is refused with HTTP 400.
    pub system_assigned: bool,
    /// When set, IMDS answers every token request with this status (e.g. 410 while an identity is being
    /// set up), which the SDK retries.
    pub imds_status: Option<u16>,
}

impl std::fmt::Debug for ManagedIdentityOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityOptions")
            .field("identity_name", &self.identity_name)
            .field("client_id", &self.client_id)
            .field("token_lifetime", &self.token_lifetime)
            .field("header_refusal", &self.header_refusal)
            .field("system_assigned", &self.system_assigned)
            .field("imds_status", &self.imds_status)
            .finish_non_exhaustive()
    }
}

impl ManagedIdentityOptions {
    /// An identity named `identity_name` whose tokens `server` accepts (make its token role with
    /// [`crate::TestDatabase::create_token_role`]).
    pub fn for_server(identity_name: impl Into<String>, server: &crate::TestPostgres) -> Self {
        Self::new(identity_name, server.token_signing_key().to_vec())
    }

    /// An identity named `identity_name` whose tokens are signed with `signing_key`.
    pub fn new(identity_name: impl Into<String>, signing_key: Vec<u8>) -> Self {
        let header_secret = random_alphanumeric(32);
        crate::secrets::register(&header_secret);
        Self {
            identity_name: identity_name.into(),
            client_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            header_secret,
            token_lifetime: Duration::from_secs(3600),
            signing_key,
            header_refusal: 401,
            system_assigned: true,
            imds_status: None,
        }
    }
}

#[derive(Default)]
struct Recorded {
    requests: Vec<String>,
    issued: Vec<String>,
    /// IMDS requests without `Metadata: true`: how clients probe for IMDS.
    probes: usize,
}

/// The host's identity: what it answers with, and what it saw.
struct Host {
    options: ManagedIdentityOptions,
    recorded: Mutex<Recorded>,
}

/// The running stand-in. Stops when dropped.
pub struct ManagedIdentityStandIn {
    host: Arc<Host>,
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ManagedIdentityStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityStandIn")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for ManagedIdentityStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ManagedIdentityStandIn {
    /// Starts serving on a free port of 127.0.0.1, in the current tokio runtime.
    pub async fn start(options: ManagedIdentityOptions) -> Result<Self, TestSupportError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(TestSupportError::io(
                "binding the managed identity stand-in",
            ))?;
        let port = listener
            .local_addr()
            .map_err(TestSupportError::io(
                "reading the managed identity stand-in's port",
            ))?
            .port();
        let host = Arc::new(Host {
            options,
            recorded: Mutex::new(Recorded::default()),
        });
        let app = Router::new()
            .route("/msi/token", get(app_service))
            .route("/metadata/identity/oauth2/token", get(imds))
            .with_state(host.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { host, port, server })
    }

    /// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` as App Service sets them, pointing at this stand-in.
    pub fn app_service_environment(&self) -> Vec<(String, String)> {
        vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("http://127.0.0.1:{}/msi/token", self.port),
            ),
            (
                "IDENTITY_HEADER".into(),
                self.host.options.header_secret.clone(),
            ),
        ]
    }

    /// The IMDS base URL of this stand-in, for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The options in force.
    pub fn options(&self) -> &ManagedIdentityOptions {
        &self.host.options
    }

    /// Each request so far: which endpoint and its query (never a secret).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.host.recorded).requests.clone()
    }

    /// IMDS requests without `Metadata: true` (refused with HTTP 400, as Azure does): probes.
    pub fn probes(&self) -> usize {
        lock(&self.host.recorded).probes
    }

    /// Every token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.host.recorded).issued.clone()
    }
}

/// A token the stand-in issued, with its timing as both endpoints report it.
struct Issued {
    token: String,
    /// Unix seconds.
    expires_on: i64,
    /// Seconds.
    lifetime: i64,
}

/// A token for the identity, or the refusal Azure gives when the request names another identity.
fn issue(host: &Host, uri: &Uri, endpoint: &str) -> Result<Issued, Box<Response>> {
    lock(&host.recorded)
        .requests
        .push(format!("{endpoint} {}", uri.query().unwrap_or_default()));
    let options = &host.options;
    let client_id = query_value(uri, "client_id");
    if client_id.is_none() && !options.system_assigned {
        return Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": "invalid_request", "error_description": "Identity not found"}),
                ),
            )
                .into_response(),
        ));
    }
    if let Some(client_id) = client_id
        && client_id != options.client_id
    {
        return Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"statusCode": 400, "message": "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId."})),
            )
                .into_response(),
        ));
    }
    if query_value(uri, "resource").as_deref() != Some(jwt::POSTGRES_AUDIENCE) {
        return Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_resource", "error_description": "AADSTS500011: The resource principal was not found."})),
            )
                .into_response(),
        ));
    }
    let lifetime = options.token_lifetime.as_secs().max(1) as i64;
    let now = jwt::unix_now();
    let token = compact_token(&options.identity_name, now, lifetime, &options.signing_key)
        .map_err(|why| Box::new((StatusCode::INTERNAL_SERVER_ERROR, why).into_response()))?;
    lock(&host.recorded).issued.push(token.clone());
    Ok(Issued {
        token,
        expires_on: now + lifetime,
        lifetime,
    })
}

async fn app_service(State(host): State<Arc<Host>>, uri: Uri, headers: HeaderMap) -> Response {
    let header = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if header != Some(host.options.header_secret.as_str()) {
        lock(&host.recorded)
            .requests
            .push("app-service refused".into());
        let status =
            StatusCode::from_u16(host.options.header_refusal).unwrap_or(StatusCode::UNAUTHORIZED);
        return (
            status,
            Json(json!({"statusCode": status.as_u16(), "message": "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong."})),
        )
            .into_response();
    }
    match issue(&host, &uri, "app-service") {
        Ok(issued) => Json(json!({
            "access_token": issued.token,
            "expires_on": issued.expires_on.to_string(),
            "resource": jwt::POSTGRES_AUDIENCE,
            "token_type": "Bearer",
            "client_id": host.options.client_id,
        }))
        .into_response(),
        Err(refusal) => *refusal,
    }
}

async fn imds(State(host): State<Arc<Host>>, uri: Uri, headers: HeaderMap) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        lock(&host.recorded).probes += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})),
        )
            .into_response();
    }
    if let Some(status) = host.options.imds_status {
        lock(&host.recorded).requests.push(format!("imds {status}"));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::GONE);
        return (
            status,
            Json(json!({"error": "unavailable", "error_description": "try again later"})),
        )
            .into_response();
    }
    match issue(&host, &uri, "imds") {
        Ok(Issued {
            token,
            expires_on,
            lifetime,
        }) => Json(json!({
            "access_token": token,
            "client_id": host.options.client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": expires_on.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": (expires_on - lifetime).to_string(),
            "resource": jwt::POSTGRES_AUDIENCE,
            "token_type": "Bearer",
        }))
        .into_response(),
        Err(refusal) => *refusal,
    }
}

/// An IMDS base URL on loopback where nothing listens: what every test gives pgwi so that no test ever
/// reaches for Azure's real metadata address. A connection there is refused at once.
pub fn unreachable_imds_endpoint() -> String {
    // Port 9 (discard) is unassigned on test machines; the probe sees "connection refused".
    "http://127.0.0.1:9".into()
}
