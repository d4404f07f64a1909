//! `managed-identity`: the identity Azure gives the compute the program runs on, through
//! `azure_identity::ManagedIdentityCredential`.
//!
//! - App Service, Container Apps and Functions set `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`; the SDK then
//!   asks that local endpoint, with the header as its secret.
//! - Virtual machines (and scale sets) answer on the instance metadata service (IMDS). The SDK hard-codes its
//!   address, 169.254.169.254; a per-call pipeline policy rewrites requests for it to
//!   `credential.managed_identity.imds_endpoint` or `AZURE_POD_IDENTITY_AUTHORITY_HOST` when set (the
//!   variable other Azure SDKs honour), which is how tests reach a loopback stand-in.
//!
//! Off Azure no IMDS answers and a request would hang until the SDK's retries give up (over a minute), so
//! before its first token the source probes IMDS within a second, as the SDKs' default credentials do: a
//! request without the `Metadata` header, which Azure's IMDS answers with HTTP 400. No answer, or another
//! answer (another cloud's metadata service), means "no managed identity here" ([`ErrorKind::Unavailable`]),
//! and `auto` moves on.
//!
//! The probe connects directly, while the SDK's own request honours `HTTP_PROXY`/`NO_PROXY`: a proxy
//! cannot reach the link-local IMDS address, so with a proxy set, `169.254.169.254` belongs in `NO_PROXY`
//! (Azure's guidance too); the error for an IMDS request that got no answer says so when a proxy is set.
//!
//! Which answers mean what (the SDK reports every 400 as "identity not assigned", so the source reads the
//! answer's body itself):
//! - HTTP 400 for the system-assigned identity: none is assigned here, "unavailable", and `auto` moves on.
//! - HTTP 400 for a configured user-assigned identity: a failure naming the key or variable it came from
//!   (`auto` must not fall through to, say, a developer's `az` login).
//! - `invalid_resource` / AADSTS500011: `credential.scope` is wrong, a configuration error naming it.
//! - App Service: 401/403, or a 400 whose body complains about the header: `IDENTITY_HEADER` is wrong. Azure
//!   does not document the status for a wrong header; public reports show 400 and 403, hence the body.
//!
//! The SDK's VM credential replaces the retry options with its own (up to 6 retries over 72 s, 404 and 410
//! included), so the source gives the whole request a deadline just inside `credential.fetch_timeout_secs`
//! and reports the last answer it saw.
//!
//! The SDK reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` from the process environment itself; the source
//! reads them through [`SourceContext::env`] only to describe itself and decide whether to probe IMDS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use serde::{Deserialize, Serialize};

use super::common;
use crate::entra::EntraFailure;
use crate::{
    CredentialConfig, CredentialError, ErrorKind, SourceContext, SourceInfo, SourceKind, Token,
    TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "managed-identity";

/// Keys of the `managed-identity` source. At most one of `client_id`, `object_id` and `resource_id`; none
/// means the system-assigned identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagedIdentityConfig {
    /// A user-assigned identity's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// A user-assigned identity's object (principal) id.
    pub object_id: Option<String>,
    /// A user-assigned identity's Azure resource id (not supported by App Service's endpoint).
    pub resource_id: Option<String>,
    /// The instance metadata service's base URL. Falls back to `AZURE_POD_IDENTITY_AUTHORITY_HOST`, then
    /// `http://169.254.169.254`.
    pub imds_endpoint: Option<String>,
}
/// Where IMDS answers on Azure.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The variable other Azure SDKs read for another IMDS address.
pub const IMDS_OVERRIDE_VAR: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// How long the IMDS probe waits for a TCP connection.
pub const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The address the SDK sends IMDS requests to.
const SDK_IMDS_HOST: &str = "169.254.169.254";

/// The `managed-identity` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManagedIdentityKind;

impl SourceKind for ManagedIdentityKind {
    const NAME: &'static str = KIND;
    const CHAIN_POSITION: Option<u16> = Some(50);
    type Config = ManagedIdentityConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.managed_identity.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(ManagedIdentitySource::new(
            config, credential, ctx,
        )?))
    }

    fn presence(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        // Nothing is contacted here: the IMDS probe comes when the source is asked for a token.
        match endpoint(config, ctx) {
            Endpoint::AppService(url) => Ok(format!(
                "IDENTITY_ENDPOINT ({url}) and IDENTITY_HEADER are set (App Service, Container Apps, \
                 Functions)"
            )),
            Endpoint::Imds(url) => Ok(format!(
                "a VM's managed identity through the instance metadata service at {url} (probed before the \
                 first request)"
            )),
            Endpoint::Unsupported {
                platform,
                variables,
            } => Err(format!(
                "{variables} ({platform}), a managed identity the Azure SDK for Rust does not support"
            )),
        }
    }
}

