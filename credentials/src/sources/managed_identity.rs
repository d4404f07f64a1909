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
//! The SDK reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` from the process environment itself; the source
//! reads them through [`SourceContext::env`] only to describe itself and decide whether to probe IMDS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};

use super::common;
use crate::entra::EntraFailure;
use crate::{
    CredentialConfig, CredentialError, ErrorKind, SourceContext, SourceInfo, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "managed-identity";
/// Where IMDS answers on Azure.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The variable other Azure SDKs read for another IMDS address.
pub const IMDS_OVERRIDE_VAR: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// How long the IMDS probe waits for a TCP connection.
pub const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The address the SDK sends IMDS requests to.
const SDK_IMDS_HOST: &str = "169.254.169.254";

/// Which endpoint the SDK will ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// App Service, Container Apps, Functions: `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`.
    AppService(String),
    /// A virtual machine's instance metadata service at this base URL.
    Imds(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AppService(url) => write!(f, "App Service endpoint {url} (IDENTITY_ENDPOINT)"),
            Self::Imds(url) => write!(f, "IMDS at {url}"),
        }
    }
}

/// The endpoint the source uses in this environment: what `auto` and `pgwi doctor` describe.
pub fn endpoint(config: &CredentialConfig, ctx: &SourceContext) -> Endpoint {
    match (
        ctx.env.get("IDENTITY_ENDPOINT"),
        ctx.env.get("IDENTITY_HEADER"),
    ) {
        (Some(url), Some(_)) => Endpoint::AppService(url),
        _ => Endpoint::Imds(
            common::optional(
                config.managed_identity.imds_endpoint.as_ref(),
                IMDS_OVERRIDE_VAR,
                ctx,
            )
            .map_or_else(|| IMDS_ENDPOINT.to_owned(), |(url, _)| url),
        ),
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

/// Connects to the metadata service and, over plain HTTP, asks for a token without the `Metadata` header:
/// the answer's status (`None` for an https base URL, where a connection is all the probe checks).
async fn probe_status(base: &Url) -> std::io::Result<Option<u16>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = base.host_str().unwrap_or_default();
    let port = base.port_or_known_default().unwrap_or(80);
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    if base.scheme() != "http" {
        return Ok(None);
    }
    let request = format!(
        "GET {}/metadata/identity/oauth2/token?api-version=2018-02-01 HTTP/1.1\r\nHost: {host}\r\n\
         Connection: close\r\n\r\n",
        base.path().trim_end_matches('/')
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).await?;
    // "HTTP/1.1 400 Bad Request": the status is the second word.
    String::from_utf8_lossy(&head[..read])
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .map(Some)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// Tokens for the compute's managed identity.
pub struct ManagedIdentitySource {
    credential: Arc<ManagedIdentityCredential>,
    scope: String,
    endpoint: Endpoint,
    identity: Option<(&'static str, String)>,
    /// IMDS answered once: no more probing.
    reachable: AtomicBool,
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
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let mi = &config.managed_identity;
        let configured: Vec<(&'static str, &String)> = [
            ("client_id", mi.client_id.as_ref()),
            ("object_id", mi.object_id.as_ref()),
            ("resource_id", mi.resource_id.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)).filter(|(_, v)| !v.trim().is_empty()))
        .collect();
        if configured.len() > 1 {
            return Err(CredentialError::configuration(
                KIND,
                format!(
                    "more than one of credential.managed_identity.{} is set",
                    configured
                        .iter()
                        .map(|(key, _)| *key)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "name a user-assigned identity by one of client_id, object_id or resource_id (or none for \
                 the system-assigned identity)",
            ));
        }
        let identity = match configured.first() {
            Some((key, value)) => Some((*key, (*value).clone())),
            None => ctx.env.get("AZURE_CLIENT_ID").map(|id| ("client_id", id)),
        };
        let user_assigned_id = identity.as_ref().map(|(key, value)| match *key {
            "object_id" => UserAssignedId::ObjectId(value.clone()),
            "resource_id" => UserAssignedId::ResourceId(value.clone()),
            _ => UserAssignedId::ClientId(value.clone()),
        });
        common::check_scope(KIND, &config.scope)?;
        let endpoint = endpoint(config, ctx);
        crate::install_crypto_provider();
        let mut client_options = ctx.azure_client_options.clone().unwrap_or_default();
        if let Endpoint::Imds(base) = &endpoint
            && base.trim_end_matches('/') != IMDS_ENDPOINT
        {
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
            client_options
                .per_call_policies
                .push(Arc::new(RedirectImds { base }));
        }
        let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id,
            client_options,
        }))
        .map_err(|e| {
            let message = e.to_string();
            if message.contains("isn't supported") && !message.contains("resource ID") {
                // Azure Arc, Cloud Shell, Service Fabric, Azure ML: the SDK has no credential for them.
                CredentialError::new(
                    ErrorKind::Unavailable,
                    KIND,
                    format!("this host's managed identity is not one the Azure SDK for Rust supports ({message})"),
                    "choose another credential.kind (in Cloud Shell, az-cli works); pgwi supports App Service, \
                     Container Apps, Functions and VMs",
                )
            } else {
                CredentialError::configuration(
                    KIND,
                    format!("the Azure SDK refused the managed identity settings: {message}"),
                    "App Service, Container Apps and Functions accept a user-assigned identity by client_id \
                     or object_id only, not resource_id",
                )
            }
        })?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            endpoint,
            identity,
            reachable: AtomicBool::new(false),
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
            Ok(Ok(None | Some(400))) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(Some(status))) => Err(unavailable(format!(
                "the metadata service at {base} answered HTTP {status} where Azure's answers 400 (another \
                 cloud's?)"
            ))),
            Ok(Err(e)) => Err(unavailable(format!(
                "IMDS at {base} refused the connection ({e})"
            ))),
            Err(_) => Err(unavailable(format!(
                "IMDS at {base} did not answer within {}s (not an Azure VM?)",
                IMDS_PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    fn explain(&self, error: &azure_core::Error) -> CredentialError {
        let failure = EntraFailure::from_sdk(error);
        let identity = match &self.identity {
            Some((key, value)) => format!("the user-assigned identity with {key} {value}"),
            None => "the system-assigned identity".to_owned(),
        };
        let (kind, problem, fix) = match (&self.endpoint, failure.status) {
            (Endpoint::AppService(_), Some(401 | 403)) => (
                ErrorKind::Configuration,
                format!(
                    "the managed identity endpoint refused the request (HTTP {}): IDENTITY_HEADER is not \
                     the secret this app's endpoint expects",
                    failure.status.unwrap_or_default()
                ),
                "do not set IDENTITY_HEADER yourself or copy it from another app or revision: the platform \
                 sets it and rotates it on restart; restart the app so the process gets the current value"
                    .to_owned(),
            ),
            (_, Some(400 | 404)) => (
                ErrorKind::Unavailable,
                format!(
                    "the {} says {identity} is not assigned here (HTTP {}): {}",
                    self.endpoint,
                    failure.status.unwrap_or_default(),
                    failure.description
                ),
                "assign the identity to this VM or app (az vm identity assign / az webapp identity assign / \
                 az containerapp identity assign), or fix credential.managed_identity.client_id (or \
                 AZURE_CLIENT_ID)"
                    .to_owned(),
            ),
            (_, Some(status)) => (
                ErrorKind::Upstream,
                format!("the {} answered HTTP {status}: {}", self.endpoint, failure.description),
                "retry; if it persists, check the platform's status (the endpoint is Azure's, on this host)"
                    .to_owned(),
            ),
            (_, None) => (
                ErrorKind::Upstream,
                format!("no token from the {}: {}", self.endpoint, failure.description),
                "check that the identity endpoint answers from this host; off Azure choose another \
                 credential.kind"
                    .to_owned(),
            ),
        };
        CredentialError::new(kind, KIND, problem, fix)
    }
}

#[async_trait]
impl TokenSource for ManagedIdentitySource {
    async fn token(&self) -> Result<Token, CredentialError> {
        if let Endpoint::Imds(base) = &self.endpoint {
            self.probe_imds(base).await?;
        }
        common::sdk_token(self.credential.as_ref(), KIND, &self.scope)
            .await
            .map_err(|e| self.explain(&e))
    }

    fn info(&self) -> SourceInfo {
        let info = SourceInfo::new(KIND).with(
            "endpoint",
            match &self.endpoint {
                Endpoint::AppService(url) => format!("app-service {url}"),
                Endpoint::Imds(url) => format!("imds {url}"),
            },
        );
        match &self.identity {
            Some((key, value)) => info.with(key, value),
            None => info.with("identity", "system-assigned"),
        }
    }
}
