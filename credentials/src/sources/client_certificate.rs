//! `client-certificate`: a service principal that proves itself with a certificate.
//!
//! `azure_identity`'s own certificate credential needs openssl, which pgwi does not link. Instead this
//! module signs the client assertion itself — an RS256 JWT with the certificate's SHA-256 (`x5t#S256`) and
//! SHA-1 (`x5t`) thumbprints in its header, `x5c` with the chain when asked, and `aud` = the tenant's token
//! endpoint, `iss` = `sub` = the client id, a `jti`, `nbf` and a 10-minute `exp` — with `ring`, and hands it
//! to `azure_identity::ClientAssertionCredential`.
//!
//! The file is PEM with the certificate (and chain) and an unencrypted private key (PKCS#8 or PKCS#1 RSA).
//! PFX files and encrypted keys are refused with the `openssl` command that converts them: no well-kept
//! pure-Rust PKCS#12 reader fits without a second copy of crates already in the tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::ClientMethodOptions;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
};
use base64::Engine as _;
use ring::signature::RsaKeyPair;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::common::{self, EntraApp, EntraKeys, Resolved};
use crate::{
    CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceKind, Token, TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "client-certificate";

/// Keys of the `client-certificate` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The Entra tenant id. Falls back to `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// The application's client id. Falls back to `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// A PEM file with the certificate (and its chain) and its unencrypted private key. Falls back to
    /// `AZURE_CLIENT_CERTIFICATE_PATH`.
    pub certificate_path: Option<PathBuf>,
    /// A file holding the certificate's password (encrypted keys and PFX files are refused with the command
    /// that converts them).
    pub password_file: Option<PathBuf>,
    /// The variable holding the certificate's password. Default `AZURE_CLIENT_CERTIFICATE_PASSWORD`.
    pub password_env: String,
    /// Send the certificate chain (`x5c`) for subject-name/issuer authentication. Falls back to
    /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`; default false.
    pub send_certificate_chain: Option<bool>,
    /// Entra ID's base URL. Falls back to `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl Default for ClientCertificateConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            certificate_path: None,
            password_file: None,
            password_env: "AZURE_CLIENT_CERTIFICATE_PASSWORD".into(),
            send_certificate_chain: None,
            authority_host: None,
        }
    }
}

/// How long a signed assertion is valid: Entra only needs it for the one request.
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// The `client-certificate` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertificateKind;

impl SourceKind for ClientCertificateKind {
    const NAME: &'static str = KIND;
    const CHAIN_POSITION: Option<u16> = Some(30);
    type Config = ClientCertificateConfig;

    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        Ok(credential.client_certificate.clone())
    }

    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        Ok(Arc::new(ClientCertificateSource::new(
            config, credential, ctx,
        )?))
    }

    fn presence(
        &self,
        config: &Self::Config,
        _credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        match certificate_path(config, ctx) {
            Some(path) => Ok(format!(
                "a service principal's certificate {} ({})",
                path.value.display(),
                path.origin
            )),
            None => Err(no_certificate()),
        }
    }
}

const CLIENT_ID_FIX: &str = "set AZURE_CLIENT_ID or credential.client_certificate.client_id to the \
     application's client id (az ad app list --display-name <name> --query [].appId)";

/// The certificate file's path when one is configured or `AZURE_CLIENT_CERTIFICATE_PATH` is set: what
/// `auto` checks before trying this source.
pub fn certificate_path(
    cc: &ClientCertificateConfig,
    ctx: &SourceContext,
) -> Option<Resolved<PathBuf>> {
    common::optional(
        cc.certificate_path
            .as_ref()
            .map(|p| p.display().to_string())
            .as_ref(),
        "AZURE_CLIENT_CERTIFICATE_PATH",
        ctx,
    )
    .map(|path| path.map(PathBuf::from))
}

