//! `pgwi proxy`'s start and stop as Jobs, sidecars and rolling updates see them: `GET /startup`, the
//! connection test, `POST /quitquitquit`, the minimum delay after SIGTERM, the drain that ends idle sessions
//! with 57P01 and lets transactions commit, the deadline that cuts what is left, and sessions ended after
//! their token expired.

use std::time::Duration;

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::fixtures::fresh_db;
use rstest::rstest;
use sea_orm::sqlx::{self, Connection as _, PgConnection};

use super::{
    CHECKER_BURST, Running, SHORT_TOKENS, START_LIMIT, connect, healthz, http_get, livez, proxy,
    short_token_settings,
};
use crate::support::{WorkloadIdentity, error_line, text};

/// `METHOD path` on the health endpoint at `address`: the status code and the body.
async fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    pgwi_testsupport::http::request(address, method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} at {address}: {e}"))
}

/// A browser's `POST path` (it carries an `Origin`, as a web page's request to loopback does): the response.
async fn browser_post(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nOrigin: https://example.com\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

/// The SQLSTATE and hint of a query that must fail on `connection`.
async fn query_error(connection: &mut PgConnection, sql: &str) -> (String, String) {
    let error = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *connection)
        .await
        .map(|_| ())
        .expect_err("the query succeeded");
    let Some(db_error) = error.as_database_error() else {
        panic!("not a server error: {error}");
    };
    let hint = db_error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|e| e.hint())
        .unwrap_or_default()
        .to_owned();
    (
        db_error.code().map(|c| c.into_owned()).unwrap_or_default(),
        hint,
    )
}

/// Waits until the proxy has logged `count` sessions it ended for `reason` (`drain`, `token_expired`).
async fn wait_for_ended(running: &mut Running, reason: &str, count: usize) {
    let until = std::time::Instant::now() + START_LIMIT;
    loop {
        let ended = running
            .process
            .log_lines("connection ended")
            .iter()
            .filter(|line| line["fields"]["ended_by"] == reason)
            .count();
        if ended >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "the proxy did not end {count} session(s) for {reason}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rows of `table` in `db`, read as the administrator (what was committed).
async fn committed(db: &TestDatabase, table: &str) -> Vec<i32> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT n FROM {table} ORDER BY n"
    )))
    .fetch_all(db.admin())
    .await
    .expect("rows")
}

#[rstest]
#[tokio::test]
async fn a_stop_serves_late_clients_for_the_minimum_delay_then_ends_idle_sessions_and_lets_transactions_commit(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves the rolling-update stop: after SIGTERM readiness is 503 but a late client is still served for
    // --min-sigterm-delay; then new clients are refused, an idle session is ended at once with 57P01, a
    // session inside a transaction commits it (both rows are there afterwards) and is ended at its next
    // idle point, and the proxy exits 0 as soon as no session is left, without cutting anything.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--healthz",
        "127.0.0.1:0",
        "--min-sigterm-delay",
        "4",
        "--drain-timeout-secs",
        "120",
    ];
    let mut running = Running::start(proxy(&db, &wi, &args), 1, true).await;
    let health = running.healthz.clone().expect("healthz");
    let (host, port) = running.tcp();
    let (user, name) = (wi.identity.as_str(), db.name());
    let mut idle = connect(&host, port, user, name).await.expect("connect");
    let mut busy = connect(&host, port, user, name).await.expect("connect");
    sqlx::raw_sql("CREATE TABLE drained (n int); BEGIN; INSERT INTO drained VALUES (1)")
        .execute(&mut busy)
        .await
        .expect("begin");

    running.process.signal("TERM");
    let stopping =
        "stop requested: still accepting new connections for the minimum delay, then draining";
    running.process.wait_for_log(stopping, 1, START_LIMIT).await;
    let (status, body) = healthz(&health).await;
    assert!(
        status == 503 && body.contains("stopping"),
        "{status}: {body}"
    );
    assert_eq!(http_get(&health, "/startup").await.0, 200);
    let mut late = connect(&host, port, user, name)
        .await
        .expect("a late client during the minimum delay");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut late)
        .await
        .expect("late query");
    assert_eq!(one, 1);
    late.close().await.expect("close");

    let draining = "draining: not accepting new connections; idle sessions end now, sessions in a \
                    transaction when it ends";
    running.process.wait_for_log(draining, 1, START_LIMIT).await;
    assert!(
        connect(&host, port, user, name).await.is_err(),
        "a new client was accepted while draining"
    );
    let (status, body) = livez(&health).await;
    assert!(
        status == 200 && body.contains("draining"),
        "{status}: {body}"
    );
    wait_for_ended(&mut running, "drain", 1).await;
    let (code, _) = query_error(&mut idle, "SELECT 1").await;
    assert_eq!(code, "57P01", "the idle session's end");

    sqlx::raw_sql("INSERT INTO drained VALUES (2); COMMIT")
        .execute(&mut busy)
        .await
        .expect("the transaction finishes during the drain");
    wait_for_ended(&mut running, "drain", 2).await;
    let (code, hint) = query_error(&mut busy, "SELECT 1").await;
    assert_eq!(code, "57P01", "the session's end after its transaction");
    assert!(hint.contains("stopping"), "{hint}");
    running
        .process
        .wait_for_log("stopped", 1, START_LIMIT)
        .await;
    assert!(
        running
            .process
            .log_lines("closing the open sessions")
            .is_empty(),
        "the drain cut sessions although each reached an idle point"
    );
    running.stop().await;
    assert_eq!(committed(&db, "drained").await, vec![1, 2]);
}

