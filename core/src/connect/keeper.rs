//! The token new connections get — the pool's and the proxy's alike — and the task that replaces it ahead
//! of its expiry.
//!
//! A [`TokenKeeper`] holds one token, when pgwi first received it (the deadline of a token without an `iat`
//! claim is measured from then) and when to ask for the next. Its task sleeps until that refresh time (or
//! the token's deadline, whichever comes first), then asks the cache until a different token arrives.
//! What the owner does about a change is its own ([`KeeperEvents`]): the pool rewrites its connect options
//! and points new connections at a refusal endpoint while none is valid; the proxy reads the keeper per
//! session and needs no callback.
//!
//! Invariants the loop keeps, whatever the source does:
//! - It wakes at the deadline independently of how a request goes: a source that hangs, fails fast or
//!   keeps serving the last good token cannot keep [`KeeperEvents::expired`] from being called.
//! - A token that arrives already inside the skew allowance is never held as the replacement.
//! - Every request has a deadline and runs isolated from panics (in the cache); the loop itself runs under
//!   a supervisor that restarts it after a panic, keeping what it held.
//! - Sleeps are cut into ticks checked against the wall clock: tokio's clock stops while the machine is
//!   suspended, while token expiry follows the wall clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_credentials::{
    CachedTokenSource, CredentialError, ErrorKind, Token, TokenSource as _, refresh_time, validity,
};
use time::OffsetDateTime;

/// How often a password without expiry (static) is asked for again: a re-read password file takes effect.
const STATIC_RECHECK: Duration = Duration::from_secs(30);
/// How soon to ask again after a failed refresh (the cache's backoff limits real requests).
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// The shortest wait before asking the cache again when it has nothing new yet.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// The longest single sleep: deadlines are re-checked against the wall clock at least this often.
const TICK: Duration = Duration::from_secs(5);
/// How long the supervisor waits before restarting a loop that panicked.
const RESTART_AFTER_PANIC: Duration = Duration::from_secs(1);

/// Locks `m`, also after a panic while it was held (every value kept under these locks is whole at all
/// times: each is replaced in one assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A token, when pgwi first received it, and when to ask for its successor.
#[derive(Clone)]
pub(crate) struct HeldToken {
    pub(crate) token: Token,
    /// When pgwi first received it: bounds the deadline of a token without an `iat` claim.
    pub(crate) received: OffsetDateTime,
    /// When to ask for the next one (`None`: a password without expiry, asked for again periodically).
    pub(crate) refresh_at: Option<OffsetDateTime>,
}

impl HeldToken {
    fn new(token: Token, margin: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            refresh_at: refresh_time(now, token.expires_at(), margin),
            received: now,
            token,
        }
    }

    /// The instant after which the token must not be presented ([`validity::token_deadline`]).
    pub(crate) fn deadline(&self, skew: Duration) -> Option<OffsetDateTime> {
        validity::token_deadline(&self.token, self.received, skew)
    }

    /// Whether the token may be presented now.
    pub(crate) fn usable_now(&self, skew: Duration) -> bool {
        validity::usable_at(&self.token, self.received, skew, OffsetDateTime::now_utc())
    }
}

/// What the keeper's owner does when the held token is replaced or runs out.
pub(crate) trait KeeperEvents: Send + Sync + 'static {
    /// Resolves once the owner is gone: the loop ends.
    fn closed(&self) -> impl Future<Output = ()> + Send;

    /// `token` is about to replace the held one: new connections should present it from now on.
    fn replacing(&self, token: &Token);

    /// The held token passed its deadline and no replacement came (`error` says why): new connections
    /// must not present it. Called once per outage; the outage is recorded only after this returns.
    fn expired(&self, error: &CredentialError) -> impl Future<Output = ()> + Send;
}

/// An owner that only reads the keeper (the proxy): the loop ends when the returned sender is dropped.
pub(crate) struct ReadOnly {
    stopped: tokio::sync::watch::Receiver<()>,
}

impl ReadOnly {
    /// The events, and what stops the loop when dropped.
    pub(crate) fn new() -> (Self, tokio::sync::watch::Sender<()>) {
        let (stop, stopped) = tokio::sync::watch::channel(());
        (Self { stopped }, stop)
    }
}

