//! Keeps the pool's password ahead of token expiry, for as long as the pool lives.
//!
//! How "no new connection presents an expired token" holds by construction:
//! - The pool's connect options are the only place a password for new connections lives, and only this
//!   task writes them (`Pool::set_connect_options`).
//! - The task owns a clone of the pool and ends only when the pool is closed, so it lives as long as any
//!   clone of the pool or of SeaORM's connection does; no other handle has to be kept.
//! - It wakes at the refresh time (the margin before expiry, or half the lifetime of a short-lived token)
//!   and, independently of how the token request goes, at the token's expiry less the skew allowance. If no
//!   new token has arrived by then, new connections are pointed at a loopback endpoint that refuses them
//!   with the credential's own error ([`super::refusal`]); the expired token is never presented.
//! - Every request has a deadline and runs isolated from panics (in the cache), and the loop itself runs
//!   under a supervisor that restarts it after a panic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_credentials::{
    CachedTokenSource, CredentialError, ErrorKind, Token, TokenSource as _, refresh_time,
};
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use time::OffsetDateTime;

use super::refusal::RefusalEndpoint;

/// How often a password without expiry (static) is asked for again: a re-read password file takes effect.
const STATIC_RECHECK: Duration = Duration::from_secs(30);
/// How soon to ask again after a failed refresh (the cache's backoff limits real requests).
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Where new connections go if the refusal endpoint cannot listen: nowhere.
const NO_ENDPOINT_SOCKET: &str = "/nonexistent/pgwi-no-valid-token";
/// The shortest wait before asking the cache again when it has nothing new yet.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// The longest single sleep: deadlines are re-checked against the wall clock at least this often.
const TICK: Duration = Duration::from_secs(5);
/// How long the supervisor waits before restarting a loop that panicked.
const RESTART_AFTER_PANIC: Duration = Duration::from_secs(1);

/// What the rotation shares with [`crate::Database`], for figures and errors.
#[derive(Default)]
pub(crate) struct RotationState {
    pub(crate) rotations: AtomicU64,
    pub(crate) current_expiry: Mutex<Option<OffsetDateTime>>,
    pub(crate) last_rotation: Mutex<Option<OffsetDateTime>>,
    /// Set while new connections are refused: the last token expired and no new one came.
    pub(crate) outage: Mutex<Option<CredentialError>>,
}

impl RotationState {
    pub(crate) fn outage(&self) -> Option<CredentialError> {
        lock(&self.outage).clone()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The token new connections present, when it was installed and when to replace it.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) token: Token,
    pub(crate) installed_at: OffsetDateTime,
    pub(crate) refresh_at: Option<OffsetDateTime>,
}

impl Current {
    pub(crate) fn new(token: Token, margin: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            refresh_at: refresh_time(now, token.expires_at(), margin),
            installed_at: now,
            token,
        }
    }
}

/// What one run of the loop needs; survives a panic of the loop (the supervisor keeps it).
pub(crate) struct Rotation {
    pub(crate) pool: PgPool,
    /// The server's connect options without a password.
    pub(crate) base: Mutex<PgConnectOptions>,
    pub(crate) user_from_token: bool,
    pub(crate) credential: Arc<CachedTokenSource>,
    pub(crate) state: Arc<RotationState>,
    /// Treat a token as expired this long before its `exp`.
    pub(crate) skew: Duration,
    /// The token new connections present.
    pub(crate) current: Mutex<Current>,
    pub(crate) refusal: tokio::sync::Mutex<Option<RefusalEndpoint>>,
}

impl Rotation {
    /// Starts rotating `pool`'s password, beginning with `first` (already in the pool's options).
    pub(crate) fn spawn(self) {
        tokio::spawn(supervise(Arc::new(self)));
    }

    fn current(&self) -> Current {
        lock(&self.current).clone()
    }

    /// The instant after which the current token must not be presented.
    fn deadline(&self, current: &Current) -> Option<OffsetDateTime> {
        current_deadline(current, self.skew)
    }