/// Which endpoint the SDK will ask (the SDK's own choice, from the same variables in the same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// App Service, Container Apps, Functions: `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`.
    AppService(String),
    /// A virtual machine's instance metadata service at this base URL.
    Imds(String),
    /// A platform whose managed identity the Azure SDK for Rust does not support.
    Unsupported {
        /// The platform's name.
        platform: &'static str,
        /// The variables that identify it.
        variables: &'static str,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AppService(url) => write!(f, "App Service endpoint {url} (IDENTITY_ENDPOINT)"),
            Self::Imds(url) => write!(f, "IMDS at {url}"),
            Self::Unsupported {
                platform,
                variables,
            } => write!(f, "{platform} managed identity endpoint ({variables})"),
        }
    }
}

/// The endpoint the source uses in this environment: what `auto` and `pgwi doctor` describe. Follows the
/// SDK's choice (`get_source` in `azure_identity`'s `managed_identity_credential.rs`).
pub fn endpoint(mi: &ManagedIdentityConfig, ctx: &SourceContext) -> Endpoint {
    let set = |var: &str| ctx.env.get(var).is_some();
    match ctx.env.get("IDENTITY_ENDPOINT") {
        Some(_) if set("IDENTITY_HEADER") && set("IDENTITY_SERVER_THUMBPRINT") => {
            Endpoint::Unsupported {
                platform: "Service Fabric",
                variables: "IDENTITY_ENDPOINT, IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT are set",
            }
        }
        Some(url) if set("IDENTITY_HEADER") => Endpoint::AppService(url),
        Some(_) if set("IMDS_ENDPOINT") => Endpoint::Unsupported {
            platform: "Azure Arc",
            variables: "IDENTITY_ENDPOINT and IMDS_ENDPOINT are set",
        },
        None if set("MSI_ENDPOINT") && set("MSI_SECRET") => Endpoint::Unsupported {
            platform: "Azure Machine Learning",
            variables: "MSI_ENDPOINT and MSI_SECRET are set",
        },
        None if set("MSI_ENDPOINT") => Endpoint::Unsupported {
            platform: "Cloud Shell",
            variables: "MSI_ENDPOINT is set",
        },
        _ => Endpoint::Imds(
            common::optional(mi.imds_endpoint.as_ref(), IMDS_OVERRIDE_VAR, ctx)
                .map_or_else(|| IMDS_ENDPOINT.to_owned(), |url| url.value),
        ),
    }
}

/// The error for a platform the SDK has no managed identity credential for: unavailable, so `auto` moves on.
fn unsupported(endpoint: &Endpoint, detail: &str) -> CredentialError {
    CredentialError::new(
        ErrorKind::Unavailable,
        KIND,
        format!(
            "this host's managed identity is not one the Azure SDK for Rust supports ({endpoint}{detail})"
        ),
        "choose another credential.kind (in Cloud Shell, az-cli works); pgwi supports App Service, Container \
         Apps, Functions and VMs",
    )
}

/// Records the status of each answer the SDK's pipeline gets, retries included, so that a request cut
/// short by the deadline can say what the endpoint kept answering.
#[derive(Debug, Default)]
struct LastStatus(std::sync::Mutex<Option<u16>>);

#[async_trait]
impl Policy for LastStatus {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let result = match next.split_first() {
            Some((policy, rest)) => policy.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "the pipeline ended before its transport",
            )),
        };
        if let (Ok(response), Ok(mut last)) = (&result, self.0.lock()) {
            *last = Some(u16::from(response.status()));
        }
        result
    }
}

/// Sends the SDK's IMDS requests to another base URL.
#[derive(Debug)]
struct RedirectImds {
    base: Url,
}

#[async_trait]
impl Policy for RedirectImds {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let url = request.url_mut();
        if url.host_str() == Some(SDK_IMDS_HOST) {
            let path = format!("{}{}", self.base.path().trim_end_matches('/'), url.path());
            // Scheme and host of a parsed http(s) base URL are always accepted by an http URL.
            let _ = url.set_scheme(self.base.scheme());
            let _ = url.set_host(self.base.host_str());
            let _ = url.set_port(self.base.port());
            url.set_path(&path);
        }
        match next.split_first() {
            Some((policy, rest)) => policy.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "the pipeline ended before its transport",
            )),
        }
    }
}

