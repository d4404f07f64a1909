//! The cache in front of the workload-identity source: single flight, refresh ahead of expiry, and the last
//! good token while a refresh fails.

use std::sync::Arc;
use std::time::Duration;

use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialError, ErrorKind, SourceInfo, SourceRegistry, Token,
    TokenSource,
};
use pgwi_testsupport::entra::Fault;

use crate::support::Pod;

fn cached(pod: &Pod, options: CacheOptions) -> Arc<CachedTokenSource> {
    let source = SourceRegistry::default()
        .build(&pod.config(), &pod.context())
        .expect("source");
    Arc::new(CachedTokenSource::new(source, options))
}

#[tokio::test]
async fn hundred_concurrent_callers_cause_one_upstream_request() {
    // Scenario: 100 tasks ask at once while Entra is slow; exactly one request reaches it and all 100 get
    // the same token.
    let pod = Pod::start().await;
    pod.entra
        .push_fault(Fault::Delay(Duration::from_millis(300)));
    let cache = cached(&pod, CacheOptions::default());

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.spawn(async move { cache.token().await.map(|t| t.secret().expose().to_owned()) });
    }
    let tokens: Vec<String> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("token"))
        .collect();

    assert_eq!(pod.entra.request_count(), 1);
    assert_eq!(tokens.len(), 100);
    assert!(tokens.iter().all(|t| t == &pod.entra.issued_tokens()[0]));
    assert_eq!(cache.stats().upstream_fetches, 1);
}

#[tokio::test]
async fn token_near_expiry_is_refreshed() {
    // Scenario: tokens live 3 s and the margin is 2 s; a call within the first second is served from the
    // cache, a call after it fetches a new, different token.
    let pod = Pod::start().await;
    pod.entra.set_token_lifetime(Duration::from_secs(3));
    let cache = cached(
        &pod,
        CacheOptions {
            refresh_margin: Duration::from_secs(2),
            ..CacheOptions::default()
        },
    );

    let first = cache.token().await.expect("first");
    let again = cache.token().await.expect("cached");
    // Tokens shorter than twice the margin are refreshed at half their lifetime (1.5 s here).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let refreshed = cache.token().await.expect("refreshed");

    assert_eq!(first.secret(), again.secret());
    assert_ne!(first.secret(), refreshed.secret());
    assert_eq!(pod.entra.request_count(), 2);
    let stats = cache.stats();
    assert_eq!(stats.upstream_fetches, 2);
    assert_eq!(stats.expires_at, refreshed.expires_at());
    assert!(stats.last_refresh.is_some());
}

#[tokio::test]
async fn failed_refresh_serves_last_good_token_then_surfaces_the_error() {
    // Scenario: after the first token Entra fails every request. While the token is valid the cache serves
    // it (and records the failure); once it has expired, the credential's own error reaches the caller.
    let pod = Pod::start().await;
    pod.entra.set_token_lifetime(Duration::from_secs(3));
    let cache = cached(
        &pod,
        CacheOptions {
            refresh_margin: Duration::from_millis(2500),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..CacheOptions::default()
        },
    );
    let good = cache.token().await.expect("first token");
    pod.entra.set_fault(Some(Fault::ServerError));

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let served = cache.token().await.expect("last good token");
    let stats = cache.stats();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let error = cache
        .token()
        .await
        .expect_err("expired: the error must surface");

    assert_eq!(served.secret(), good.secret());
    assert!(stats.failed_fetches >= 1);
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("AADSTS50000")),
        "{stats:?}"
    );
    assert_eq!(error.code(), Some("50000"), "{error}");
    assert!(pod.entra.request_count() >= 3);
}

#[tokio::test]
async fn after_a_failure_the_cache_waits_before_asking_again() {
    // Scenario: with no valid token, a failure is returned to callers during the backoff without another
    // upstream request; after the backoff the source is asked again and recovers.
    let pod = Pod::start().await;
    pod.entra.push_fault(Fault::ServerError);
    let cache = cached(
        &pod,
        CacheOptions {
            min_backoff: Duration::from_millis(400),
            max_backoff: Duration::from_millis(400),
            ..CacheOptions::default()
        },
    );

    let first = cache.token().await.expect_err("first fails");
    let during_backoff = cache.token().await.expect_err("still failing");
    let requests_during_backoff = pod.entra.request_count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let recovered = cache.token().await.expect("recovered");

    assert_eq!(first.code(), Some("50000"));
    assert_eq!(during_backoff.code(), Some("50000"));
    assert_eq!(requests_during_backoff, 1);
    assert_eq!(
        pod.entra.issued_tokens(),
        vec![recovered.secret().expose().to_owned()]
    );
}