/// Whether to send the certificate chain (`x5c`): configured, else `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`.
fn send_chain(cc: &ClientCertificateConfig, ctx: &SourceContext) -> bool {
    cc.send_certificate_chain.unwrap_or_else(|| {
        ctx.env
            .get("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "True" | "TRUE"))
    })
}

/// The certificate and key, ready to sign.
struct Signer {
    key: RsaKeyPair,
    /// The JWT header, base64url-encoded.
    header: String,
    /// SHA-1 thumbprint of the leaf certificate, upper-case hex, as the portal shows it.
    thumbprint_sha1: String,
}

/// Builds a fresh client assertion for every token request.
struct CertificateAssertion {
    signer: Arc<Signer>,
    client_id: String,
    audience: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("thumbprint", &self.signer.thumbprint_sha1)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl CertificateAssertion {
    fn sign(&self) -> Result<String, ring::error::Unspecified> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let jti: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": jti,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signed = format!(
            "{}.{}",
            self.signer.header,
            b64url(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.signer.key.public().modulus_len()];
        self.signer.key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )?;
        Ok(format!("{signed}.{}", b64url(&signature)))
    }
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.sign().map_err(|_| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "signing the client assertion with the certificate's key failed",
            )
        })
    }
}

/// The `openssl` commands that turn what pgwi cannot read into what it can.
fn conversion_fix(path: &Path) -> String {
    format!(
        "pgwi reads a PEM file with the certificate and an unencrypted private key; convert a PFX file with \
         `openssl pkcs12 -in {0} -out {0}.pem -nodes` (it asks for the password), or decrypt a PEM key with \
         `openssl pkey -in key.pem -out key-plain.pem` and put the certificate and that key in one file; \
         keep the result readable only by this user and point credential.client_certificate.certificate_path \
         (or AZURE_CLIENT_CERTIFICATE_PATH) at it",
        path.display()
    )
}

/// Reads the certificate chain and the RSA key from a PEM file; `chain` puts the certificates in `x5c`.
fn load_signer(path: &Path, chain: bool, password_given: bool) -> Result<Signer, CredentialError> {
    let bytes = read_pem_file(path, password_given)?;
    let certificates = read_certificates(path, &bytes)?;
    let key = read_rsa_key(path, &bytes)?;
    let leaf = &certificates[0];
    let sha256 = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf.as_ref());
    let mut header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t#S256": b64url(sha256.as_ref()),
        "x5t": b64url(sha1.as_ref()),
    });
    if chain {
        header["x5c"] = certificates
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
            .collect();
    }
    Ok(Signer {
        key,
        header: b64url(header.to_string().as_bytes()),
        thumbprint_sha1: sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect(),
    })
}

/// The file's bytes, refused with the conversion command when they are not PEM or the key is encrypted.
fn read_pem_file(path: &Path, password_given: bool) -> Result<Vec<u8>, CredentialError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CredentialError::new(
            crate::ErrorKind::MissingInput,
            KIND,
            format!("cannot read the certificate file {}: {e}", path.display()),
            "check credential.client_certificate.certificate_path (or AZURE_CLIENT_CERTIFICATE_PATH) and \
             that this user may read the file",
        )
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let problem = if !text.contains("-----BEGIN") {
        format!(
            "the certificate file {} is not PEM (a PFX/PKCS#12 or DER file?)",
            path.display()
        )
    } else if text.contains("ENCRYPTED") {
        format!(
            "the private key in {} is encrypted{}",
            path.display(),
            if password_given {
                " (pgwi does not decrypt keys, even with the configured password)"
            } else {
                ""
            }
        )
    } else {
        return Ok(bytes);
    };
    Err(CredentialError::configuration(
        KIND,
        problem,
        conversion_fix(path),
    ))
}

/// The PEM certificates, leaf first; at least one.
fn read_certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            CredentialError::configuration(
                KIND,
                format!("the certificates in {} cannot be read: {e}", path.display()),
                "the file must hold PEM CERTIFICATE blocks (leaf first) and the private key",
            )
        })?;
    if certificates.is_empty() {
        return Err(CredentialError::configuration(
            KIND,
            format!("{} holds no certificate", path.display()),
            "put the certificate (-----BEGIN CERTIFICATE-----) in the file, before its chain, with the key",
        ));
    }
    Ok(certificates)
}

/// The unencrypted RSA private key (PKCS#8 or PKCS#1): Entra ID needs RS256 assertions.
fn read_rsa_key(path: &Path, bytes: &[u8]) -> Result<RsaKeyPair, CredentialError> {
    let no_key = |why: String| {
        CredentialError::configuration(
            KIND,
            format!("{} holds no usable private key: {why}", path.display()),
            "put the certificate's RSA private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE \
             KEY-----, unencrypted) in the same file",
        )
    };
    match PrivateKeyDer::from_pem_slice(bytes).map_err(|e| no_key(e.to_string()))? {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => {
            return Err(no_key(
                "it is not an RSA key; Entra ID needs RS256 assertions".into(),
            ));
        }
    }
    .map_err(|e| no_key(format!("not an RSA key ring accepts ({e})")))
}

