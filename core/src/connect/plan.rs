//! What the pool and the proxy settle before either contacts the server, in the same steps: the
//! configuration checked once, the token source's cache and its timing, the server's address, then the
//! first token (a bad credential fails here) and the user it logs in as.

use std::sync::Arc;
use std::time::Duration;

use pgwi_credentials::{CachedTokenSource, SourceContext, SourceRegistry, Token, TokenSource};

use super::ConnectError;
use crate::config::{Config, ConfigError, DatabaseConfig};

/// The token source and the server, settled from the configuration; nothing asked of either yet.
pub(crate) struct Plan {
    /// The cache in front of the token source.
    pub(crate) credential: Arc<CachedTokenSource>,
    /// `credential.expiry_skew_secs`.
    pub(crate) skew: Duration,
    /// The server's host (or socket directory), without a port.
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The first token and the database user it logs in as.
pub(crate) struct FirstLogin {
    pub(crate) token: Token,
    pub(crate) user: String,
}

impl Plan {
    /// Installs the TLS crypto provider if the process has none, checks `config` (unless the loader did),
    /// puts a cache in front of `source` (or builds the one `config.credential` names), checks the cache's
    /// timing against the skew and resolves the server's address.
    pub(crate) fn new(
        config: &Config,
        source: Option<Arc<dyn TokenSource>>,
    ) -> Result<Self, ConnectError> {
        pgwi_credentials::install_crypto_provider();
        config.check_once()?;
        let credential = match source {
            Some(source) => CachedTokenSource::wrap(source, config.credential.cache_options()),
            None => SourceRegistry::default()
                .build_cached(&config.credential, &SourceContext::default())?,
        };
        let skew = Duration::from_secs(config.credential.expiry_skew_secs);
        check_cache_timing(&credential, skew)?;
        let (host, port) = config.database.host_and_port()?;
        Ok(Self {
            credential,
            skew,
            host,
            port,
        })
    }

    /// Fetches the first token, refuses one that arrives already expired, and resolves the user.
    pub(crate) async fn first_login(
        &self,
        db: &DatabaseConfig,
    ) -> Result<FirstLogin, ConnectError> {
        let credential = &self.credential;
        let token = credential.token().await?;
        if !pgwi_credentials::validity::usable_now(&token, self.skew) {
            return Err(pgwi_credentials::validity::expired_on_arrival(
                credential.info().kind,
                &token,
            )
            .into());
        }
        let user = resolve_user(db, &token, credential)?;
        Ok(FirstLogin { token, user })
    }
}

/// `user = "auto"`: the user follows the claims of the token in use.
pub(crate) fn user_from_token(db: &DatabaseConfig) -> bool {
    db.user.as_deref().map(str::trim) == Some("auto")
}

/// A cache the caller built has its own margin and deadline: they must leave room for the skew and a retry,
/// as the loader checks for configuration.
fn check_cache_timing(credential: &CachedTokenSource, skew: Duration) -> Result<(), ConnectError> {
    let problem = pgwi_credentials::validity::cache_timing_problem(&credential.options(), skew);
    match problem {
        Some(problem) => Err(ConnectError::Config(ConfigError::rejected(
            "credential.expiry_skew_secs",
            "the configuration and the CachedTokenSource given to pgwi",
            problem,
            "give the cache a refresh_margin above the skew and a fetch_timeout of at most half the \
             margin (CredentialConfig::cache_options builds them from the configuration)",
        ))),
        None => Ok(()),
    }
}

fn resolve_user(
    db: &DatabaseConfig,
    token: &Token,
    credential: &CachedTokenSource,
) -> Result<String, ConnectError> {
    match db.user.as_deref().map(str::trim) {
        Some("auto") => token
            .claims()
            .and_then(|c| c.database_user())
            .inspect(|user| tracing::info!(%user, "database.user = auto: derived the user from the token's claims"))
            .ok_or_else(|| ConnectError::UserNotDerivable {
                source_kind: credential.info().kind,
            }),
        Some(user) => Ok(user.to_owned()),
        // The check before connecting refuses a missing user: an error here rather than a panic.
        None => Err(ConnectError::Config(ConfigError::rejected(
            "database.user",
            "nowhere",
            "is not set",
            "set database.user",
        ))),
    }
}
