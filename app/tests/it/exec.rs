//! `pgwi exec`: a command run with a private proxy against the test server (tokens judged as Azure does):
//! its variables, its exit status, signals passed on, the socket directory removed, and commands that cannot
//! be started.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::fixtures::fresh_db;
use rstest::rstest;

use crate::support::{Pgwi, WorkloadIdentity, assert_success, error_line, text};

/// `pgwi exec -- ARGS` as the workload identity on `db`, its temporary files in `tmp`.
fn exec(db: &TestDatabase, wi: &WorkloadIdentity, tmp: &Path, command: &[&str]) -> Pgwi {
    let mut args = vec!["exec", "--"];
    args.extend(command);
    Pgwi::new(&args)
        .database(db, &wi.identity)
        .envs(wi.env())
        .env("TMPDIR", tmp.display().to_string())
}

/// A fresh TMPDIR for pgwi, to see what it leaves behind.
fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("TMPDIR")
}

/// Fails if pgwi left anything (a socket directory) in `tmp`.
fn assert_left_nothing(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .expect("TMPDIR")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "pgwi exec left {left:?} behind");
}

/// The command's stdout, one value per line.
fn lines(output: &Output) -> Vec<String> {
    text(&output.stdout).lines().map(str::to_owned).collect()
}

#[rstest]
#[tokio::test]
async fn psql_and_a_database_url_reach_the_server_through_a_private_socket_that_is_removed(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: the command gets PGHOST (a fresh 0700 directory holding the socket), PGPORT, PGUSER (resolved
    // from the token with user = auto), PGDATABASE, PGSSLMODE=disable and a DATABASE_URL; psql with only
    // those variables and psql given only DATABASE_URL both log in as the identity with a token; the
    // directory is gone once pgwi has exited 0.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let tmp = tmpdir();
    let script = r#"
        echo "$PGHOST"; echo "$PGPORT"; echo "$PGUSER"; echo "$PGDATABASE"; echo "$PGSSLMODE"
        stat -c %a "$PGHOST"
        test -S "$PGHOST/.s.PGSQL.$PGPORT" && echo socket
        psql -X -A -t -c 'SELECT current_user' || exit 10
        env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGSSLMODE \
            psql -X -A -t "$DATABASE_URL" -c 'SELECT current_database()' || exit 11
    "#;
    let output = exec(&db, &wi, tmp.path(), &["sh", "-c", script])
        .env("DBUSER", "auto")
        .output()
        .await;
    assert_success(&output);
    let seen = lines(&output);
    assert_eq!(seen.len(), 9, "{seen:?}");
    let directory = std::path::Path::new(&seen[0]);
    assert!(directory.is_absolute(), "{seen:?}");
    assert_eq!(
        seen[1..5],
        [
            "5432".to_owned(),
            wi.identity.clone(),
            db.name().to_owned(),
            "disable".to_owned(),
        ]
    );
    assert_eq!(seen[5], "700", "the socket directory's mode");
    assert_eq!(seen[6], "socket");
    assert_eq!(seen[7], wi.identity, "current_user through PG* variables");
    assert_eq!(seen[8], db.name(), "current_database through DATABASE_URL");
    assert!(
        !directory.exists(),
        "{} was left behind",
        directory.display()
    );
    let checks = db
        .server()
        .token_checks_for(&wi.identity)
        .expect("token checks");
    assert!(
        checks.len() >= 2 && checks.iter().all(|c| c.accepted_unexpired()),
        "{checks:?}"
    );
}

#[rstest]
#[tokio::test]
async fn pg_dump_output_goes_to_stdout_untouched(#[future(awt)] fresh_db: TestDatabase) {
    // Proves: `pgwi exec -- pg_dump` writes only the dump on stdout (pgwi's own lines go to stderr), so
    // `pgwi exec -- pg_dump app > app.sql` gives a usable file.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let tmp = tmpdir();
    let create = exec(
        &db,
        &wi,
        tmp.path(),
        &["psql", "-X", "-q", "-c", "CREATE TABLE dumped (n int)"],
    )
    .output()
    .await;
    assert_success(&create);
    let output = exec(
        &db,
        &wi,
        tmp.path(),
        &["pg_dump", "--schema-only", "--no-owner"],
    )
    .output()
    .await;
    assert_success(&output);
    let dump = text(&output.stdout);
    assert!(
        dump.starts_with("--\n-- PostgreSQL database dump"),
        "{dump}"
    );
    assert!(dump.contains("CREATE TABLE public.dumped"), "{dump}");
    assert!(!dump.contains("\"level\""), "a log line reached stdout");
    assert_left_nothing(tmp.path());
}

#[rstest]
#[tokio::test]
async fn the_exit_status_is_the_commands_and_128_plus_n_for_a_signal(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: pgwi exec exits with its command's status (7 stays 7) and with 128+N when signal N ended
    // the command (SIGTERM: 143), and leaves nothing in its TMPDIR either way.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let tmp = tmpdir();
    let output = exec(
        &db,
        &wi,
        tmp.path(),
        &["sh", "-c", "echo \"$PGHOST\"; exit 7"],
    )
    .output()
    .await;
    assert_eq!(output.status.code(), Some(7), "{}", text(&output.stderr));
    assert!(!std::path::Path::new(text(&output.stdout).trim()).exists());
    let output = exec(&db, &wi, tmp.path(), &["sh", "-c", "kill -TERM $$"])
        .output()
        .await;
    assert_eq!(output.status.code(), Some(143), "{}", text(&output.stderr));
    assert_left_nothing(tmp.path());
}

#[rstest]
#[tokio::test]
async fn a_sigterm_to_pgwi_reaches_the_command_whose_status_pgwi_returns(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: a SIGTERM sent to pgwi (as Kubernetes sends to a Job's container) is passed on to the command,
    // which handles it (its trap runs and exits 3), and pgwi exits with that status after it, leaving
    // nothing in its TMPDIR.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let tmp = tmpdir();
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done";
    let mut running = exec(&db, &wi, tmp.path(), &["sh", "-c", script]).spawn();
    running
        .wait_for_log("command started", 1, Duration::from_secs(60))
        .await;
    // The shell installs its trap before it prints.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !running.stdout().contains("ready") {
        assert!(
            std::time::Instant::now() < until,
            "the command never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.signal("TERM");
    let output = tokio::task::spawn_blocking(move || running.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("got-term"));
    assert_left_nothing(tmp.path());
}

#[rstest]
#[tokio::test]
async fn a_command_that_cannot_start_is_one_error_with_a_shells_status(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: a command not found exits 127 and one that is not executable 126, each with one error line
    // naming the command and the fix and nothing left in TMPDIR; a missing command on the command line is
    // clap's usage error (2).
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let tmp = tmpdir();
    let output = exec(&db, &wi, tmp.path(), &["pgwi-no-such-command", "--flag"])
        .output()
        .await;
    assert_eq!(output.status.code(), Some(127), "{}", text(&output.stderr));
    assert_left_nothing(tmp.path());
    let line = error_line(&output);
    assert!(
        line.contains("pgwi-no-such-command") && line.contains("PATH"),
        "{line}"
    );
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
    let output = exec(&db, &wi, tmp.path(), &[script.to_str().expect("utf-8")])
        .output()
        .await;
    assert_eq!(output.status.code(), Some(126), "{}", text(&output.stderr));
    assert!(error_line(&output).contains("chmod +x"));
    assert_left_nothing(tmp.path());
    let output = Pgwi::new(&["exec"]).output().await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}
