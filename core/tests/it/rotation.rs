//! Token rotation for the life of a program, against a server that judges tokens as Azure does: any
//! unexpired token signed for the role is accepted, an expired one refused (the bench's PAM checker), and
//! every token presented is recorded, so each test can prove that no expired token ever reached it.
//!
//! Tokens live a few seconds here; margins, deadlines and skew are scaled down with them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use pgwi_core::{Config, ConnectError, RotatingPool, connect_with};
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, CredentialError, Environment, ErrorKind,
    SourceContext, SourceInfo, SourceRegistry, Token, TokenSource,
};
use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, Fault, write_token_file};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::ServiceAccountToken;
use pgwi_testsupport::postgres::TokenCheck;
use rstest::rstest;
use sea_orm::sqlx;
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Statement};

use crate::support::config_for;

/// Timing of one test's token source.
#[derive(Clone, Copy)]
struct Timing {
    lifetime: Duration,
    margin: Duration,
    fetch_timeout: Duration,
    skew_secs: u64,
}

impl Timing {
    /// Tokens of 8 s, refreshed 4 s before expiry, requests cut after 2 s, treated as expired 1 s early:
    /// short enough for several lifetimes per test, long enough for a loaded 2-core machine.
    fn short() -> Self {
        Self {
            lifetime: Duration::from_secs(8),
            margin: Duration::from_secs(4),
            fetch_timeout: Duration::from_secs(2),
            skew_secs: 1,
        }
    }
}

struct Setup {
    entra: EntraStandIn,
    db: TestDatabase,
    role: String,
    source: Arc<dyn TokenSource>,
    config: Config,
    timing: Timing,
    token_file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    /// An identity whose role on `db` authenticates with tokens, and an Entra stand-in signing them.
    async fn start(db: TestDatabase, timing: Timing) -> Self {
        let sa_token = ServiceAccountToken::default().encode();
        let dir = tempfile::tempdir().expect("dir");
        let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
        let mut options = EntraOptions::for_server(sa_token, db.server());
        options.identity_name = format!("{}_id", db.name());
        options.token_lifetime = timing.lifetime;
        db.create_token_role(&options.identity_name)
            .await
            .expect("token role");
        let role = options.identity_name.clone();
        let entra = EntraStandIn::start(options).await.expect("entra");
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
        let mut config = config_for(&db, &role);
        config.credential.expiry_skew_secs = timing.skew_secs;
        config.database.max_connections = 8;
        config.database.max_lifetime_secs = 1;
        Self {
            entra,
            db,
            role,
            source,
            config,
            timing,
            token_file,
            dir,
        }
    }

    /// The cache the pool uses, in front of `source`.
    fn cache(&self, source: Arc<dyn TokenSource>) -> Arc<CachedTokenSource> {
        Arc::new(CachedTokenSource::new(
            source,
            CacheOptions {
                refresh_margin: self.timing.margin,
                fetch_timeout: self.timing.fetch_timeout,
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(300),
            },
        ))
    }

    async fn connect(&self) -> RotatingPool {
        connect_with(&self.config, self.cache(self.source.clone()))
            .await
            .expect("connect")
    }

    /// Every token this test's role presented to the server.
    fn checks(&self) -> Vec<TokenCheck> {
        self.db
            .server()
            .token_checks_for(&self.role)
            .expect("token checks")
    }

    /// The server never saw an expired token from this role, and accepted every token it saw.
    fn assert_no_expired_token_presented(&self) -> Vec<TokenCheck> {
        let checks = self.checks();
        assert!(!checks.is_empty(), "the server judged no token");
        for check in &checks {
            assert!(
                check.accepted_unexpired(),
                "the server was presented an unacceptable token: {check:?}"
            );
        }
        checks
    }
}

/// Opens a NEW physical connection through `db`'s pool even while idle ones exist.
async fn new_connection(db: &RotatingPool) -> Result<(), ConnectError> {
    let mut held = Vec::new();
    // Take every idle connection, so the next acquire must open one.
    while db.pool().num_idle() > 0 {
        held.push(db.acquire().await?);
    }
    let conn = db.acquire().await?;
    drop(held);
    drop(conn);
    Ok(())
}

