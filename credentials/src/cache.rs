//! A cache that any source can sit behind: one upstream request at a time, each within a deadline and
//! isolated from panics; refresh ahead of expiry (at half the lifetime for tokens shorter than twice the
//! margin, so it never spins); and the last good token served while a refresh fails and it is still valid.
//! Failures are logged once per change of state, retries at debug level.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{CredentialError, ErrorKind, SourceInfo, Token, TokenSource};

/// How the cache refreshes.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Refresh once a token is this close to its expiry. Default 5 minutes. A token that lives less than
    /// twice this is refreshed at half its lifetime instead, so short-lived tokens never make the cache spin.
    pub refresh_margin: Duration,
    /// The first wait after a failed refresh; doubles per failure, jittered by ±50%. Default 1 s.
    pub min_backoff: Duration,
    /// The longest wait between failed refreshes. Default 60 s.
    pub max_backoff: Duration,
    /// The deadline of one request to the source. Default 30 s.
    pub fetch_timeout: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// When a token obtained at `obtained_at` should be replaced: `refresh_margin` before its expiry, or at half
/// its remaining lifetime when that comes later (a token that lives less than twice the margin). `None` for
/// a token without expiry. Never overflows, whatever the margin.
pub fn refresh_time(
    obtained_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    refresh_margin: Duration,
) -> Option<OffsetDateTime> {
    let expires_at = expires_at?;
    let remaining = (expires_at - obtained_at).max(time::Duration::ZERO);
    let halfway = obtained_at + remaining / 2;
    let before_margin = time::Duration::try_from(refresh_margin)
        .ok()
        .and_then(|margin| expires_at.checked_sub(margin))
        .unwrap_or(halfway);
    Some(before_margin.max(halfway))
}