#[tokio::test]
async fn tokens_shorter_than_the_margin_do_not_make_the_cache_spin() {
    // Scenario: tokens live 4 s while the margin is the default 300 s. Fifty calls within the first second
    // cause ONE request (before the fix every call asked again); after half the lifetime a second request
    // brings a new token.
    let pod = Pod::start().await;
    pod.entra.set_token_lifetime(Duration::from_secs(4));
    let cache = cached(&pod, CacheOptions::default());

    let first = cache.token().await.expect("first");
    for _ in 0..50 {
        let again = cache.token().await.expect("cached");
        assert_eq!(again.secret(), first.secret());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requests_in_first_second = pod.entra.request_count();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let second = cache.token().await.expect("second");

    assert_eq!(requests_in_first_second, 1);
    assert_ne!(second.secret(), first.secret());
    assert_eq!(pod.entra.request_count(), 2);
}

#[tokio::test]
async fn a_token_request_that_hangs_fails_at_the_deadline() {
    // Scenario: Entra accepts the connection but never answers in time; the request fails with a Timeout
    // error naming the deadline's key instead of hanging the caller, and the next request, answered
    // promptly, succeeds.
    let pod = Pod::start().await;
    pod.entra
        .push_fault(Fault::Delay(Duration::from_secs(3600)));
    let cache = cached(
        &pod,
        CacheOptions {
            fetch_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            ..CacheOptions::default()
        },
    );

    let error = cache.token().await.expect_err("hung request");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recovered = cache.token().await.expect("answered request");

    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(error.to_string().contains("fetch_timeout_secs"), "{error}");
    assert!(!recovered.secret().expose().is_empty());
}

/// A source that panics on its first `panics` calls, then answers.
#[derive(Debug)]
struct PanicsFirst {
    calls: std::sync::atomic::AtomicU32,
    panics: u32,
}

#[async_trait::async_trait]
impl TokenSource for PanicsFirst {
    async fn token(&self) -> Result<Token, CredentialError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(call >= self.panics, "source bug on call {call}");
        Ok(Token::new(
            "good-password".to_owned(),
            Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
        ))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo::new("panics-first")
    }
}

#[tokio::test]
async fn a_panicking_source_is_an_error_and_the_cache_recovers() {
    // Scenario: the source panics on its first call: the caller gets a Panicked error (the caller's task
    // survives), and after the backoff the cache asks again and gets a token.
    let source = Arc::new(PanicsFirst {
        calls: Default::default(),
        panics: 1,
    });
    let cache = CachedTokenSource::new(
        source.clone(),
        CacheOptions {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            ..CacheOptions::default()
        },
    );

    let error = cache.token().await.expect_err("panic becomes an error");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let token = cache.token().await.expect("recovered");

    assert_eq!(error.kind(), ErrorKind::Panicked, "{error}");
    assert!(
        error.to_string().contains("source bug on call 0"),
        "{error}"
    );
    assert_eq!(token.secret().expose(), "good-password");
    assert_eq!(source.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn repeated_failures_are_logged_once_per_change_of_state() {
    // Scenario: Entra fails ten times in a row, then recovers: one warning/error line for the failure (the
    // retries only at debug level) and one line for the recovery.
    let logs = pgwi_testsupport::logs::LogCapture::start();
    let pod = Pod::start().await;
    pod.entra.set_fault(Some(Fault::ServerError));
    let cache = cached(
        &pod,
        CacheOptions {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..CacheOptions::default()
        },
    );

    for _ in 0..10 {
        let _ = cache.token().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pod.entra.set_fault(None);
    tokio::time::sleep(Duration::from_millis(5)).await;
    cache.token().await.expect("recovered");

    let text = logs.contents();
    assert!(
        pod.entra.request_count() >= 5,
        "{}",
        pod.entra.request_count()
    );
    let failure_lines = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("token fetch failed"))
        .count();
    assert_eq!(failure_lines, 1, "{text}");
    assert_eq!(text.matches("token source recovered").count(), 1, "{text}");
}