/// Tokens for a service principal that proves itself with a certificate.
pub struct ClientCertificateSource {
    credential: Arc<ClientAssertionCredential<CertificateAssertion>>,
    scope: String,
    app: EntraApp,
    certificate_path: PathBuf,
    thumbprint: String,
    send_chain: bool,
}

impl std::fmt::Debug for ClientCertificateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificateSource")
            .field("app", &self.app)
            .field("certificate_path", &self.certificate_path)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// What is missing when no certificate is named: the constructor's problem and `auto`'s reason to skip.
pub fn no_certificate() -> String {
    "AZURE_CLIENT_CERTIFICATE_PATH is not set and credential.client_certificate.certificate_path is not \
     configured"
        .into()
}

/// The token endpoint the SDK posts to, built as the SDK builds it (`Url::join` of an absolute path on the
/// authority host, which normalises it and drops any path the host has): the assertion's `aud` must be
/// exactly that URL.
fn token_endpoint(app: &EntraApp) -> Result<String, CredentialError> {
    azure_core::http::Url::parse(&app.authority_host)
        .and_then(|host| host.join(&format!("/{}/oauth2/v2.0/token", app.tenant_id.value)))
        .map(String::from)
        .map_err(|e| {
            CredentialError::configuration(
                KIND,
                format!(
                    "the authority host {:?} (AZURE_AUTHORITY_HOST or credential.client_certificate.authority_host) \
                     is not a URL: {e}",
                    app.authority_host
                ),
                format!("use Entra ID's https URL for your cloud, e.g. {}", common::PUBLIC_AUTHORITY_HOST),
            )
        })
}

impl ClientCertificateSource {
    /// Resolves the settings (configuration first, then the environment) and reads the certificate.
    pub fn new(
        cc: &ClientCertificateConfig,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Self, CredentialError> {
        let app = EntraApp::resolve(
            KIND,
            EntraKeys {
                table: "client_certificate",
                tenant_id: cc.tenant_id.as_ref(),
                client_id: cc.client_id.as_ref(),
                authority_host: cc.authority_host.as_ref(),
                client_id_fix: CLIENT_ID_FIX,
                missing_fix: None,
            },
            ctx,
        )?;
        let certificate_path = certificate_path(cc, ctx)
            .ok_or_else(|| {
                CredentialError::configuration(
                    KIND,
                    no_certificate(),
                    "point one of them at a PEM file with the certificate and its private key",
                )
            })?
            .value;
        let send_chain = send_chain(cc, ctx);
        let password_given = cc.password_file.is_some() || ctx.env.get(&cc.password_env).is_some();
        let signer = load_signer(&certificate_path, send_chain, password_given)?;
        common::check_scope(KIND, &config.scope)?;
        let thumbprint = signer.thumbprint_sha1.clone();
        let assertion = CertificateAssertion {
            signer: Arc::new(signer),
            client_id: app.client_id.value.clone(),
            audience: token_endpoint(&app)?,
        };
        let credential = ClientAssertionCredential::new(
            app.tenant_id.value.clone(),
            app.client_id.value.clone(),
            assertion,
            Some(ClientAssertionCredentialOptions {
                client_options: app.client_options(ctx),
            }),
        )
        .map_err(|e| app.rejected(&e))?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            app,
            certificate_path,
            thumbprint,
            send_chain,
        })
    }
}

#[async_trait]
impl TokenSource for ClientCertificateSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        common::sdk_token(self.credential.as_ref(), KIND, &self.scope)
            .await
            .map_err(|e| {
                self.app.refusal(
                    &e,
                    format!(
                        "the certificate in {} has SHA-1 thumbprint {}",
                        self.certificate_path.display(),
                        self.thumbprint
                    ),
                )
            })
    }

    fn info(&self) -> SourceInfo {
        self.app.info(&[
            ("certificate", self.certificate_path.display().to_string()),
            ("thumbprint", self.thumbprint.clone()),
            ("send_certificate_chain", self.send_chain.to_string()),
        ])
    }
}