    /// New connections present `token` from now on.
    fn install(&self, token: Token) {
        // Which source answered: with `auto`, the log says which of its chain it was.
        let source = self.credential.info().kind;
        let mut base = lock(&self.base);
        if self.user_from_token
            && let Some(user) = token.claims().and_then(|c| c.database_user())
            && user != base.get_username()
        {
            tracing::info!(%user, "database.user = auto: the new token names another user");
            *base = base.clone().username(&user);
        }
        self.pool
            .set_connect_options(base.clone().password(token.secret().expose()));
        drop(base);
        let now = OffsetDateTime::now_utc();
        self.state.rotations.fetch_add(1, Ordering::Relaxed);
        *lock(&self.state.current_expiry) = token.expires_at();
        *lock(&self.state.last_rotation) = Some(now);
        if let Some(error) = lock(&self.state.outage).take() {
            tracing::info!(after = %error, "the credential recovered: new connections are served again");
        }
        tracing::info!(source = %source, expires_at = ?token.expires_at(), "new connections now use a fresh token");
        *lock(&self.current) = Current::new(token, self.credential.options().refresh_margin);
    }

    /// The current token has expired and no new one came: refuse new connections with `error`.
    async fn refuse_new_connections(&self, error: CredentialError) {
        if self.state.outage().is_some() {
            *lock(&self.state.outage) = Some(error);
            return;
        }
        tracing::error!(%error, "the token expired and no new one can be had: new connections are refused until the credential recovers; open connections keep serving");
        let mut refusal = self.refusal.lock().await;
        if refusal.is_none() {
            let state = self.state.clone();
            let message = Arc::new(move || {
                format!(
                    "pgwi: no valid token for new connections: {}",
                    state.outage().map_or_else(
                        || "the credential is recovering; try again".into(),
                        |e| e.to_string()
                    )
                )
            });
            match RefusalEndpoint::start(message).await {
                Ok(endpoint) => *refusal = Some(endpoint),
                Err(io) => {
                    tracing::error!(error = %io, "could not open the loopback refusal endpoint; new connections fail with \"no such file\" instead");
                }
            }
        }
        let base = lock(&self.base).clone();
        // A fresh target without a password: nothing secret can reach it.
        let mut options = PgConnectOptions::new_without_pgpass()
            .username(base.get_username())
            .ssl_mode(PgSslMode::Disable);
        options = match refusal.as_ref() {
            Some(endpoint) => options.host("127.0.0.1").port(endpoint.port()),
            // Without the endpoint: a socket that cannot exist fails at once (a closed port would be
            // retried until the acquire timeout).
            None => options.socket(NO_ENDPOINT_SOCKET),
        };
        if let Some(database) = base.get_database() {
            options = options.database(database);
        }
        self.pool.set_connect_options(options);
        // Only once new connections go elsewhere: a loop restarted in between checks the deadline again.
        *lock(&self.state.outage) = Some(error);
    }

    fn no_answer_error(&self, expires_at: Option<OffsetDateTime>) -> CredentialError {
        CredentialError::new(
            ErrorKind::Timeout,
            self.credential.info().kind,
            format!(
                "the token in use expired{} and the source has not answered with a new one",
                expires_at.map(|e| format!(" at {e}")).unwrap_or_default()
            ),
            "check the network path to Entra ID (or that `az` answers); each request is cut after \
             credential.fetch_timeout_secs and pgwi keeps asking",
        )
    }
}

/// The instant after which `current` must not be presented (see [`token_deadline`]).
pub(crate) fn current_deadline(current: &Current, skew: Duration) -> Option<OffsetDateTime> {
    token_deadline(&current.token, current.installed_at, skew)
}

/// The instant after which `token` must not be presented: the policy of
/// [`pgwi_credentials::validity::token_deadline`], which the proxy follows too.
pub(crate) fn token_deadline(
    token: &Token,
    received: OffsetDateTime,
    skew: Duration,
) -> Option<OffsetDateTime> {
    pgwi_credentials::validity::token_deadline(token, received, skew)
}

/// Whether `token`, received at `received`, may be presented at `now`
/// ([`pgwi_credentials::validity::usable_at`]).
pub(crate) fn usable_at(
    token: &Token,
    received: OffsetDateTime,
    skew: Duration,
    now: OffsetDateTime,
) -> bool {
    pgwi_credentials::validity::usable_at(token, received, skew, now)
}

/// Whether `token`, just obtained, may be presented at all ([`pgwi_credentials::validity::usable_now`]).
pub(crate) fn usable_now(token: &Token, skew: Duration) -> bool {
    pgwi_credentials::validity::usable_now(token, skew)
}

/// The error for a token that arrives already expired
/// ([`pgwi_credentials::validity::expired_on_arrival`]).
pub(crate) fn expired_on_arrival(kind: String, token: &Token) -> CredentialError {
    pgwi_credentials::validity::expired_on_arrival(kind, token)
}

