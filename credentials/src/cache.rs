//! A cache that any source can sit behind: one upstream request at a time, refresh ahead of expiry, and the
//! last good token served while a refresh fails and the token is still valid.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{CredentialError, SourceInfo, Token, TokenSource};

/// How the cache refreshes.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Refresh once a token is this close to its expiry. Default 5 minutes.
    pub refresh_margin: Duration,
    /// The first wait after a failed refresh; doubles per failure, jittered by ±50%. Default 1 s.
    pub min_backoff: Duration,
    /// The longest wait between failed refreshes. Default 60 s.
    pub max_backoff: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Figures for diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheStats {
    /// Requests that reached the source.
    pub upstream_fetches: u64,
    /// Of those, how many failed.
    pub failed_fetches: u64,
    /// When a token was last fetched successfully.
    pub last_refresh: Option<OffsetDateTime>,
    /// The last failure, if the last fetch failed (secret-free).
    pub last_error: Option<String>,
    /// When the cached token expires.
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Default)]
struct RetryState {
    consecutive_failures: u32,
    next_attempt: Option<Instant>,
    last_error: Option<CredentialError>,
}

/// A [`TokenSource`] in front of another: see the module documentation.
///
/// Tokens without an expiry (static passwords) are not cached: their source is asked every time, so a
/// re-read password file takes effect at once.
pub struct CachedTokenSource {
    inner: Arc<dyn TokenSource>,
    options: CacheOptions,
    current: RwLock<Option<Token>>,
    refresh: tokio::sync::Mutex<RetryState>,
    stats: Mutex<CacheStats>,
}

impl std::fmt::Debug for CachedTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTokenSource")
            .field("inner", &self.inner)
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl CachedTokenSource {
    /// Puts a cache in front of `inner`.
    pub fn new(inner: Arc<dyn TokenSource>, options: CacheOptions) -> Self {
        Self {
            inner,
            options,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RetryState::default()),
            stats: Mutex::new(CacheStats::default()),
        }
    }

    /// The options in force.
    pub fn options(&self) -> CacheOptions {
        self.options
    }

    /// The source behind the cache.
    pub fn inner(&self) -> &Arc<dyn TokenSource> {
        &self.inner
    }

    /// A snapshot of the figures.
    pub fn stats(&self) -> CacheStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn cached(&self) -> Option<Token> {
        self.current.read().ok().and_then(|t| t.clone())
    }

    fn is_fresh(&self, token: &Token, now: OffsetDateTime) -> bool {
        token
            .expires_at()
            .is_some_and(|exp| exp - self.options.refresh_margin > now)
    }

    fn update_stats(&self, update: impl FnOnce(&mut CacheStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            update(&mut stats);
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let base = self
            .options
            .min_backoff
            .saturating_mul(1 << exponent)
            .min(self.options.max_backoff);
        base.mul_f64(0.5 + fastrand::f64())
    }

    async fn fetch(&self, retry: &mut RetryState) -> Result<Token, CredentialError> {
        let result = self.inner.token().await;
        let now = OffsetDateTime::now_utc();
        match result {
            Ok(token) => {
                *retry = RetryState::default();
                if token.expires_at().is_some()
                    && let Ok(mut current) = self.current.write()
                {
                    *current = Some(token.clone());
                }
                self.update_stats(|s| {
                    s.upstream_fetches += 1;
                    s.last_refresh = Some(now);
                    s.last_error = None;
                    s.expires_at = token.expires_at();
                });
                tracing::debug!(source = %self.inner, expires_at = ?token.expires_at(), "token fetched");
                Ok(token)
            }
            Err(error) => {
                retry.consecutive_failures += 1;
                let wait = self.backoff(retry.consecutive_failures);
                retry.next_attempt = Some(Instant::now() + wait);
                retry.last_error = Some(error.clone());
                self.update_stats(|s| {
                    s.upstream_fetches += 1;
                    s.failed_fetches += 1;
                    s.last_error = Some(error.to_string());
                });
                match self.cached().filter(|t| t.is_valid_at(now)) {
                    Some(last_good) => {
                        tracing::warn!(
                            source = %self.inner,
                            %error,
                            expires_at = ?last_good.expires_at(),
                            retry_in_ms = wait.as_millis() as u64,
                            "token refresh failed; serving the last good token while it is valid"
                        );
                        Ok(last_good)
                    }
                    None => {
                        tracing::error!(source = %self.inner, %error, "token fetch failed");
                        Err(error)
                    }
                }
            }
        }
    }
}

#[async_trait]
impl TokenSource for CachedTokenSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        let now = OffsetDateTime::now_utc();
        let cached = self.cached();
        if let Some(token) = cached.as_ref().filter(|t| self.is_fresh(t, now)) {
            return Ok(token.clone());
        }
        // Single flight: one caller refreshes; others use a still-valid token meanwhile, or wait.
        let mut retry = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(token) = cached.filter(|t| t.is_valid_at(now)) {
                    return Ok(token);
                }
                self.refresh.lock().await
            }
        };
        let now = OffsetDateTime::now_utc();
        let cached = self.cached();
        if let Some(token) = cached.as_ref().filter(|t| self.is_fresh(t, now)) {
            return Ok(token.clone());
        }
        // Within the backoff after a failure: the last good token while valid, else the last error.
        if retry.next_attempt.is_some_and(|next| Instant::now() < next) {
            if let Some(token) = cached.filter(|t| t.is_valid_at(now)) {
                return Ok(token);
            }
            if let Some(error) = &retry.last_error {
                return Err(error.clone());
            }
        }
        self.fetch(&mut retry).await
    }

    fn info(&self) -> SourceInfo {
        self.inner.info()
    }
}