#[rstest]
#[tokio::test]
async fn a_transaction_still_open_at_the_drain_deadline_is_cut_and_rolled_back(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: a session that keeps its transaction open is not ended by the drain (it still runs a
    // statement after the drain began) but is cut at --drain-timeout-secs: the proxy says so while it is
    // still running, the session's backend leaves the server and its transaction is rolled back.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let args = ["--listen", "127.0.0.1:0", "--drain-timeout-secs", "3"];
    let mut running = Running::start(proxy(&db, &wi, &args), 1, false).await;
    let (host, port) = running.tcp();
    let mut open = connect(&host, port, &wi.identity, db.name())
        .await
        .expect("connect");
    // Its own statement: in one simple query with BEGIN, the CREATE would join the transaction.
    sqlx::raw_sql("CREATE TABLE cut (n int)")
        .execute(&mut open)
        .await
        .expect("create");
    sqlx::raw_sql("BEGIN; INSERT INTO cut VALUES (1)")
        .execute(&mut open)
        .await
        .expect("begin");
    running.process.signal("TERM");
    let draining = "draining: not accepting new connections; idle sessions end now, sessions in a \
                    transaction when it ends";
    running.process.wait_for_log(draining, 1, START_LIMIT).await;
    sqlx::raw_sql("INSERT INTO cut VALUES (2)")
        .execute(&mut open)
        .await
        .expect("the transaction goes on during the drain");
    let closing = running
        .process
        .wait_for_log("closing the open sessions", 1, START_LIMIT)
        .await;
    assert_eq!(
        closing[0]["fields"]["reason"],
        "the drain deadline was reached"
    );
    running
        .process
        .wait_for_log("stopped", 1, START_LIMIT)
        .await;
    let until = std::time::Instant::now() + START_LIMIT;
    loop {
        let backends: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
        )
        .bind(&wi.identity)
        .bind(db.name())
        .fetch_one(db.admin())
        .await
        .expect("pg_stat_activity");
        if backends == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the cut session's backend is still on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(committed(&db, "cut").await.is_empty());
    running.stop().await;
}

/// An address of this machine that is not loopback (the route to a private network's address), so a
/// request from it reaches a health endpoint on 0.0.0.0 as another pod's would.
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket.connect("10.255.255.255:9").expect(
        "a route to a private address: this machine needs a non-loopback interface (Docker's bridge will do)",
    );
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[rstest]
#[tokio::test]
async fn quitquitquit_stops_gracefully_for_loopback_clients_only_and_startup_answers_once_serving(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: GET /startup answers 200 once the proxy serves; POST /quitquitquit is 404 unless enabled,
    // 403 from a non-loopback address and from a browser (an Origin header), the proxy serving on; 404 as
    // a GET; and from loopback it stops the proxy gracefully with exit 0; enabling it without a health
    // address is a configuration error.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let no_health = proxy(&db, &wi, &["--listen", "127.0.0.1:0", "--quitquitquit"])
        .output()
        .await;
    assert_eq!(
        no_health.status.code(),
        Some(2),
        "{}",
        text(&no_health.stderr)
    );
    let line = error_line(&no_health);
    assert!(
        line.contains("proxy.quitquitquit") && line.contains("--healthz"),
        "{line}"
    );

    let args = ["--listen", "127.0.0.1:0", "--healthz", "127.0.0.1:0"];
    let running = Running::start(proxy(&db, &wi, &args), 1, true).await;
    let health = running.healthz.clone().expect("healthz");
    assert_eq!(http(&health, "POST", "/quitquitquit").await.0, 404);
    running.stop().await;

    let args = [
        "--listen",
        "127.0.0.1:0",
        "--healthz",
        "0.0.0.0:0",
        "--quitquitquit",
    ];
    let mut running = Running::start(proxy(&db, &wi, &args), 1, true).await;
    let port = running
        .healthz
        .clone()
        .expect("healthz")
        .rsplit_once(':')
        .expect("port")
        .1
        .to_owned();
    let (status, body) = http_get(&format!("127.0.0.1:{port}"), "/startup").await;
    assert_eq!((status, body.as_str()), (200, "started\n"));
    let remote = format!("{}:{port}", non_loopback_address());
    let (status, body) = http(&remote, "POST", "/quitquitquit").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        http(&format!("127.0.0.1:{port}"), "GET", "/quitquitquit")
            .await
            .0,
        404
    );
    let browser = browser_post(&format!("127.0.0.1:{port}"), "/quitquitquit").await;
    assert!(browser.starts_with("HTTP/1.1 403"), "{browser}");
    let (host, listen_port) = running.tcp();
    let still = connect(&host, listen_port, &wi.identity, db.name())
        .await
        .expect("still serving after the refused requests");
    still.close().await.expect("close");
    assert!(!running.process.has_exited());
    let (status, body) = http(&format!("127.0.0.1:{port}"), "POST", "/quitquitquit").await;
    assert_eq!((status, body.as_str()), (200, "stopping\n"));
    running
        .process
        .wait_for_log("stopped", 1, START_LIMIT)
        .await;
    let output = running.stop().await;
    assert!(text(&output.stderr).contains("stopping: POST /quitquitquit"));
}