impl KeeperEvents for ReadOnly {
    async fn closed(&self) {
        let mut stopped = self.stopped.clone();
        while stopped.changed().await.is_ok() {}
    }

    fn replacing(&self, _token: &Token) {}

    async fn expired(&self, _error: &CredentialError) {}
}

/// The token new connections get, from the cache in front of the token source.
pub(crate) struct TokenKeeper {
    credential: Arc<CachedTokenSource>,
    /// Treat a token as expired this long before its `exp` (capped by [`validity::token_deadline`]).
    skew: Duration,
    held: Mutex<HeldToken>,
    /// Set while the held token is past its deadline and no new one came: why.
    outage: Mutex<Option<CredentialError>>,
}

impl TokenKeeper {
    /// Holds `first` (just received from `credential`).
    pub(crate) fn new(credential: Arc<CachedTokenSource>, skew: Duration, first: Token) -> Self {
        let margin = credential.options().refresh_margin;
        Self {
            credential,
            skew,
            held: Mutex::new(HeldToken::new(first, margin)),
            outage: Mutex::new(None),
        }
    }

    /// Starts the task that replaces the held token ahead of its expiry, telling `events`; it ends when
    /// [`KeeperEvents::closed`] resolves.
    pub(crate) fn spawn(self: &Arc<Self>, events: Arc<impl KeeperEvents>) {
        tokio::spawn(supervise(self.clone(), events));
    }

    pub(crate) fn credential(&self) -> &Arc<CachedTokenSource> {
        &self.credential
    }

    pub(crate) fn skew(&self) -> Duration {
        self.skew
    }

    pub(crate) fn held(&self) -> HeldToken {
        lock(&self.held).clone()
    }

    /// Why new connections get no token, while the held one is past its deadline with no successor.
    pub(crate) fn outage(&self) -> Option<CredentialError> {
        lock(&self.outage).clone()
    }

    /// Notes `token` (just had from the cache) as the held one, keeping when it was first received if it
    /// is the same; returns that time. For an owner that asks the cache itself (the proxy, per session).
    pub(crate) fn note(&self, token: &Token) -> OffsetDateTime {
        let mut held = lock(&self.held);
        if held.token.secret() != token.secret() {
            *held = HeldToken::new(token.clone(), self.credential.options().refresh_margin);
        }
        held.received
    }

    /// Holds `token` from now on and ends an outage; the outage's error, if there was one.
    fn replace(&self, token: Token) -> Option<CredentialError> {
        self.note(&token);
        lock(&self.outage).take()
    }

    /// Enters the outage with `error` (telling the owner first), or updates the reason of the current one.
    async fn run_out(&self, events: &impl KeeperEvents, error: CredentialError) {
        if self.outage().is_none() {
            events.expired(&error).await;
        }
        // Only once the owner has acted: a loop restarted in between checks the deadline again.
        *lock(&self.outage) = Some(error);
    }

