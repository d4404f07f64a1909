//! The cache in front of the workload-identity source: single flight, refresh ahead of expiry, and the last
//! good token while a refresh fails.

use std::sync::Arc;
use std::time::Duration;

use pgwi_credentials::{CacheOptions, CachedTokenSource, SourceRegistry, TokenSource};
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
    tokio::time::sleep(Duration::from_millis(1200)).await;
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
        },
    );
    let good = cache.token().await.expect("first token");
    pod.entra.set_fault(Some(Fault::ServerError));

    tokio::time::sleep(Duration::from_millis(800)).await;
    let served = cache.token().await.expect("last good token");
    let stats = cache.stats();
    tokio::time::sleep(Duration::from_millis(2600)).await;
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
