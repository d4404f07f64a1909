//! Token validity, the policy the pool and the proxy share: the deadline is the expiry less the skew (capped at
//! a quarter of the token's own lifetime), a token is usable only before it, one that arrives past it is the
//! source's error, and a cache must refresh before the skew and leave time to retry.

use std::time::Duration;

use pgwi_credentials::validity::{
    cache_timing_problem, expired_on_arrival, token_deadline, usable_at, usable_now,
};
use pgwi_credentials::{CacheOptions, ErrorKind, Token};
use time::OffsetDateTime;

const SKEW: Duration = Duration::from_secs(10);

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("time")
}

/// A JWT issued at `iat` that expires at `exp`.
fn jwt(iat: i64, exp: i64) -> Token {
    let secret = pgwi_testsupport::jwt::encode(&serde_json::json!({"iat": iat, "exp": exp}));
    Token::new(secret, Some(at(exp)))
}

#[test]
fn the_deadline_is_the_expiry_less_the_skew() {
    // Scenario: an hour-long token: the full skew applies; usable one second before the deadline, not at it.
    let token = jwt(1_000_000, 1_003_600);

    let deadline = token_deadline(&token, at(1_000_000), SKEW);

    assert_eq!(deadline, Some(at(1_003_590)));
    assert!(usable_at(&token, at(1_000_000), SKEW, at(1_003_589)));
    assert!(!usable_at(&token, at(1_000_000), SKEW, at(1_003_590)));
}

#[test]
fn the_skew_is_capped_at_a_quarter_of_the_tokens_own_lifetime() {
    // Scenario: a token that lives 20 s gets 5 s of allowance, not 10 (else it would never be used), and a
    // token held for long keeps the allowance of its whole lifetime, not of what is left of it.
    let short = jwt(1_000_000, 1_000_020);
    let held = jwt(1_000_000, 1_000_020);

    assert_eq!(
        token_deadline(&short, at(1_000_000), SKEW),
        Some(at(1_000_015))
    );
    assert_eq!(
        token_deadline(&held, at(1_000_018), SKEW),
        Some(at(1_000_015))
    );
}

#[test]
fn without_an_issue_time_the_lifetime_counts_from_receipt() {
    // Scenario: an opaque token (no iat claim) received 20 s before its expiry: a quarter of that is 5 s.
    let token = Token::new("opaque".to_owned(), Some(at(1_000_020)));

    assert_eq!(
        token_deadline(&token, at(1_000_000), SKEW),
        Some(at(1_000_015))
    );
}

#[test]
fn a_password_without_expiry_is_always_usable() {
    // Scenario: a static password has no deadline.
    let password = Token::new("static".to_owned(), None);

    assert_eq!(token_deadline(&password, at(0), SKEW), None);
    assert!(usable_now(&password, SKEW));
}

#[test]
fn a_token_past_its_deadline_on_arrival_is_the_sources_error() {
    // Scenario: a source hands over a token that expires inside the skew: not usable now, and the error
    // names the source and the clock to check.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let token = jwt(now - 3600, now + 5);

    let error = expired_on_arrival("workload-identity", &token);

    assert!(!usable_now(&token, SKEW));
    assert_eq!(error.kind(), ErrorKind::Upstream);
    assert_eq!(error.source_name(), "workload-identity");
    assert!(error.fix().contains("clock"), "{error}");
}

#[test]
fn a_cache_must_refresh_before_the_skew_and_leave_time_to_retry() {
    // Scenario: the configuration's defaults pass; a margin not above the skew, or a fetch deadline over
    // half the margin, is named.
    let options = |margin: u64, fetch: u64| CacheOptions {
        refresh_margin: Duration::from_secs(margin),
        fetch_timeout: Duration::from_secs(fetch),
        ..CacheOptions::default()
    };

    assert_eq!(cache_timing_problem(&options(300, 30), SKEW), None);
    assert!(
        cache_timing_problem(&options(10, 2), SKEW)
            .is_some_and(|problem| problem.contains("refreshes only 10s before expiry"))
    );
    assert!(
        cache_timing_problem(&options(60, 31), SKEW)
            .is_some_and(|problem| problem.contains("no time to retry"))
    );
}
