//! When a [`Token`] may still be presented: the one policy the pool (pgwi-core's rotation) and the proxy both
//! follow, so that no new connection presents a token the server would refuse as expired.
//!
//! A token is presented only before its deadline — its expiry less the skew allowance
//! (`credential.expiry_skew_secs`), the allowance capped at a quarter of the token's lifetime — and a token
//! that arrives already past it is an error of the source, not a password to try.

use std::time::Duration;

use time::OffsetDateTime;

use crate::{CacheOptions, CredentialError, ErrorKind, Token};

/// When `token` was issued: its JWT `iat` claim, else `received` (when pgwi got it); never later than that.
fn issued_at(token: &Token, received: OffsetDateTime) -> OffsetDateTime {
    token
        .claims()
        .and_then(|claims| claims.get("iat")?.parse::<i64>().ok())
        .and_then(|iat| OffsetDateTime::from_unix_timestamp(iat).ok())
        .filter(|iat| *iat <= received)
        .unwrap_or(received)
}

/// The instant after which `token` must not be presented: its expiry less the skew allowance, the allowance
/// capped at a quarter of the token's lifetime (from its issue, so a short-lived token is still used), never
/// after the expiry itself. `received` is when pgwi got the token (the issue time if it names none). `None`:
/// the token never expires (a static password).
///
/// The lifetime is the token's own, not what is left of it: a token held for long is not given a smaller
/// allowance as it ages.
pub fn token_deadline(
    token: &Token,
    received: OffsetDateTime,
    skew: Duration,
) -> Option<OffsetDateTime> {
    let exp = token.expires_at()?;
    let configured = time::Duration::try_from(skew).unwrap_or(time::Duration::ZERO);
    let lifetime: time::Duration = exp - issued_at(token, received);
    let quarter: time::Duration = std::cmp::max(lifetime / 4_i32, time::Duration::ZERO);
    Some(exp.checked_sub(configured.min(quarter)).unwrap_or(exp))
}

/// Whether `token`, received at `received`, may be presented at `now`: `now < exp - skew` (the skew capped
/// as [`token_deadline`] says). A password without expiry always may.
pub fn usable_at(
    token: &Token,
    received: OffsetDateTime,
    skew: Duration,
    now: OffsetDateTime,
) -> bool {
    token_deadline(token, received, skew).is_none_or(|deadline| now < deadline)
}

/// Whether `token`, just obtained, may be presented at all: not already at its deadline.
pub fn usable_now(token: &Token, skew: Duration) -> bool {
    let now = OffsetDateTime::now_utc();
    usable_at(token, now, skew, now)
}

/// The error for a token that arrives already expired (or inside the skew allowance), from the source of
/// kind `kind`.
pub fn expired_on_arrival(kind: impl Into<String>, token: &Token) -> CredentialError {
    CredentialError::new(
        ErrorKind::Upstream,
        kind,
        format!(
            "the source returned a token that expires at {} (with the skew allowance: already expired)",
            token
                .expires_at()
                .map_or_else(|| "?".into(), |e| e.to_string())
        ),
        "check the clock of this machine (and of the token issuer); lower credential.expiry_skew_secs if \
         tokens are that short-lived on purpose",
    )
}

/// What is wrong with a cache's timing for a skew allowance of `skew`, if anything: a cache the caller built
/// has its own margin and deadline, and they must leave room for the skew and a retry, as the configuration
/// loader checks for `credential.*` (a token refreshed only after it stopped being usable would leave a gap).
pub fn cache_timing_problem(options: &CacheOptions, skew: Duration) -> Option<String> {
    if skew >= options.refresh_margin {
        Some(format!(
            "is {}s, but the token source's cache refreshes only {}s before expiry",
            skew.as_secs(),
            options.refresh_margin.as_secs_f64()
        ))
    } else if options.fetch_timeout.saturating_mul(2) > options.refresh_margin {
        Some(format!(
            "leaves no time to retry: the cache's fetch deadline ({}s) is over half its margin ({}s)",
            options.fetch_timeout.as_secs_f64(),
            options.refresh_margin.as_secs_f64()
        ))
    } else {
        None
    }
}
