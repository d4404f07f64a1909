//! Secrets in a type whose `Debug` and `Display` never show them; the value is exposed only where used.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A password or token, wiped from memory when dropped. `Debug` prints `SecretString(<redacted>)` and serializing writes `"<redacted>"`, so
/// a configuration dump never carries it; read it with [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

/// What a [`SecretString`] serializes as.
pub const REDACTED: &str = "<redacted>";

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself: call this only where it is handed to the database or the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (or only white space).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// The bytes are wiped when the value is dropped, so a token or password does not linger in freed memory.
impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}
