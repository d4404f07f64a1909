//! Keeps the pool's password ahead of token expiry, for as long as the pool lives: the pool's side of the
//! [`TokenKeeper`](super::keeper::TokenKeeper).
//!
//! How "no new connection presents an expired token" holds by construction:
//! - The pool's connect options are the only place a password for new connections lives, and only the
//!   keeper's task writes them (`Pool::set_connect_options`, through [`Rotation`]'s events).
//! - The task ends only when the pool is closed, and [`Rotation`] holds a clone of the pool, so it lives as
//!   long as any clone of the pool or of SeaORM's connection does; no other handle has to be kept.
//! - The keeper wakes at the refresh time and, independently of how the token request goes, at the token's
//!   deadline. If no new token has arrived by then, new connections are pointed at a loopback endpoint that
//!   refuses them with the credential's own error ([`super::refusal`]); the expired token is never
//!   presented.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pgwi_credentials::{CredentialError, Token, TokenSource as _};
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use time::OffsetDateTime;

use super::keeper::{KeeperEvents, TokenKeeper, lock};
use super::refusal::RefusalEndpoint;

/// Where new connections go if the refusal endpoint cannot listen: nowhere.
const NO_ENDPOINT_SOCKET: &str = "/nonexistent/pgwi-no-valid-token";

/// Figures the rotation keeps for [`crate::RotatingPool::rotation_stats`].
#[derive(Default)]
pub(crate) struct RotationCounts {
    pub(crate) rotations: AtomicU64,
    pub(crate) last_rotation: Mutex<Option<OffsetDateTime>>,
}

/// What the pool does when the keeper replaces its token or the token runs out.
pub(crate) struct Rotation {
    pub(crate) pool: PgPool,
    /// The server's connect options without a password.
    pub(crate) base: Mutex<PgConnectOptions>,
    /// `user = "auto"`: a token naming another user changes the user too.
    pub(crate) user_from_token: bool,
    pub(crate) keeper: Arc<TokenKeeper>,
    pub(crate) counts: Arc<RotationCounts>,
    pub(crate) refusal: tokio::sync::Mutex<Option<RefusalEndpoint>>,
}

impl KeeperEvents for Rotation {
    async fn closed(&self) {
        self.pool.close_event().await;
    }

    /// New connections present `token` from now on.
    fn replacing(&self, token: &Token) {
        // Which source answered: with `auto`, the log says which of its chain it was.
        let source = self.keeper.credential().info().kind;
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
        self.counts.rotations.fetch_add(1, Ordering::Relaxed);
        *lock(&self.counts.last_rotation) = Some(OffsetDateTime::now_utc());
        tracing::info!(source = %source, expires_at = ?token.expires_at(), "new connections now use a fresh token");
    }

    /// The current token has expired and no new one came: new connections go to the refusal endpoint.
    async fn expired(&self, error: &CredentialError) {
        tracing::error!(%error, "the token expired and no new one can be had: new connections are refused until the credential recovers; open connections keep serving");
        let mut refusal = self.refusal.lock().await;
        if refusal.is_none() {
            *refusal = self.start_refusal().await;
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
    }
}

impl Rotation {
    /// The loopback endpoint that refuses each start-up with the keeper's outage error as it is then.
    async fn start_refusal(&self) -> Option<RefusalEndpoint> {
        let keeper = self.keeper.clone();
        let message = Arc::new(move || {
            format!(
                "pgwi: no valid token for new connections: {}",
                keeper.outage().map_or_else(
                    || "the credential is recovering; try again".into(),
                    |e| e.to_string()
                )
            )
        });
        match RefusalEndpoint::start(message).await {
            Ok(endpoint) => Some(endpoint),
            Err(io) => {
                tracing::error!(error = %io, "could not open the loopback refusal endpoint; new connections fail with \"no such file\" instead");
                None
            }
        }
    }
}
