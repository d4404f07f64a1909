//! `--help`, exit statuses, `pgwi token` and `pgwi migrate`.

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::fixtures::fresh_db;
use rstest::rstest;

use crate::support::{Pgwi, WorkloadIdentity, assert_success, scram_role, text};

#[tokio::test]
async fn help_lists_every_command() {
    // Scenario: `pgwi --help` succeeds and names each command; each command has its own help; the demo is
    // no command of the production binary (it is `cargo run -p pgwi --example demo`).
    let output = Pgwi::new(&["--help"]).output().await;

    assert_success(&output);
    let help = text(&output.stdout);
    for command in ["run", "migrate", "token", "doctor", "admin"] {
        assert!(
            help.contains(command),
            "--help does not mention {command}:\n{help}"
        );
    }
    for command in [
        &["run", "--help"][..],
        &["admin", "bootstrap", "--help"],
        &["migrate", "status", "--help"],
    ] {
        assert_success(&Pgwi::new(command).output().await);
    }
    let demo = Pgwi::new(&["demo"]).output().await;
    assert_eq!(demo.status.code(), Some(2), "{}", text(&demo.stderr));
}

#[tokio::test]
async fn a_configuration_error_exits_2_with_one_clear_message() {
    // Scenario: no DBHOST anywhere: exit status 2 and an error naming the key and where to set it.
    let output = Pgwi::new(&["run"])
        .env("DBNAME", "app")
        .env("DBUSER", "app")
        .output()
        .await;

    assert_eq!(
        output.status.code(),
        Some(2),
        "stderr: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    // The key and the loader's variables from pgwi-core; the flag from the binary.
    assert!(
        error.contains("database.host") && error.contains("DBHOST") && error.contains("--host"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_configuration_file_names_the_flag() {
    // Scenario: --config names a file that does not exist: exit status 2, the file named, and the binary's
    // hint that --config and --profile choose the file and profile.
    let output = Pgwi::new(&["run", "--config", "pgwi-no-such-file.toml"])
        .output()
        .await;

    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        error.contains("pgwi-no-such-file.toml") && error.contains("--config"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_flag_value_exits_2() {
    // Scenario: an unknown --sslmode is refused by argument parsing with status 2.
    let output = Pgwi::new(&["run", "--sslmode", "maybe"]).output().await;

    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("verify-full"));
}

#[tokio::test]
async fn an_unreachable_server_exits_1() {
    // Scenario: a runtime failure (nothing listens) exits 1, not 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let output = Pgwi::new(&["run"])
        .env("DBHOST", format!("127.0.0.1:{port}"))
        .env("DBNAME", "app")
        .env("DBUSER", "app")
        .env("PGPASSWORD", "pw")
        .env("PGWI_DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .output()
        .await;

    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(text(&output.stderr).contains("could not reach PostgreSQL"));
}

#[rstest]
#[tokio::test]
async fn token_describes_without_printing_and_raw_prints_only_the_token(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: `pgwi token` with workload identity shows source, expiry and claims but not the token;
    // `--raw` prints the token alone on stdout.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;

    let described = Pgwi::new(&["token"]).envs(wi.env()).output().await;
    let raw = Pgwi::new(&["token", "--raw"])
        .envs(wi.env())
        .prints_a_secret()
        .output()
        .await;

    assert_success(&described);
    assert_success(&raw);
    let tokens = wi.entra.issued_tokens();
    assert_eq!(tokens.len(), 2);
    let stdout = text(&described.stdout);
    assert!(stdout.contains("workload-identity"), "{stdout}");
    assert!(
        stdout.contains(&format!("identity:  {}", wi.identity)),
        "{stdout}"
    );
    assert!(
        stdout.contains("audience") && stdout.contains("expires:"),
        "{stdout}"
    );
    let everything = stdout + &text(&described.stderr) + &text(&raw.stderr);
    for token in &tokens {
        assert!(
            !everything.contains(token.as_str()),
            "a token was printed without --raw"
        );
    }
    assert_eq!(text(&raw.stdout).trim_end(), tokens[1]);
}

#[rstest]
#[tokio::test]
async fn migrate_status_up_and_down(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: status lists both migrations as pending, up applies them, down rolls back the last one.
    let role = scram_role(&fresh_db).await;
    let pgwi = |args: &[&str]| {
        Pgwi::new(args)
            .database(&fresh_db, &role.name)
            .env("PGPASSWORD", &role.password)
    };

    let before = pgwi(&["migrate", "status"]).output().await;
    assert_success(&pgwi(&["migrate", "up"]).output().await);
    let after = pgwi(&["migrate", "status"]).output().await;
    assert_success(&pgwi(&["migrate", "down"]).output().await);
    let rolled_back = pgwi(&["migrate", "status"]).output().await;

    assert_eq!(
        text(&before.stdout),
        "pending m20261128_000001_create_inventory\npending m20261128_000002_create_job_runs\n"
    );
    assert_eq!(
        text(&after.stdout),
        "applied m20261128_000001_create_inventory\napplied m20261128_000002_create_job_runs\n"
    );
    assert_eq!(
        text(&rolled_back.stdout),
        "applied m20261128_000001_create_inventory\npending m20261128_000002_create_job_runs\n"
    );
}
