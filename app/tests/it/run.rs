//! `pgwi run` with each source, concurrently, and interrupted by SIGTERM.

use std::time::Duration;

use pgwi_testsupport::az::{AzBehaviour, FakeAz};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::{TestDatabase, jwt};
use rstest::rstest;
use sea_orm::sqlx::{self, Connection as _};

use crate::support::{
    Pgwi, WorkloadIdentity, assert_no_secret, assert_success, demo_rows, error_line, inventory,
    runs, scram_role, text,
};

#[rstest]
#[tokio::test]
async fn run_with_a_static_password_twice_leaves_three_rows(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the CronJob's variables plus PGPASSWORD; two runs leave exactly the three rows, two run
    // records, and JSON log lines without the password.
    let role = scram_role(&fresh_db).await;
    for _ in 0..2 {
        let output = Pgwi::new(&["run"])
            .database(&fresh_db, &role.name)
            .env("PGPASSWORD", &role.password)
            .output()
            .await;
        assert_success(&output);
        let stderr = text(&output.stderr);
        assert!(
            !stderr.contains(&role.password),
            "the password reached the logs"
        );
        let summary = stderr
            .lines()
            .find(|l| l.contains("run succeeded"))
            .expect("a summary line");
        let json: serde_json::Value = serde_json::from_str(summary).expect("JSON log lines");
        assert_eq!(json["fields"]["rows_written"], 3);
    }

    assert_eq!(inventory(&fresh_db).await, demo_rows());
    let runs = runs(&fresh_db).await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|(outcome, rows, kind)| outcome == "succeeded"
                && *rows == 3
                && kind == "static-password")
    );
}