    /// The error for a deadline passed without an answer from the source.
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

/// Runs the loop; restarts it after a panic; ends when the owner is closed.
async fn supervise(keeper: Arc<TokenKeeper>, events: Arc<impl KeeperEvents>) {
    loop {
        let run = tokio::spawn(run(keeper.clone(), events.clone()));
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

/// The owner's `closed` future, pinned for the loop's selects.
type Closed<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>;

/// Sleeps until the held token's refresh time (or deadline), then asks until a new one arrives; again.
async fn run(keeper: Arc<TokenKeeper>, events: Arc<impl KeeperEvents>) {
    let closed = events.closed();
    tokio::pin!(closed);
    let mut closed: Closed<'_> = closed;
    loop {
        let held = keeper.held();
        let deadline = held.deadline(keeper.skew);
        let wake = held
            .refresh_at
            .unwrap_or_else(|| OffsetDateTime::now_utc() + STATIC_RECHECK);
        let wake = deadline.map_or(wake, |deadline| wake.min(deadline));
        if until_closed(&mut closed, sleep_until(Some(wake)))
            .await
            .is_none()
        {
            return;
        }
        if ask_until_replaced(&keeper, &*events, &held, deadline, &mut closed)
            .await
            .is_none()
        {
            return;
        }
    }
}

/// What one answer of the cache means for the held token.
enum Answer {
    /// A different, usable token: it was installed.
    Replaced,
    /// A password without expiry that did not change: check again later.
    Unchanged,
    /// The same token, and the cache has no failure to report: its refresh time has not come yet.
    NotYet,
    /// No usable token: why.
    Failed(CredentialError),
}

/// Asks the cache until it gives a token other than `held`'s; runs out at `deadline` meanwhile (the expiry
/// guard comes first, whatever the source does). `None`: the owner closed.
async fn ask_until_replaced(
    keeper: &TokenKeeper,
    events: &impl KeeperEvents,
    held: &HeldToken,
    deadline: Option<OffsetDateTime>,
    closed: &mut Closed<'_>,
) -> Option<()> {
    let mut last_error: Option<CredentialError> = None;
    let why = |last_error: &Option<CredentialError>| {
        last_error
            .clone()
            .unwrap_or_else(|| keeper.no_answer_error(held.token.expires_at()))
    };
    loop {
        let past_deadline = deadline.is_some_and(|d| OffsetDateTime::now_utc() >= d);
        if past_deadline && keeper.outage().is_none() {
            keeper.run_out(events, why(&last_error)).await;
        }
        let result = fetch_guarded(keeper, events, deadline, closed, || why(&last_error)).await?;
        match judge(keeper, events, held, result) {
            Answer::Replaced | Answer::Unchanged => return Some(()),
            Answer::NotYet => {
                let now = OffsetDateTime::now_utc();
                let wake = keeper
                    .credential
                    .refresh_at()
                    .unwrap_or(now + RETRY_INTERVAL)
                    .max(now + MIN_WAIT);
                let wake = deadline.map_or(wake, |d| wake.min(d));
                until_closed(closed, sleep_until(Some(wake))).await?;
                continue;
            }
            Answer::Failed(error) => last_error = Some(error),
        }
        if let Some(error) = &last_error
            && keeper.outage().is_some()
        {
            keeper.run_out(events, error.clone()).await;
        }
        // Wait before asking again, but not past the deadline.
        let retry_at = OffsetDateTime::now_utc() + RETRY_INTERVAL;
        let wake = deadline
            .filter(|_| keeper.outage().is_none())
            .map_or(retry_at, |d| retry_at.min(d));
        until_closed(closed, sleep_until(Some(wake))).await?;
    }
}

/// One request to the cache, during which the deadline still takes effect (with the error `why` gives).
/// `None`: the owner closed.
async fn fetch_guarded(
    keeper: &TokenKeeper,
    events: &impl KeeperEvents,
    deadline: Option<OffsetDateTime>,
    closed: &mut Closed<'_>,
    why: impl Fn() -> CredentialError,
) -> Option<Result<Token, CredentialError>> {
    let fetch = keeper.credential.token();
    tokio::pin!(fetch);
    loop {
        let in_outage = keeper.outage().is_some();
        tokio::select! {
            biased;
            () = &mut *closed => return None,
            () = sleep_until(deadline), if !in_outage => keeper.run_out(events, why()).await,
            result = &mut fetch => return Some(result),
        }
    }
}

/// Installs a different, usable token; says what any other answer means.
fn judge(
    keeper: &TokenKeeper,
    events: &impl KeeperEvents,
    held: &HeldToken,
    result: Result<Token, CredentialError>,
) -> Answer {
    let credential = &keeper.credential;
    match result {
        Ok(new)
            if new.secret() != held.token.secret() && !validity::usable_now(&new, keeper.skew) =>
        {
            Answer::Failed(validity::expired_on_arrival(credential.info().kind, &new))
        }
        Ok(new) if new.secret() != held.token.secret() => {
            events.replacing(&new);
            if let Some(error) = keeper.replace(new) {
                tracing::info!(after = %error, "the credential recovered: new connections are served again");
            }
            Answer::Replaced
        }
        Ok(same) if same.expires_at().is_none() => Answer::Unchanged,
        // The same token: the cache's refresh is failing, or its refresh time has not come yet.
        Ok(_) => credential
            .last_failure()
            .map_or(Answer::NotYet, Answer::Failed),
        Err(error) => Answer::Failed(error),
    }
}

/// Runs `future` unless the owner closes first (`None`).
async fn until_closed<T>(closed: &mut Closed<'_>, future: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        () = &mut *closed => None,
        value = future => Some(value),
    }
}

/// Sleeps until `at` (wall clock); forever for `None`. In ticks of at most [`TICK`], checking the wall clock
/// each time.
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