/// What the probe found at the metadata address.
#[derive(Debug, PartialEq, Eq)]
enum ProbeAnswer {
    /// An HTTP answer with this status (`None`: an https base URL, where a connection is all it checks).
    Status(Option<u16>),
    /// Something answered, but not with an HTTP status line: what it sent (cut short, lossy).
    NotHttp(String),
}

/// Connects to the metadata service and, over plain HTTP, asks for a token without the `Metadata` header;
/// reads the answer's status line (up to its line break, at most 512 bytes).
async fn probe_status(base: &Url) -> std::io::Result<ProbeAnswer> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = base.host_str().unwrap_or_default();
    let port = base.port_or_known_default().unwrap_or(80);
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    if base.scheme() != "http" {
        return Ok(ProbeAnswer::Status(None));
    }
    let request = format!(
        "GET {}/metadata/identity/oauth2/token?api-version=2018-02-01 HTTP/1.1\r\nHost: {host}\r\n\
         Connection: close\r\n\r\n",
        base.path().trim_end_matches('/')
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(128);
    let mut buffer = [0u8; 128];
    while !head.contains(&b'\n') && head.len() < 512 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(parse_status_line(&head))
}

/// "HTTP/1.1 400 Bad Request": the protocol, then a three-digit status.
fn parse_status_line(head: &[u8]) -> ProbeAnswer {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).trim_end().to_owned())
        .unwrap_or_default();
    let mut words = line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(protocol), Some(status)) if protocol.starts_with("HTTP/") && status.len() == 3 => {
            status.parse().ok()
        }
        _ => None,
    };
    match status {
        Some(status) => ProbeAnswer::Status(Some(status)),
        None if line.is_empty() => {
            ProbeAnswer::NotHttp("nothing before closing the connection".into())
        }
        None => ProbeAnswer::NotHttp(format!("{:?}", line.chars().take(60).collect::<String>())),
    }
}

/// The identity the source asks for, and where that came from.
#[derive(Debug, Clone)]
struct Identity {
    /// `client_id`, `object_id` or `resource_id`.
    key: &'static str,
    value: String,
    /// The configuration key or variable that named it.
    origin: String,
}

impl Identity {
    /// The user-assigned identity named by at most one of `client_id`, `object_id` and `resource_id`,
    /// else by `AZURE_CLIENT_ID`; `None`: the system-assigned identity.
    fn resolve(
        mi: &ManagedIdentityConfig,
        ctx: &SourceContext,
    ) -> Result<Option<Self>, CredentialError> {
        let configured: Vec<(&'static str, &String)> = [
            ("client_id", mi.client_id.as_ref()),
            ("object_id", mi.object_id.as_ref()),
            ("resource_id", mi.resource_id.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)).filter(|(_, v)| !v.trim().is_empty()))
        .collect();
        if configured.len() > 1 {
            let keys: Vec<&str> = configured.iter().map(|(key, _)| *key).collect();
            return Err(CredentialError::configuration(
                KIND,
                format!(
                    "more than one of credential.managed_identity.{} is set",
                    keys.join(", ")
                ),
                "name a user-assigned identity by one of client_id, object_id or resource_id (or none for \
                 the system-assigned identity)",
            ));
        }
        Ok(match configured.first() {
            Some((key, value)) => Some(Self {
                key,
                value: (*value).clone(),
                origin: format!("credential.managed_identity.{key}"),
            }),
            None => ctx.env.get("AZURE_CLIENT_ID").map(|value| Self {
                key: "client_id",
                value,
                origin: "AZURE_CLIENT_ID".into(),
            }),
        })
    }

    /// The identity as the SDK names it.
    fn user_assigned_id(&self) -> UserAssignedId {
        match self.key {
            "object_id" => UserAssignedId::ObjectId(self.value.clone()),
            "resource_id" => UserAssignedId::ResourceId(self.value.clone()),
            _ => UserAssignedId::ClientId(self.value.clone()),
        }
    }
}