#[rstest]
#[tokio::test]
async fn run_with_workload_identity_through_the_https_stand_in(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: only what AKS injects (AZURE_* and the projected token) plus DBHOST/DBNAME/DBUSER/SSL_MODE;
    // pgwi picks workload identity, gets ONE token over HTTPS, and writes the rows over ONE physical
    // connection (the server judged exactly one login: migrations, run record, rows and outcome shared
    // it). No token or service-account token appears in its output; the summary line counts the one token
    // request and gives the token's expiry, as /metrics would.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;

    let output = Pgwi::new(&["run"])
        .database(&db, &wi.identity)
        .envs(wi.env())
        .output()
        .await;

    assert_success(&output);
    assert_eq!(inventory(&db).await, demo_rows());
    assert_eq!(
        runs(&db).await,
        vec![("succeeded".into(), 3, "workload-identity".into())]
    );
    let all = text(&output.stdout) + &text(&output.stderr);
    for secret in wi.entra.issued_tokens().iter().chain([&wi.sa_token]) {
        assert!(
            !all.contains(secret.as_str()),
            "a secret reached pgwi's output"
        );
    }
    assert_eq!(wi.entra.issued_tokens().len(), 1);
    // The summary line carries what /metrics would: one successful token request, its expiry.
    let summary = text(&output.stderr)
        .lines()
        .find(|l| l.contains("run succeeded"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        .expect("a summary line");
    assert_eq!(summary["fields"]["token_requests"], 1, "{summary}");
    assert_eq!(summary["fields"]["token_request_failures"], 0, "{summary}");
    assert!(
        summary["fields"]["token_expiry_timestamp_seconds"].as_i64() > Some(0),
        "{summary}"
    );
    let logins = db
        .server()
        .token_checks_for(&wi.identity)
        .expect("token checks");
    assert_eq!(
        logins.len(),
        1,
        "one run, one physical connection: {logins:?}"
    );
    assert!(logins[0].accepted, "{logins:?}");
}

#[rstest]
#[tokio::test]
async fn run_with_az_cli_through_the_fake_az(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: a developer logged in to az; pgwi runs az for a token and writes the rows.
    // The developer's Entra user is a token role; az hands out a token for it that the server accepts.
    let user = format!("{}_dev", fresh_db.name());
    fresh_db
        .create_token_role(&user)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = jwt::sign_compact(
        &serde_json::json!({
            "aud": jwt::POSTGRES_AUDIENCE,
            "upn": user,
            "exp": jwt::unix_now() + 3600,
        }),
        fresh_db.server().token_signing_key(),
    );
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: token.clone(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");

    let output = Pgwi::new(&["run", "--credential", "az-cli"])
        .database(&fresh_db, &user)
        .env("PATH", az.path_env())
        .output()
        .await;

    assert_success(&output);
    assert_eq!(inventory(&fresh_db).await, demo_rows());
    assert_eq!(
        runs(&fresh_db).await,
        vec![("succeeded".into(), 3, "az-cli".into())]
    );
    assert_eq!(az.calls().len(), 1);
    assert!(!text(&output.stderr).contains(&token));
}

#[rstest]
#[tokio::test]
async fn two_concurrent_runs_leave_three_rows_and_two_records(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: two jobs start at the same moment on a fresh database (both apply migrations and write);
    // the result is exactly three rows and two succeeded runs.
    let role = scram_role(&fresh_db).await;
    let start = || {
        Pgwi::new(&["run"])
            .database(&fresh_db, &role.name)
            .env("PGPASSWORD", &role.password)
            .spawn()
    };
    let (first, second) = (start(), start());

    let outputs =
        tokio::task::spawn_blocking(move || [first.wait_with_output(), second.wait_with_output()])
            .await
            .expect("join");

    for output in outputs {
        let output = output.expect("output");
        assert_success(&output);
        assert_no_secret(&output);
    }
    assert_eq!(inventory(&fresh_db).await, demo_rows());
    let runs = runs(&fresh_db).await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|(outcome, rows, _)| outcome == "succeeded" && *rows == 3)
    );
}

#[rstest]
#[tokio::test]
async fn sigterm_mid_transaction_commits_nothing(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the job's transaction has already upserted the three rows and is blocked on its LAST
    // statement (the delete of rows that are not the demo's waits for a row another session holds) when
    // Kubernetes sends SIGTERM; pgwi exits promptly with a non-zero status, the upserts already made in the
    // transaction are rolled back, and the run is recorded as cancelled.
    let role = scram_role(&fresh_db).await;
    let migrate = Pgwi::new(&["migrate", "up"])
        .with_role(&fresh_db, &role)
        .output()
        .await;
    assert_success(&migrate);
    let mut blocker =
        sqlx::PgConnection::connect_with(&fresh_db.server().admin_options(fresh_db.name()))
            .await
            .expect("admin");
    sqlx::raw_sql("INSERT INTO inventory (name, quantity) VALUES ('zzz', 1)")
        .execute(fresh_db.admin())
        .await
        .expect("a row that is not the demo's");
    sqlx::raw_sql("BEGIN; SELECT * FROM inventory WHERE name = 'zzz' FOR UPDATE")
        .execute(&mut blocker)
        .await
        .expect("lock the row the job's last statement deletes");

    let child = Pgwi::new(&["run"]).with_role(&fresh_db, &role).spawn();
    let pid = child.id();
    let mut waited = Duration::ZERO;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&role.name)
        .fetch_one(fresh_db.admin())
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            waited < Duration::from_secs(30),
            "pgwi never reached the transaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let exited_after = started.elapsed();
    assert_no_secret(&output);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("unlock");

    assert!(!output.status.success(), "a cancelled run must not exit 0");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        exited_after < Duration::from_secs(10),
        "took {exited_after:?} to stop: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("SIGTERM"),
        "{}",
        text(&output.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inventory(&fresh_db).await,
        vec![("zzz".into(), 1)],
        "nothing may be committed: the upserts before the blocked delete must be rolled back"
    );
    assert_eq!(
        runs(&fresh_db).await,
        vec![("cancelled".into(), 0, "static-password".into())]
    );
}

#[rstest]
#[tokio::test]
async fn run_with_one_connection_on_a_fresh_database(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: `PGWI_DATABASE__MAX_CONNECTIONS=1 pgwi run` on a fresh database: migrations, the run record,
    // the rows and the outcome all go through the pool's one connection (before, the migration lock held it
    // while the migrator waited for another, and the run timed out).
    let role = scram_role(&fresh_db).await;

    let output = Pgwi::new(&["run"])
        .with_role(&fresh_db, &role)
        .env("PGWI_DATABASE__MAX_CONNECTIONS", "1")
        .env("PGWI_DATABASE__CONNECT_TIMEOUT_SECS", "10")
        .output()
        .await;

    assert_success(&output);
    assert_eq!(inventory(&fresh_db).await, demo_rows());
    assert_eq!(
        runs(&fresh_db).await,
        vec![("succeeded".into(), 3, "static-password".into())]
    );
}

