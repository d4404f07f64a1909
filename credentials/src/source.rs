//! The `TokenSource` trait: anything that yields the password for the next new database connection.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{CachedTokenSource, CredentialError, Token};

/// Yields the password for the next NEW database connection.
///
/// Implementations must keep secrets out of `Debug`, `Display`, logs and errors.
#[async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// The current password (a token with its expiry, or a static password without one).
    async fn token(&self) -> Result<Token, CredentialError>;

    /// A short, secret-free description for logs and diagnostics.
    fn info(&self) -> SourceInfo;

    /// This source as a [`CachedTokenSource`], when it is one: callers that need a cache (pgwi-core's pool)
    /// use it as it is instead of putting a second cache in front.
    fn as_cached(self: Arc<Self>) -> Option<Arc<CachedTokenSource>> {
        None
    }
}

/// What a source is, without secrets: its kind and the settings that identify it (client id, tenant, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The kind, as named in configuration (`workload-identity`, ...).
    pub kind: String,
    /// Identifying settings, e.g. `("client_id", "…")`. Never a secret.
    pub details: Vec<(&'static str, String)>,
}

impl SourceInfo {
    /// A description of `kind` with no details yet.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            details: Vec::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.details.push((key, value.into()));
        self
    }

    /// The value of a detail.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.details.is_empty() {
            let details: Vec<String> = self
                .details
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for dyn TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.info().fmt(f)
    }
}