/// The policy that sends the SDK's IMDS requests to a configured base URL, when IMDS is the endpoint and
/// the base is not Azure's own.
fn imds_redirect(endpoint: &Endpoint) -> Result<Option<RedirectImds>, CredentialError> {
    let Endpoint::Imds(base) = endpoint else {
        return Ok(None);
    };
    if base.trim_end_matches('/') == IMDS_ENDPOINT {
        return Ok(None);
    }
    let base = Url::parse(base)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
        .ok_or_else(|| {
            CredentialError::configuration(
                KIND,
                format!(
                    "the IMDS endpoint {base:?} (credential.managed_identity.imds_endpoint or \
                     {IMDS_OVERRIDE_VAR}) is not an http(s) URL"
                ),
                format!("use a base URL such as {IMDS_ENDPOINT}, or unset it on Azure"),
            )
        })?;
    Ok(Some(RedirectImds { base }))
}

/// The SDK's refusal to build the credential: a platform it does not support after all, or settings it
/// rejects.
fn sdk_refused(endpoint: &Endpoint, error: &azure_core::Error) -> CredentialError {
    let message = error.to_string();
    if message.contains("isn't supported") && !message.contains("resource ID") {
        // The process environment differs from the context's (the SDK reads the process's).
        unsupported(endpoint, &format!(": {message}"))
    } else {
        CredentialError::configuration(
            KIND,
            format!("the Azure SDK refused the managed identity settings: {message}"),
            "App Service, Container Apps and Functions accept a user-assigned identity by client_id or \
             object_id only, not resource_id",
        )
    }
}

/// Tokens for the compute's managed identity.
pub struct ManagedIdentitySource {
    credential: Arc<ManagedIdentityCredential>,
    scope: String,
    endpoint: Endpoint,
    identity: Option<Identity>,
    /// IMDS answered once: no more probing.
    reachable: AtomicBool,
    /// The whole request's deadline, just inside `credential.fetch_timeout_secs`.
    deadline: Duration,
    last_status: Arc<LastStatus>,
    /// A proxy the SDK's request would go through to reach IMDS (see the module documentation).
    proxy: Option<String>,
}

