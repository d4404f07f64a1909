//! Token rotation under load, and the pool's behaviour when the token endpoint fails.
//!
//! Azure accepts every unexpired token it issued, while PostgreSQL holds one password per role. To model
//! Azure faithfully the Entra stand-in gives each token its own identity name, and the test makes a role for
//! each token (cleartext `password` auth, like Azure) before the token is returned; pgwi runs with
//! `user = "auto"`, so new connections present the newest token under its identity's name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwi_core::{Config, ConnectError, Database, connect_with};
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, Environment, SourceContext, SourceRegistry,
};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, Fault, IssuedToken, write_token_file};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::ServiceAccountToken;
use pgwi_testsupport::{PasswordAuth, TestDatabase};
use rstest::rstest;
use sea_orm::sqlx;

use crate::support::config_for;

/// Issue time of each token's role.
type Issued = Arc<Mutex<BTreeMap<String, i64>>>;

struct Setup {
    entra: EntraStandIn,
    db: Arc<TestDatabase>,
    issued: Issued,
    credential: Arc<CachedTokenSource>,
    config: Config,
    _dir: tempfile::TempDir,
}

/// An Entra stand-in whose every token becomes a role on `db` before it is returned.
async fn setup(db: TestDatabase, lifetime: Duration, margin: Duration) -> Setup {
    let db = Arc::new(db);
    let sa_token = ServiceAccountToken::default().encode();
    let dir = tempfile::tempdir().expect("dir");
    let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
    let mut options = EntraOptions::new(sa_token);
    options.identity_name = format!("{}_id", db.name());
    options.identity_per_token = true;
    options.token_lifetime = lifetime;
    let entra = EntraStandIn::start(options).await.expect("entra");
    let issued: Issued = Arc::default();
    let (hook_db, hook_issued) = (db.clone(), issued.clone());
    entra.set_on_issue(Arc::new(move |token: IssuedToken| {
        let (db, issued) = (hook_db.clone(), hook_issued.clone());
        Box::pin(async move {
            db.create_named_role(&token.identity_name, &token.token, PasswordAuth::Cleartext)
                .await
                .expect("role for the new token");
            issued
                .lock()
                .expect("lock")
                .insert(token.identity_name, pgwi_testsupport::jwt::unix_now());
        })
    }));
    let credential_config = CredentialConfig {
        kind: "workload-identity".into(),
        ..CredentialConfig::default()
    };
    let ctx = SourceContext {
        env: Environment::from_pairs(entra.webhook_environment(&token_file)),
        azure_client_options: Some(entra.azure_client_options().expect("options")),
    };
    let source = SourceRegistry::default()
        .build(&credential_config, &ctx)
        .expect("source");
    let credential = Arc::new(CachedTokenSource::new(
        source,
        CacheOptions {
            refresh_margin: margin,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        },
    ));
    let mut config = config_for(&db, "auto");
    config.database.max_connections = 8;
    config.database.max_lifetime_secs = 1;
    Setup {
        entra,
        db,
        issued,
        credential,
        config,
        _dir: dir,
    }
}