#[rstest]
#[tokio::test]
async fn the_connection_test_refuses_to_start_without_the_database_and_passes_with_it(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: with --run-connection-test a proxy whose database does not exist exits 1 before listening,
    // with one error naming that database; with the right one it logs in once (the server judged the
    // token before any client came) and then serves.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let args = ["--listen", "127.0.0.1:0", "--run-connection-test"];
    let missing = format!("{}_missing", db.name());
    let output = proxy(&db, &wi, &args)
        .env("DBNAME", &missing)
        .output()
        .await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let line = error_line(&output);
    assert!(
        line.contains("connection test") && line.contains(&missing) && line.contains("3D000"),
        "{line}"
    );
    assert!(
        !text(&output.stderr).contains("\"listening\""),
        "it listened"
    );

    let mut running = Running::start(proxy(&db, &wi, &args), 1, false).await;
    running
        .process
        .wait_for_log("the connection test logged in", 1, START_LIMIT)
        .await;
    super::assert_no_expired_token_presented(&db, &wi.identity);
    let (host, port) = running.tcp();
    let client = connect(&host, port, &wi.identity, db.name())
        .await
        .expect("connect");
    client.close().await.expect("close");
    running.stop().await;
}

#[rstest]
#[tokio::test]
async fn sessions_end_at_their_first_idle_point_after_their_token_expired_when_asked(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves end_sessions_after_token_expiry: with 8 s tokens, a session idle past its token's expiry is
    // ended with 57P01 and a hint naming the setting, one inside a transaction across the expiry commits
    // it first; a new session logs in with a fresh token; and without the setting (the default) a session
    // outlives its token.
    let _quiet = CHECKER_BURST.read().await;
    let db = fresh_db;
    let wi = WorkloadIdentity::with_token_lifetime(&db, Some(SHORT_TOKENS)).await;
    let listen = ["--listen", "127.0.0.1:0"];
    let strict = proxy(
        &db,
        &wi,
        &[&listen[..], &["--end-sessions-after-token-expiry"]].concat(),
    )
    .envs(short_token_settings());
    let mut strict = Running::start(strict, 1, false).await;
    let lenient = Running::start(
        proxy(&db, &wi, &listen).envs(short_token_settings()),
        1,
        false,
    )
    .await;
    let (user, name) = (wi.identity.as_str(), db.name());
    let (host, port) = strict.tcp();
    let mut idle = connect(&host, port, user, name).await.expect("connect");
    let mut busy = connect(&host, port, user, name).await.expect("connect");
    let (lenient_host, lenient_port) = lenient.tcp();
    let mut kept = connect(&lenient_host, lenient_port, user, name)
        .await
        .expect("connect");
    sqlx::raw_sql("CREATE TABLE expiring (n int); BEGIN; INSERT INTO expiring VALUES (1)")
        .execute(&mut busy)
        .await
        .expect("begin");
    // Past every token these sessions logged in with.
    tokio::time::sleep(SHORT_TOKENS + Duration::from_secs(2)).await;
    wait_for_ended(&mut strict, "token_expired", 1).await;
    sqlx::raw_sql("INSERT INTO expiring VALUES (2); COMMIT")
        .execute(&mut busy)
        .await
        .expect("the transaction across the expiry commits");
    wait_for_ended(&mut strict, "token_expired", 2).await;
    let (code, hint) = query_error(&mut idle, "SELECT 1").await;
    assert_eq!(code, "57P01");
    assert!(hint.contains("end_sessions_after_token_expiry"), "{hint}");
    let (code, _) = query_error(&mut busy, "SELECT 1").await;
    assert_eq!(code, "57P01");
    assert_eq!(committed(&db, "expiring").await, vec![1, 2]);
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut kept)
        .await
        .expect("a session outlives its token by default");
    assert_eq!(one, 1);
    let fresh = connect(&host, port, user, name)
        .await
        .expect("a new session");
    fresh.close().await.expect("close");
    kept.close().await.expect("close");
    strict.stop().await;
    lenient.stop().await;
    super::assert_no_expired_token_presented(&db, user);
}