/// The deadline a source may give itself inside the cache's `fetch_timeout`: a little shorter, so that its
/// own timeout (naming the source, ending what it started) fires before the cache's.
pub(crate) fn inner_deadline(fetch_timeout: Duration) -> Duration {
    fetch_timeout.saturating_sub((fetch_timeout / 10).min(Duration::from_millis(500)))
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The token in the cache and when to replace it.
#[derive(Clone)]
struct Cached {
    token: Token,
    refresh_at: Option<OffsetDateTime>,
}

/// A [`TokenSource`] in front of another: see the module documentation.
///
/// Tokens without an expiry (static passwords) are not cached: their source is asked every time, so a
/// re-read password file takes effect at once.
pub struct CachedTokenSource {
    inner: Arc<dyn TokenSource>,
    options: CacheOptions,
    current: RwLock<Option<Cached>>,
    refresh: tokio::sync::Mutex<RetryState>,
    stats: Mutex<CacheStats>,
    last_failure: Mutex<Option<CredentialError>>,
    warned_short_lifetime: AtomicBool,
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
    /// Puts a cache in front of `inner`. Durations beyond a day are cut to a day, so that no arithmetic on
    /// them can overflow.
    pub fn new(inner: Arc<dyn TokenSource>, options: CacheOptions) -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let options = CacheOptions {
            refresh_margin: options.refresh_margin.min(DAY),
            min_backoff: options.min_backoff.min(DAY),
            max_backoff: options.max_backoff.min(DAY),
            fetch_timeout: options.fetch_timeout.min(DAY),
        };
        Self {
            inner,
            options,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RetryState::default()),
            stats: Mutex::new(CacheStats::default()),
            last_failure: Mutex::new(None),
            warned_short_lifetime: AtomicBool::new(false),
        }
    }

    /// `source` itself when it is a cache already, else a new cache with `options` in front of it.
    pub fn wrap(source: Arc<dyn TokenSource>, options: CacheOptions) -> Arc<Self> {
        source
            .clone()
            .as_cached()
            .unwrap_or_else(|| Arc::new(Self::new(source, options)))
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

    fn cached(&self) -> Option<Cached> {
        self.current.read().ok().and_then(|t| t.clone())
    }

    /// The error of the last request to the source, while requests fail (`None` once one succeeds).
    pub fn last_failure(&self) -> Option<CredentialError> {
        self.last_failure.lock().ok().and_then(|e| e.clone())
    }

    /// When the cached token should be replaced (`None`: nothing cached, or a token without expiry).
    pub fn refresh_at(&self) -> Option<OffsetDateTime> {
        self.cached().and_then(|c| c.refresh_at)
    }

    fn fresh(cached: Option<&Cached>, now: OffsetDateTime) -> Option<Token> {
        cached
            .filter(|c| c.refresh_at.is_some_and(|at| now < at))
            .map(|c| c.token.clone())
    }

    fn valid(cached: Option<Cached>, now: OffsetDateTime) -> Option<Token> {
        cached.map(|c| c.token).filter(|t| t.is_valid_at(now))
    }

    /// Asks the source once, within the deadline, in a task of its own so that a panic in the source is
    /// an error here rather than the end of the caller (a refresher that must keep running).
    async fn ask_source(&self) -> Result<Token, CredentialError> {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move { inner.token().await });
        let abort = task.abort_handle();
        // A caller that stops waiting (a closed pool's refresher) ends the request too.
        let _abort_on_drop = AbortOnDrop(task.abort_handle());
        match tokio::time::timeout(self.options.fetch_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                let message = if join.is_panic() {
                    let panic = join.into_panic();
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "no message".into())
                } else {
                    "the request was cancelled".into()
                };
                Err(CredentialError::new(
                    ErrorKind::Panicked,
                    self.inner.info().kind,
                    format!("the token source panicked ({message})"),
                    "this is a bug in the token source; pgwi retries it with backoff meanwhile",
                ))
            }
            Err(_elapsed) => {
                abort.abort();
                // Described now, not before the request: `auto` says which of its sources it was asking.
                let info = self.inner.info();
                let waiting_for = info
                    .detail("trying")
                    .map(|kind| format!(" (auto was asking {kind})"))
                    .unwrap_or_default();
                Err(CredentialError::new(
                    ErrorKind::Timeout,
                    info.kind,
                    format!(
                        "no answer within {}s{waiting_for}",
                        self.options.fetch_timeout.as_secs_f64()
                    ),
                    "check the network path to Entra ID (or that `az` answers); \
                     credential.fetch_timeout_secs sets this deadline",
                ))
            }
        }
    }

    fn warn_if_short_lived(&self, token: &Token, now: OffsetDateTime) {
        let Some(expires_at) = token.expires_at() else {
            return;
        };
        let lifetime = expires_at - now;
        if lifetime < self.options.refresh_margin.saturating_mul(2)
            && !self.warned_short_lifetime.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                source = %self.inner,
                lifetime_secs = lifetime.whole_seconds(),
                refresh_margin_secs = self.options.refresh_margin.as_secs(),
                "tokens live less than twice the refresh margin: refreshing each at half its lifetime instead"
            );
        }
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

    /// Asks the source once: a token is cached and returned; a failure schedules the next try and falls
    /// back to the last good token while it is valid.
    async fn fetch(&self, retry: &mut RetryState) -> Result<Token, CredentialError> {
        let asked = std::time::Instant::now();
        let result = self.ask_source().await;
        // The kind that answered (with `auto`, the one of its chain in use): a label of few values.
        let source = self.inner.info().kind;
        crate::metrics::record_request(&source, result.is_ok(), asked.elapsed().as_secs_f64());
        let now = OffsetDateTime::now_utc();
        match result {
            Ok(token) => {
                self.fetched(retry, &token, now);
                Ok(token)
            }
            Err(error) => self.failed(retry, error, now),
        }
    }

    /// A new token: the retry state is reset, and the token cached (when it expires) and counted.
    fn fetched(&self, retry: &mut RetryState, token: &Token, now: OffsetDateTime) {
        if retry.consecutive_failures > 0 {
            tracing::info!(source = %self.inner, failed_attempts = retry.consecutive_failures, "token source recovered");
        }
        *retry = RetryState::default();
        if let Ok(mut last) = self.last_failure.lock() {
            *last = None;
        }
        self.warn_if_short_lived(token, now);
        if token.expires_at().is_some()
            && let Ok(mut current) = self.current.write()
        {
            *current = Some(Cached {
                token: token.clone(),
                refresh_at: refresh_time(now, token.expires_at(), self.options.refresh_margin),
            });
        }
        self.update_stats(|s| {
            s.upstream_fetches += 1;
            s.last_refresh = Some(now);
            s.last_error = None;
            s.expires_at = token.expires_at();
        });
        crate::metrics::record_expiry(token.expires_at());
        tracing::debug!(source = %self.inner, expires_at = ?token.expires_at(), "token fetched");
    }

    /// A failed request: the next try is scheduled with backoff, the failure counted, and the last good
    /// token served while it is valid.
    fn failed(
        &self,
        retry: &mut RetryState,
        error: CredentialError,
        now: OffsetDateTime,
    ) -> Result<Token, CredentialError> {
        retry.consecutive_failures += 1;
        let wait = self.backoff(retry.consecutive_failures);
        retry.next_attempt = Some(Instant::now() + wait);
        self.update_stats(|s| {
            s.upstream_fetches += 1;
            s.failed_fetches += 1;
            s.last_error = Some(error.to_string());
        });
        // Logged once per change of state; each retry only at debug level.
        let news = retry.consecutive_failures == 1
            || retry
                .last_error
                .as_ref()
                .is_none_or(|e| (e.kind(), e.code()) != (error.kind(), error.code()));
        retry.last_error = Some(error.clone());
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(error.clone());
        }
        let retry_in_ms = wait.as_millis() as u64;
        match Self::valid(self.cached(), now) {
            Some(last_good) => {
                if news {
                    tracing::warn!(
                        source = %self.inner,
                        %error,
                        expires_at = ?last_good.expires_at(),
                        "token refresh failed; serving the last good token while it is valid, retrying with backoff"
                    );
                } else {
                    tracing::debug!(source = %self.inner, %error, retry_in_ms, "token refresh failed again");
                }
                Ok(last_good)
            }
            None => {
                if news {
                    tracing::error!(source = %self.inner, %error, "token fetch failed");
                } else {
                    tracing::debug!(source = %self.inner, %error, retry_in_ms, "token fetch failed again");
                }
                Err(error)
            }
        }
    }
}

#[async_trait]
impl TokenSource for CachedTokenSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        let now = OffsetDateTime::now_utc();
        let cached = self.cached();
        if let Some(token) = Self::fresh(cached.as_ref(), now) {
            return Ok(token);
        }
        // Single flight: one caller refreshes; others use a still-valid token meanwhile, or wait.
        let mut retry = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(token) = Self::valid(cached, now) {
                    return Ok(token);
                }
                self.refresh.lock().await
            }
        };
        let now = OffsetDateTime::now_utc();
        let cached = self.cached();
        if let Some(token) = Self::fresh(cached.as_ref(), now) {
            return Ok(token);
        }
        // Within the backoff after a failure: the last good token while valid, else the last error.
        if retry.next_attempt.is_some_and(|next| Instant::now() < next) {
            if let Some(token) = Self::valid(cached, now) {
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

    fn as_cached(self: Arc<Self>) -> Option<Arc<CachedTokenSource>> {
        Some(self)
    }
}
