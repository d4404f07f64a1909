//! JWT-shaped test tokens: projected service-account tokens and Entra access tokens.
//!
//! [`encode`] makes tokens whose signatures are random bytes, for inputs nothing verifies (the projected
//! service-account token, az's tokens where no server judges them). [`sign_compact`] makes HS256 tokens that
//! the test PostgreSQL's token checker verifies with the server's key ([`crate::TestPostgres::token_signing_key`]),
//! as Azure verifies Entra's signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

/// The audience AKS projects for workload identity.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The audience of Entra tokens for Azure Database for PostgreSQL (`aud`), which the test server requires.
pub const POSTGRES_AUDIENCE: &str = "https://ossrdbms-aad.database.windows.net";
/// The longest token the test server can check: PAM hands its checker at most 511 bytes of a password
/// (`PAM_MAX_RESP_SIZE` 512, NUL included); we keep one byte of margin.
pub const MAX_CHECKABLE_TOKEN_LEN: usize = 510;

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Encodes `claims` as an unsigned-in-effect JWT (`header.payload.signature`).
pub fn encode(claims: &Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "pgwi-test"});
    let signature: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(64)
        .collect();
    let token = format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&signature)
    );
    crate::secrets::register(&token);
    token
}

/// Signs `claims` as a compact HS256 JWT (`{"alg":"HS256","typ":"JWT"}`) with `key`. With the test server's
/// key ([`crate::TestPostgres::token_signing_key`]) and the right `aud`, identity claim and `exp`, the server
/// accepts it for a token role; anything else it refuses, as Azure would.
pub fn sign_compact(claims: &Value, key: &[u8]) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signed = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        signed.as_bytes(),
    );
    let token = format!("{signed}.{}", b64(tag.as_ref()));
    crate::secrets::register(&token);
    token
}

/// What a projected service-account token says.
#[derive(Debug, Clone)]
pub struct ServiceAccountToken {
    /// The cluster's OIDC issuer URL.
    pub issuer: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's ServiceAccount.
    pub service_account: String,
    /// The audience (AKS: [`TOKEN_EXCHANGE_AUDIENCE`]).
    pub audience: String,
    /// How long it is valid from now.
    pub lifetime: Duration,
}

impl Default for ServiceAccountToken {
    fn default() -> Self {
        Self {
            issuer: "https://oidc.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/".into(),
            namespace: "app".into(),
            service_account: "app".into(),
            audience: TOKEN_EXCHANGE_AUDIENCE.into(),
            lifetime: Duration::from_secs(3600),
        }
    }
}

impl ServiceAccountToken {
    /// `system:serviceaccount:<namespace>:<serviceaccount>`.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The token, JWT-shaped, as the kubelet would project it.
    pub fn encode(&self) -> String {
        let now = unix_now();
        encode(&json!({
            "aud": [self.audience],
            "exp": now + self.lifetime.as_secs() as i64,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "sub": self.subject(),
            "kubernetes.io": {
                "namespace": self.namespace,
                "serviceaccount": {"name": self.service_account, "uid": "6d1a0bfc-0000-4000-8000-000000000000"}
            }
        }))
    }
}