async fn whoami(db: &Database) -> Result<(String, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT current_user::text, extract(epoch FROM backend_start)::bigint \
         FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(db.pool())
    .await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_query(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: tokens live 4 s and are refreshed 2 s before expiry; connections live 1 s. While 8 tasks
    // query continuously, at least 5 rotations happen, no query fails, and every connection presented a
    // token that was valid when it was opened — each new token's role shows up in new connections.
    pgwi_testsupport::init_test_logging();
    let s = setup(fresh_db, Duration::from_secs(4), Duration::from_secs(2)).await;
    let db = Arc::new(
        connect_with(&s.config, s.credential.clone())
            .await
            .expect("connect"),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (db, stop) = (db.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed, mut seen) = (0u64, Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match whoami(&db).await {
                    Ok(row) => {
                        ok += 1;
                        seen.push(row);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, seen)
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while db.rotation_stats().rotations < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last rotation's connections appear.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = tasks.join_all().await;

    let stats = db.rotation_stats();
    let issued = s.issued.lock().expect("lock").clone();
    let queries: u64 = results.iter().map(|(ok, _, _)| ok).sum();
    let failures: Vec<&String> = results.iter().flat_map(|(_, failed, _)| failed).collect();
    let connections: BTreeMap<(String, i64), ()> = results
        .iter()
        .flat_map(|(_, _, seen)| seen.iter().cloned().map(|row| (row, ())))
        .collect();
    assert!(
        stats.rotations >= 5,
        "only {} rotations in 45 s",
        stats.rotations
    );
    assert!(
        failures.is_empty(),
        "{} of {} queries failed: {:?}",
        failures.len(),
        queries,
        &failures[..failures.len().min(5)]
    );
    let users: std::collections::BTreeSet<&String> =
        connections.keys().map(|(user, _)| user).collect();
    assert!(
        users.len() >= 6,
        "connections used only {users:?}; issued {issued:?}"
    );
    for (user, opened) in connections.keys() {
        let issued_at = issued
            .get(user)
            .unwrap_or_else(|| panic!("{user} is no issued token's role"));
        assert!(
            *opened >= issued_at - 1 && *opened <= issued_at + 4 + 1,
            "{user}'s connection opened at {opened}, outside its token's life from {issued_at}"
        );
    }
    assert!(stats.credential.upstream_fetches >= 6);
    assert_eq!(
        s.entra.issued_tokens().len() as u64,
        stats.credential.upstream_fetches
    );
    Arc::try_unwrap(db).expect("sole owner").close().await;
    drop(s.db);
}

#[rstest]
#[tokio::test]
async fn failing_token_endpoint_keeps_the_last_token_until_it_expires(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: after the first token Entra fails every request. New connections keep working on the last
    // good token while it is valid; once it has expired they are refused with the credential's own error,
    // and the expired token is never presented.
    let s = setup(fresh_db, Duration::from_secs(4), Duration::from_secs(3)).await;
    let db = connect_with(&s.config, s.credential.clone())
        .await
        .expect("connect");
    s.entra.set_fault(Some(Fault::ServerError));

    let mut working = 0;
    for _ in 0..10 {
        let mut conn = db.acquire().await.expect("still the last good token");
        let _: (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("query");
        working += 1;
        drop(conn);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expiry = db.rotation_stats().current_expiry.expect("expiry");
    let until_expired =
        expiry - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    tokio::time::sleep(Duration::try_from(until_expired).unwrap_or_default()).await;
    let error = db.acquire().await.expect_err("the token has expired");
    let raw_pool = tokio::time::timeout(Duration::from_secs(15), db.pool().acquire()).await;

    assert_eq!(working, 10);
    match &error {
        ConnectError::Credential(e) => assert_eq!(e.code(), Some("50000"), "{e}"),
        other => panic!("expected the credential's error, got {other:?}"),
    }
    assert!(
        matches!(raw_pool, Ok(Err(_))),
        "the pool must refuse new connections: {raw_pool:?}"
    );
    assert_eq!(s.entra.issued_tokens().len(), 1);
    db.close().await;
}

#[rstest]
#[tokio::test]
async fn user_auto_takes_the_identity_name_from_the_token(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: with user = "auto", pgwi logs in as the managed identity's name from the token's xms_mirid.
    let s = setup(
        fresh_db,
        Duration::from_secs(3600),
        Duration::from_secs(300),
    )
    .await;

    let db = connect_with(&s.config, s.credential.clone())
        .await
        .expect("connect");
    let (user, _) = whoami(&db).await.expect("query");

    let expected = format!("{}_id-1", s.db.name());
    assert_eq!(db.user(), expected);
    assert_eq!(user, expected);
    db.close().await;
}