/// Opens a new connection every `interval` for `duration`; the failures.
async fn new_connections_for(
    db: &RotatingPool,
    duration: Duration,
    interval: Duration,
) -> Vec<String> {
    let until = tokio::time::Instant::now() + duration;
    let mut failures = Vec::new();
    while tokio::time::Instant::now() < until {
        if let Err(e) = new_connection(db).await {
            failures.push(e.to_string());
        }
        tokio::time::sleep(interval).await;
    }
    failures
}

/// The start time of the backend serving one query through SeaORM's connection.
async fn backend_start(conn: &DatabaseConnection) -> Result<i64, sea_orm::DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT extract(epoch FROM backend_start)::bigint AS started \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        ))
        .await?
        .expect("one row");
    row.try_get::<i64>("", "started")
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_seaorm_connection_kept_rotation_goes_on(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: a service keeps nothing but `connection().clone()` (the Database value is dropped at once),
    // with tokens of 8 s — shorter than the default 300 s margin, so they are refreshed at half their
    // lifetime. Over more than three token lifetimes, with connections recycled every second, no query
    // fails, new connections present new tokens, the token endpoint is not hammered, and the server never
    // sees an expired token.
    let mut timing = Timing::short();
    timing.margin = CacheOptions::default().refresh_margin;
    let s = Setup::start(fresh_db, timing).await;
    let conn: DatabaseConnection = s.connect().await.connection().clone();

    let until = tokio::time::Instant::now() + Duration::from_secs(26);
    let (mut ok, mut failures, mut backends) = (0, Vec::new(), BTreeSet::new());
    while tokio::time::Instant::now() < until {
        match backend_start(&conn).await {
            Ok(started) => {
                ok += 1;
                backends.insert(started);
            }
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    let checks = s.assert_no_expired_token_presented();
    let distinct_tokens: BTreeSet<i64> = checks.iter().filter_map(|c| c.expires_at).collect();
    assert!(
        distinct_tokens.len() >= 4,
        "new connections presented only {} tokens over 26 s of 8 s tokens: {checks:?}",
        distinct_tokens.len()
    );
    assert!(
        backends.len() >= 8,
        "connections were not recycled: {backends:?}"
    );
    let requests = s.entra.request_count();
    assert!(
        (4..=14).contains(&requests),
        "{requests} token requests in 26 s of 8 s tokens (at half-life: about 7)"
    );
    conn.close_by_ref().await.expect("close");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_hangs_forever_refuses_new_connections_at_expiry(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: after the first token, Entra accepts requests but never answers. Every request is cut at
    // its 1 s deadline; when the token in use reaches its expiry (less the skew) new connections are
    // refused with the credential's own Timeout error — through acquire(), the sqlx pool and SeaORM's
    // connection —
    // while an open connection keeps serving and an idle one is still handed out. When Entra answers again,
    // new connections are served. The server never sees an expired token.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let mut config = s.config.clone();
    config.database.max_lifetime_secs = 600;
    let db = connect_with(&config, s.cache(s.source.clone()))
        .await
        .expect("connect");
    let mut held = db.acquire().await.expect("the first connection");
    s.entra
        .set_fault(Some(Fault::Delay(Duration::from_secs(3600))));
    let expiry = db.rotation_stats().current_expiry.expect("expiry");
    let until_expired =
        expiry - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
    tokio::time::sleep(Duration::try_from(until_expired).unwrap_or_default()).await;
    // Idle connections are handed out and serve (the pool may hold more than one).
    let mut idle = Vec::new();
    while db.pool().num_idle() > 0 {
        let mut conn = db
            .acquire()
            .await
            .expect("an idle connection is handed out");
        let _: (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("an idle connection serves");
        idle.push(conn);
    }

    let refused = db
        .acquire()
        .await
        .expect_err("no valid token: a new connection is refused");
    let through_sqlx = sqlx::query("SELECT 1")
        .execute(db.pool())
        .await
        .expect_err("the sqlx pool must refuse too");
    let through_seaorm = db
        .connection()
        .execute_unprepared("SELECT 1")
        .await
        .expect_err("SeaORM's connection must refuse too");
    let open_still_serves: (i32,) = sqlx::query_as("SELECT 7")
        .fetch_one(&mut *held)
        .await
        .expect("an open connection keeps serving");
    drop(held);
    drop(idle);
    s.entra.set_fault(None);
    wait_until("recovery", Duration::from_secs(10), async || {
        new_connection(&db).await.is_ok()
    })
    .await;

    match &refused {
        ConnectError::Credential(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{e}"),
        other => panic!("expected the credential's error, got {other:?}"),
    }
    assert!(
        through_sqlx.to_string().contains("no valid token"),
        "{through_sqlx}"
    );
    let seaorm_text = through_seaorm.to_string();
    assert!(
        seaorm_text.contains("no valid token") && seaorm_text.contains("fetch_timeout_secs"),
        "{seaorm_text}"
    );
    assert_eq!(open_still_serves.0, 7);
    s.assert_no_expired_token_presented();
    db.close().await;
}

#[rstest]
#[case::server_errors(Fault::ServerError)]
#[case::throttled(Fault::Throttled)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_failing_longer_than_a_token_lives_then_recovering(
    #[future(awt)] fresh_db: TestDatabase,
    #[case] fault: Fault,
) {
    // Scenario: Entra answers 500 (or 429) for longer than a token lives, then recovers. While the last
    // token is valid, new connections use it; after its expiry they are refused with the credential's
    // error; once Entra answers again they are served with the new token. The server saw no expired token.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let db = s.connect().await;
    s.entra.set_fault(Some(fault));
    if let Err(e) = new_connection(&db).await {
        panic!(
            "the last good token must still serve: {e}; checks: {:#?}",
            s.checks()
        );
    }
    let expiry = db.rotation_stats().current_expiry.expect("expiry");
    let until_expired =
        expiry - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(500);
    tokio::time::sleep(Duration::try_from(until_expired).unwrap_or_default()).await;

    let during_gap = new_connection(&db)
        .await
        .expect_err("refused during the gap");
    s.entra.set_fault(None);
    wait_until("recovery", Duration::from_secs(10), async || {
        new_connection(&db).await.is_ok()
    })
    .await;

    assert!(
        matches!(&during_gap, ConnectError::Credential(e) if !e.is_configuration()),
        "{during_gap:?}"
    );
    assert!(db.rotation_stats().rotations >= 1);
    s.assert_no_expired_token_presented();
    db.close().await;
}

/// A source that panics on chosen calls and otherwise asks `inner`.
#[derive(Debug)]
struct PanicsOnCalls {
    inner: Arc<dyn TokenSource>,
    calls: AtomicU32,
    panic_on: std::ops::RangeInclusive<u32>,
}

#[async_trait::async_trait]
impl TokenSource for PanicsOnCalls {
    async fn token(&self) -> Result<Token, CredentialError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(
            !self.panic_on.contains(&call),
            "a bug in the source on call {call}"
        );
        self.inner.token().await
    }

    fn info(&self) -> SourceInfo {
        self.inner.info()
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_panics_does_not_end_rotation(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the source panics on its 2nd and 3rd calls (the first refreshes). The refresher survives,
    // retries with backoff, and rotation goes on: over three token lifetimes new connections keep being
    // served with fresh tokens and no query fails.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let source = Arc::new(PanicsOnCalls {
        inner: s.source.clone(),
        calls: AtomicU32::new(0),
        panic_on: 2..=3,
    });
    let db = connect_with(&s.config, s.cache(source.clone()))
        .await
        .expect("connect");

    let failures =
        new_connections_for(&db, Duration::from_secs(26), Duration::from_millis(200)).await;

    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        source.calls.load(Ordering::SeqCst) >= 5,
        "the panicking calls were never retried"
    );
    assert!(
        db.rotation_stats().rotations >= 2,
        "{:?}",
        db.rotation_stats()
    );
    s.assert_no_expired_token_presented();
    db.close().await;
}

/// A source whose `info()` panics once, when armed: a panic in the refresher's own task, not in the
/// isolated request.
#[derive(Debug)]
struct InfoPanicsOnce {
    inner: Arc<dyn TokenSource>,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl TokenSource for InfoPanicsOnce {
    async fn token(&self) -> Result<Token, CredentialError> {
        self.inner.token().await
    }

    fn info(&self) -> SourceInfo {
        assert!(
            !self.armed.swap(false, Ordering::SeqCst),
            "a bug while describing the source"
        );
        self.inner.info()
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_refresher_itself_is_survived(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: after connecting, the refresher's own task panics once (describing the source fails while
    // it refreshes). The supervisor restarts it: rotation goes on for two more token lifetimes, new
    // connections are served, and the server sees no expired token.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let source = Arc::new(InfoPanicsOnce {
        inner: s.source.clone(),
        armed: AtomicBool::new(false),
    });
    let db = connect_with(&s.config, s.cache(source.clone()))
        .await
        .expect("connect");
    let before = db.rotation_stats().rotations;
    source.armed.store(true, Ordering::SeqCst);

    let failures =
        new_connections_for(&db, Duration::from_secs(18), Duration::from_millis(250)).await;

    assert!(
        !source.armed.load(Ordering::SeqCst),
        "the panic never happened"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        db.rotation_stats().rotations >= before + 2,
        "{:?}",
        db.rotation_stats()
    );
    s.assert_no_expired_token_presented();
    db.close().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_replacing_the_projected_token_mid_run_changes_nothing(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: mid-run the kubelet projects a new service-account token (an atomic replace of the file,
    // as its `..data` symlink swap does) and Entra accepts the new one as well as the old, which is still
    // unexpired. Rotation goes on across it and new connections keep being served.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let db = s.connect().await;
    new_connection(&db).await.expect("before");
    let renewed = ServiceAccountToken::default().encode();
    s.entra.accept_assertion(renewed.clone());
    let staged = s.dir.path().join("staged-token");
    std::fs::write(&staged, &renewed).expect("stage");
    std::fs::rename(&staged, &s.token_file).expect("atomic replace");

    let failures =
        new_connections_for(&db, Duration::from_secs(18), Duration::from_millis(250)).await;

    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        db.rotation_stats().rotations >= 2,
        "{:?}",
        db.rotation_stats()
    );
    assert!(
        s.entra.rejections().is_empty(),
        "{:?}",
        s.entra.rejections()
    );
    s.assert_no_expired_token_presented();
    db.close().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_workers_through_one_pool_across_five_rotations(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: 16 tasks query continuously through one pool whose connections live 1 s, while 8 s tokens
    // are rotated at least five times: no query fails, and every connection opened presented a token the
    // server accepted as unexpired.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let db = Arc::new(s.connect().await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (db, stop) = (db.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match sqlx::query_scalar::<_, i32>("SELECT 1")
                    .fetch_one(db.pool())
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        });
    }
    wait_until("five rotations", Duration::from_secs(90), async || {
        db.rotation_stats().rotations >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = tasks.join_all().await;

    let queries: u64 = results.iter().map(|(ok, _)| ok).sum();
    let failures: Vec<&String> = results.iter().flat_map(|(_, failed)| failed).collect();
    assert!(
        failures.is_empty(),
        "{} of {} queries failed: {:?}",
        failures.len(),
        queries,
        &failures[..failures.len().min(5)]
    );
    let checks = s.assert_no_expired_token_presented();
    let distinct_tokens: BTreeSet<i64> = checks.iter().filter_map(|c| c.expires_at).collect();
    assert!(distinct_tokens.len() >= 5, "{checks:?}");
    Arc::try_unwrap(db).expect("sole owner").close().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_ends_rotation(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: after close(), no further token is requested: the refresher ends with the pool.
    let s = Setup::start(fresh_db, Timing::short()).await;
    let db = s.connect().await;
    db.close().await;
    let after_close = s.entra.request_count();
    tokio::time::sleep(Duration::from_secs(5)).await;

    assert_eq!(s.entra.request_count(), after_close);
}

#[rstest]
#[tokio::test]
async fn user_auto_takes_the_identity_name_from_the_token(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: with user = "auto", pgwi logs in as the managed identity's name from the token's xms_mirid.
    let mut timing = Timing::short();
    timing.lifetime = Duration::from_secs(3600);
    let mut s = Setup::start(fresh_db, timing).await;
    s.config.database.user = Some("auto".into());

    let db = s.connect().await;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(db.pool())
        .await
        .expect("query");

    assert_eq!(db.user(), s.role);
    assert_eq!(user, s.role);
    db.close().await;
}