/// Runs the loop; restarts it after a panic; ends when the pool is closed.
async fn supervise(rotation: Arc<Rotation>) {
    loop {
        let run = tokio::spawn(run(rotation.clone()));
        match run.await {
            Ok(()) => return,
            Err(join) if join.is_panic() => {
                tracing::error!("the token refresher panicked; restarting it");
                tokio::time::sleep(RESTART_AFTER_PANIC).await;
            }
            Err(_) => return,
        }
    }
}

/// Sleeps until `at` (wall clock); forever for `None`.
/// In ticks of at most [`TICK`], checking the wall clock each time: tokio's clock is monotonic and stops
/// while the machine is suspended, while token expiry follows the wall clock.
async fn sleep_until(at: Option<OffsetDateTime>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    loop {
        let Ok(wait) = Duration::try_from(at - OffsetDateTime::now_utc()) else {
            return;
        };
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait.min(TICK)).await;
    }
}

async fn run(rotation: Arc<Rotation>) {
    let closed = rotation.pool.close_event();
    tokio::pin!(closed);
    loop {
        let current = rotation.current();
        let token = &current.token;
        let deadline = rotation.deadline(&current);
        let wake = current
            .refresh_at
            .unwrap_or_else(|| OffsetDateTime::now_utc() + STATIC_RECHECK);
        let wake = deadline.map_or(wake, |deadline| wake.min(deadline));
        tokio::select! {
            () = &mut closed => return,
            () = sleep_until(Some(wake)) => {}
        }
        // Ask until a new token arrives; refuse new connections once the current one expires meanwhile.
        let mut last_error: Option<CredentialError> = None;
        loop {
            // The expiry guard comes first, whatever the source does: a source that fails fast (or a cache
            // serving the last good token at once) must not keep the guard from firing.
            let past_deadline = deadline.is_some_and(|d| OffsetDateTime::now_utc() >= d);
            if past_deadline && rotation.state.outage().is_none() {
                let error = last_error
                    .clone()
                    .unwrap_or_else(|| rotation.no_answer_error(token.expires_at()));
                rotation.refuse_new_connections(error).await;
            }
            let fetch = rotation.credential.token();
            tokio::pin!(fetch);
            let result = loop {
                let in_outage = rotation.state.outage().is_some();
                tokio::select! {
                    biased;
                    () = &mut closed => return,
                    () = sleep_until(deadline), if !in_outage => {
                        let error = last_error.clone().unwrap_or_else(|| rotation.no_answer_error(token.expires_at()));
                        rotation.refuse_new_connections(error).await;
                    }
                    result = &mut fetch => break result,
                }
            };
            match result {
                Ok(new) if new.secret() != token.secret() && !usable_now(&new, rotation.skew) => {
                    last_error = Some(expired_on_arrival(rotation.credential.info().kind, &new));
                }
                Ok(new) if new.secret() != token.secret() => {
                    rotation.install(new);
                    break;
                }
                Ok(same) if same.expires_at().is_none() => {
                    // A static password that did not change: check again later.
                    lock(&rotation.current).refresh_at = None;
                    break;
                }
                // The same token: the cache's refresh is failing, or its refresh time has not come yet.
                Ok(_) => match rotation.credential.last_failure() {
                    Some(error) => last_error = Some(error),
                    None => {
                        let now = OffsetDateTime::now_utc();
                        let wake = rotation
                            .credential
                            .refresh_at()
                            .unwrap_or(now + RETRY_INTERVAL)
                            .max(now + MIN_WAIT);
                        let wake = deadline.map_or(wake, |d| wake.min(d));
                        tokio::select! {
                            () = &mut closed => return,
                            () = sleep_until(Some(wake)) => {}
                        }
                        continue;
                    }
                },
                Err(error) => last_error = Some(error),
            }
            if let Some(error) = &last_error
                && rotation.state.outage().is_some()
            {
                *lock(&rotation.state.outage) = Some(error.clone());
            }
            // Wait before asking again, but not past the deadline.
            let retry_at = OffsetDateTime::now_utc() + RETRY_INTERVAL;
            let wake = deadline
                .filter(|_| rotation.state.outage().is_none())
                .map_or(retry_at, |d| retry_at.min(d));
            tokio::select! {
                () = &mut closed => return,
                () = sleep_until(Some(wake)) => {}
            }
        }
    }
}