impl std::fmt::Debug for ManagedIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentitySource")
            .field("endpoint", &self.endpoint)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ManagedIdentitySource {
    /// Resolves which identity and endpoint to use; nothing is contacted yet.
    pub fn new(
        mi: &ManagedIdentityConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let identity = Identity::resolve(mi, ctx)?;
        common::check_scope(KIND, &config.scope)?;
        let endpoint = endpoint(mi, ctx);
        if matches!(endpoint, Endpoint::Unsupported { .. }) {
            return Err(unsupported(&endpoint, ""));
        }
        let proxy = match &endpoint {
            Endpoint::Imds(base) => proxy_for(base, ctx),
            _ => None,
        };
        crate::install_crypto_provider();
        let last_status = Arc::new(LastStatus::default());
        let mut client_options = ctx.azure_client_options.clone().unwrap_or_default();
        client_options.per_try_policies.push(last_status.clone());
        if let Some(redirect) = imds_redirect(&endpoint)? {
            client_options.per_call_policies.push(Arc::new(redirect));
        }
        let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: identity.as_ref().map(Identity::user_assigned_id),
            client_options,
        }))
        .map_err(|e| sdk_refused(&endpoint, &e))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            endpoint,
            identity,
            reachable: AtomicBool::new(false),
            deadline: crate::cache::inner_deadline(Duration::from_secs(config.fetch_timeout_secs))
                .saturating_sub(Duration::from_millis(100)),
            last_status,
            proxy,
        })
    }

    /// Off Azure, IMDS does not answer: a quick request tells, instead of the SDK's minute of retries. The
    /// request leaves out the `Metadata` header, which Azure's IMDS answers with HTTP 400; another cloud's
    /// metadata service at the same address answers otherwise, and counts as no managed identity here.
    async fn probe_imds(&self, base: &str) -> Result<(), CredentialError> {
        if self.reachable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let unavailable = |why: String| {
            CredentialError::new(
                ErrorKind::Unavailable,
                KIND,
                format!("no managed identity endpoint here: {why}"),
                format!(
                    "on an Azure VM, assign it a managed identity; on App Service, Container Apps or \
                     Functions, enable the identity so that IDENTITY_ENDPOINT and IDENTITY_HEADER are set; \
                     elsewhere choose another credential.kind (or set {IMDS_OVERRIDE_VAR} to a metadata \
                     endpoint)"
                ),
            )
        };
        let url = Url::parse(base)
            .ok()
            .filter(|url| url.host_str().is_some())
            .ok_or_else(|| unavailable(format!("{base} has no host")))?;
        match tokio::time::timeout(IMDS_PROBE_TIMEOUT, probe_status(&url)).await {
            Ok(Ok(ProbeAnswer::Status(None | Some(400)))) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(ProbeAnswer::NotHttp(what))) => Err(unavailable(format!(
                "something at {base} answered, but not with HTTP ({what})"
            ))),
            Ok(Ok(ProbeAnswer::Status(Some(status)))) => Err(unavailable(format!(
                "the metadata service at {base} answered HTTP {status} where Azure's answers 400 (another \
                 cloud's?)"
            ))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(unavailable(
                format!("IMDS at {base} refused the connection ({e})"),
            )),
            Ok(Err(e)) => Err(unavailable(format!(
                "IMDS at {base} could not be asked ({e})"
            ))),
            Err(_) => Err(unavailable(format!(
                "IMDS at {base} did not answer within {}s (not an Azure VM?)",
                IMDS_PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The SDK's failure, read from the endpoint's answer (see the module documentation for which answer
    /// means what).
    fn explain(&self, error: &azure_core::Error) -> CredentialError {
        let failure = EntraFailure::from_sdk(error);
        let body = response_body(error);
        let said = body.as_deref().map(summarise).unwrap_or_default();
        let lower = body.as_deref().unwrap_or_default().to_ascii_lowercase();
        let status = failure.status.unwrap_or_default();
        let header_refused = matches!(self.endpoint, Endpoint::AppService(_))
            && match failure.status {
                Some(401 | 403) => true,
                Some(400) => lower.contains("header"),
                _ => false,
            };
        if lower.contains("invalid_resource") || lower.contains("aadsts500011") {
            self.wrong_scope(status, &said)
        } else if header_refused {
            self.header_refused(status, &said)
        } else if failure.status == Some(400) {
            self.no_such_identity(&said)
        } else if let Some(status) = failure.status {
            CredentialError::new(
                ErrorKind::Upstream,
                KIND,
                format!("the {} answered HTTP {status}{said}", self.endpoint),
                "retry; if it persists, check the platform's status (the endpoint is Azure's, on this host)",
            )
        } else {
            self.no_answer(&failure)
        }
    }

    /// The endpoint does not know `credential.scope`'s resource.
    fn wrong_scope(&self, status: u16, said: &str) -> CredentialError {
        CredentialError::configuration(
            KIND,
            format!(
                "the {} does not know the resource of credential.scope ({}): HTTP {status}{said}",
                self.endpoint, self.scope
            ),
            format!(
                "set credential.scope to your cloud's Azure Database for PostgreSQL scope ({} in the public \
                 cloud), or leave it unset",
                crate::POSTGRES_SCOPE
            ),
        )
    }

    /// App Service's endpoint refused `IDENTITY_HEADER`.
    fn header_refused(&self, status: u16, said: &str) -> CredentialError {
        CredentialError::configuration(
            KIND,
            format!(
                "the managed identity endpoint refused the request (HTTP {status}{said}): IDENTITY_HEADER is \
                 not the secret this app's endpoint expects"
            ),
            "do not set IDENTITY_HEADER yourself or copy it from another app or revision: the platform sets \
             it and rotates it on restart; restart the app so the process gets the current value",
        )
    }

    /// HTTP 400: the identity asked for is not assigned here.
    fn no_such_identity(&self, said: &str) -> CredentialError {
        let endpoint = &self.endpoint;
        match &self.identity {
            // Only for the system-assigned identity does a 400 mean "none here": a user-assigned one was
            // named on purpose, and falling through to another source would hide the mistake.
            None => CredentialError::new(
                ErrorKind::Unavailable,
                KIND,
                format!(
                    "the {endpoint} says no system-assigned identity is assigned here (HTTP 400{said})"
                ),
                "enable the system-assigned identity of this VM or app (az vm identity assign / az webapp \
                 identity assign / az containerapp identity assign --system-assigned), or name a \
                 user-assigned identity in credential.managed_identity.client_id",
            ),
            Some(id) => CredentialError::configuration(
                KIND,
                format!(
                    "the {endpoint} has no user-assigned identity with {} {} (from {}) on this VM or app \
                     (HTTP 400{said})",
                    id.key, id.value, id.origin
                ),
                format!(
                    "fix {} to the identity's {} (az identity show --query {}), or assign that identity to \
                     this VM or app (az vm identity assign / az webapp identity assign / az containerapp \
                     identity assign --user-assigned <resource id>)",
                    id.origin,
                    id.key,
                    match id.key {
                        "object_id" => "principalId",
                        "resource_id" => "id",
                        _ => "clientId",
                    }
                ),
            ),
        }
    }

    /// No HTTP answer at all: the network path, or a proxy that cannot reach the metadata service.
    fn no_answer(&self, failure: &EntraFailure) -> CredentialError {
        let fix = match &self.proxy {
            Some(proxy) => format!(
                "{proxy} is set and the SDK's request goes through it, but a proxy cannot reach the metadata \
                 service: add 169.254.169.254 to NO_PROXY"
            ),
            None => {
                "check that the identity endpoint answers from this host; off Azure choose another \
                     credential.kind"
                    .to_owned()
            }
        };
        CredentialError::new(
            ErrorKind::Upstream,
            KIND,
            format!(
                "no token from the {}: {}",
                self.endpoint, failure.description
            ),
            fix,
        )
    }

    /// The error when the SDK's request (with its own retries) outlives the deadline.
    fn too_slow(&self) -> CredentialError {
        let last = self.last_status.0.lock().ok().and_then(|s| *s);
        CredentialError::new(
            ErrorKind::Timeout,
            KIND,
            format!(
                "no token from the {} within {:.1}s (credential.fetch_timeout_secs){}",
                self.endpoint,
                self.deadline.as_secs_f64(),
                match last {
                    Some(status) =>
                        format!("; it kept answering HTTP {status}, which the SDK retries"),
                    None => String::new(),
                }
            ),
            "IMDS answers 404/410 for a while after an identity is assigned or the VM starts: retry shortly; if \
             it persists, check the platform's status, or raise credential.fetch_timeout_secs",
        )
    }
}

/// The body of the HTTP answer inside an SDK error, if any (the SDK's own message replaces it for a 400).
fn response_body(error: &azure_core::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(sdk) = e.downcast_ref::<azure_core::Error>()
            && let azure_core::error::ErrorKind::HttpResponse {
                raw_response: Some(response),
                ..
            } = sdk.kind()
        {
            let body = String::from_utf8_lossy(response.body().as_ref())
                .trim()
                .to_owned();
            return (!body.is_empty()).then_some(body);
        }
        current = e.source();
    }
    None
}

/// What an endpoint's error body says, as `: <text>` for an error's problem: its `error_description`,
/// `message` or `error` field when it is JSON, else the text; at most 300 characters.
fn summarise(body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let text = json
        .as_ref()
        .and_then(|json| {
            ["error_description", "message", "error"]
                .iter()
                .find_map(|field| json.get(field).and_then(|v| v.as_str()))
        })
        .unwrap_or(body);
    format!(": {}", text.chars().take(300).collect::<String>())
}

/// The proxy variable the SDK's request to IMDS at `base` would use, unless `NO_PROXY` exempts its host.
fn proxy_for(base: &str, ctx: &SourceContext) -> Option<String> {
    let host = Url::parse(base).ok()?.host_str()?.to_owned();
    let exempt = ["NO_PROXY", "no_proxy"]
        .iter()
        .filter_map(|var| ctx.env.get(var))
        .any(|list| {
            list.split(',')
                .map(str::trim)
                .any(|entry| entry == "*" || entry == host)
        });
    if exempt {
        return None;
    }
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find(|var| ctx.env.get(var).is_some())
        .map(|var| (*var).to_owned())
}

#[async_trait]
impl TokenSource for ManagedIdentitySource {
    async fn token(&self) -> Result<Token, CredentialError> {
        let started = tokio::time::Instant::now();
        if let Endpoint::Imds(base) = &self.endpoint {
            self.probe_imds(base).await?;
        }
        if let Ok(mut last) = self.last_status.0.lock() {
            *last = None;
        }
        let request = common::sdk_token(self.credential.as_ref(), KIND, &self.scope);
        match tokio::time::timeout_at(started + self.deadline, request).await {
            Ok(token) => token.map_err(|e| self.explain(&e)),
            Err(_) => Err(self.too_slow()),
        }
    }

    fn info(&self) -> SourceInfo {
        let info = SourceInfo::new(KIND).with(
            "endpoint",
            match &self.endpoint {
                Endpoint::AppService(url) => format!("app-service {url}"),
                Endpoint::Imds(url) => format!("imds {url}"),
                Endpoint::Unsupported { platform, .. } => format!("unsupported {platform}"),
            },
        );
        match &self.identity {
            Some(id) => info.with(id.key, &id.value),
            None => info.with("identity", "system-assigned"),
        }
    }
}