#[rstest]
#[tokio::test]
async fn a_missing_database_is_one_line_with_the_fix(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: DBNAME names a database that does not exist: pgwi says so once (SQLSTATE 3D000) with what
    // to do, exits 2 (the fix is in configuration), and does not repeat the cause in a chain.
    let role = scram_role(&fresh_db).await;

    let output = Pgwi::new(&["run"])
        .database(&fresh_db, &role.name)
        .env("DBNAME", "pgwi_no_such_database")
        .env("PGPASSWORD", &role.password)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let error_line = error_line(&output);
    assert_eq!(
        error_line.matches("does not exist").count(),
        1,
        "{error_line}"
    );
    assert!(
        error_line.contains("3D000") && error_line.contains("pgwi admin bootstrap"),
        "{error_line}"
    );
}

/// What the original demo's job does to `inventory` on every run.
const ORIGINAL_DEMO_SQL: &str = "DROP TABLE IF EXISTS inventory;
     CREATE TABLE inventory (id serial PRIMARY KEY, name VARCHAR(50), quantity INTEGER);
     INSERT INTO inventory (name, quantity) VALUES ('banana', 150), ('orange', 154), ('apple', 100);";

#[rstest]
#[tokio::test]
async fn the_first_run_adopts_the_original_demos_table(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the original Python demo ran here before (its table: no key on name, nullable columns, and
    // a duplicate from a second insert); pgwi's first run adopts the table instead of failing, keeps one
    // row per name and leaves exactly the demo's rows.
    let role = scram_role(&fresh_db).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{ORIGINAL_DEMO_SQL} INSERT INTO inventory (name, quantity) VALUES ('apple', 1);
         ALTER TABLE inventory OWNER TO \"{}\";",
        role.name
    )))
    .execute(fresh_db.admin())
    .await
    .expect("the original demo's table");

    let output = Pgwi::new(&["run"])
        .with_role(&fresh_db, &role)
        .output()
        .await;

    assert_success(&output);
    assert_eq!(inventory(&fresh_db).await, demo_rows());
}

#[rstest]
#[tokio::test]
async fn a_table_recreated_under_pgwis_feet_is_one_clear_error(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: after pgwi's migrations ran, the original demo's job drops and re-creates inventory without
    // the key on name; the next run fails with one error naming the table and the likely cause, never
    // PostgreSQL's "no unique or exclusion constraint matching the ON CONFLICT specification", and records
    // the failure.
    let role = scram_role(&fresh_db).await;
    assert_success(
        &Pgwi::new(&["run"])
            .with_role(&fresh_db, &role)
            .output()
            .await,
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{ORIGINAL_DEMO_SQL} ALTER TABLE inventory OWNER TO \"{}\";",
        role.name
    )))
    .execute(fresh_db.admin())
    .await
    .expect("the original demo's job ran");

    let output = Pgwi::new(&["run"])
        .with_role(&fresh_db, &role)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let error_line = error_line(&output);
    assert!(
        error_line.contains("table inventory") && error_line.contains("original demo"),
        "{error_line}"
    );
    assert!(!error_line.contains("ON CONFLICT"), "{error_line}");
    let outcomes: Vec<String> = runs(&fresh_db)
        .await
        .into_iter()
        .map(|(o, _, _)| o)
        .collect();
    assert_eq!(outcomes, ["succeeded", "failed"]);
}

#[rstest]
#[tokio::test]
async fn a_permission_error_after_connecting_is_one_line_with_the_fix(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: the role may log in but not create in schema public, so the migrations fail with 42501
    // after connecting: one error line with the server's words, the SQLSTATE and what to do (no SeaORM
    // wrapper repeating sqlx's text), exit status 1.
    let role = scram_role(&fresh_db).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE CREATE ON SCHEMA public FROM \"{}\"",
        role.name
    )))
    .execute(fresh_db.admin())
    .await
    .expect("revoke");

    let output = Pgwi::new(&["run"])
        .with_role(&fresh_db, &role)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let error_line = error_line(&output);
    assert!(
        error_line.contains("42501") && error_line.contains("pgwi admin bootstrap"),
        "{error_line}"
    );
    assert_eq!(
        error_line.matches("permission denied").count(),
        1,
        "{error_line}"
    );
}
