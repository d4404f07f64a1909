//! The password for the next new connection, and the non-secret claims one can read from a JWT.

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::SecretString;

/// A password for new connections: an Entra access token (with its expiry) or a static password (none).
#[derive(Clone)]
pub struct Token {
    secret: SecretString,
    expires_at: Option<OffsetDateTime>,
}

impl Token {
    /// A token that expires at `expires_at` (`None`: never, as for a static password). When the secret is a
    /// JWT whose `exp` comes earlier, that is the expiry: the server judges the token by its `exp`, while an
    /// SDK's `expires_on` (receipt time plus `expires_in`) can overshoot it by the request's latency.
    pub fn new(secret: impl Into<SecretString>, expires_at: Option<OffsetDateTime>) -> Self {
        let secret = secret.into();
        let claimed = expires_at
            .and_then(|_| Claims::decode_unverified(secret.expose()))
            .and_then(|claims| claims.expires_at());
        let expires_at = match (expires_at, claimed) {
            (Some(given), Some(exp)) => Some(given.min(exp)),
            (given, _) => given,
        };
        Self { secret, expires_at }
    }

    /// The secret to present as the password.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// When it stops being accepted, if ever.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// True while it has not expired at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|exp| exp > now)
    }

    /// The token's claims, when it is a JWT (decoded, not verified). `None` for static passwords.
    pub fn claims(&self) -> Option<Claims> {
        Claims::decode_unverified(self.secret.expose())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The payload of a JWT, decoded without verifying its signature: for diagnostics and to derive names,
/// never to make a trust decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Decodes the middle part of `jwt`. `None` when it is not a JWT.
    pub fn decode_unverified(jwt: &str) -> Option<Self> {
        let mut parts = jwt.trim().split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some(Self(map)),
            _ => None,
        }
    }

    /// A claim as text (strings as they are, other values as JSON).
    pub fn get(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => Some(other.to_string()),
        }
    }

    /// The `exp` claim as a time.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        let exp = self.0.get("exp")?.as_i64()?;
        OffsetDateTime::from_unix_timestamp(exp).ok()
    }

    /// The database user name Azure expects for this token, derived the way Microsoft's own helpers do: a
    /// managed identity's name from the last segment of `xms_mirid`, else `upn`, `preferred_username` or
    /// `unique_name`.
    pub fn database_user(&self) -> Option<String> {
        if let Some(mirid) = self.get("xms_mirid")
            && let Some(name) = mirid.rsplit('/').next().filter(|s| !s.is_empty())
        {
            return Some(name.to_owned());
        }
        ["upn", "preferred_username", "unique_name"]
            .iter()
            .find_map(|claim| self.get(claim))
    }
}
