//! `core/examples/proxy.rs` as a user runs it: the proxy server embedded in a few lines, configured by
//! `PGWI_*` and the workload-identity webhook's variables, serving psql and stopping on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::ServiceAccountToken;
use rstest::rstest;

use crate::service::example_binary;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_example_serves_psql_and_stops_on_sigterm(#[future(awt)] fresh_db: TestDatabase) {
    // Proves: the embedded proxy server listens on PGWI_EXAMPLE_LISTEN, psql without a password gets a
    // session logged in with a token the server accepted unexpired, and SIGTERM ends the example with
    // status 0 after its "stopped" line.
    let db = fresh_db;
    let sa_token = ServiceAccountToken::default().encode();
    let dir = tempfile::tempdir().expect("dir");
    let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
    let mut options = EntraOptions::for_server(sa_token, db.server());
    options.identity_name = format!("{}_px", db.name());
    let role = options.identity_name.clone();
    db.create_token_role(&role).await.expect("token role");
    let entra = EntraStandIn::start(options).await.expect("entra");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(example_binary("proxy"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
        )
        .envs(entra.webhook_environment(&token_file))
        .env("SSL_CERT_FILE", entra.ca_file())
        .env("PGWI_EXAMPLE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGWI_DATABASE__HOST", "127.0.0.1")
        .env("PGWI_DATABASE__PORT", db.server().port().to_string())
        .env("PGWI_DATABASE__NAME", db.name())
        .env("PGWI_DATABASE__USER", &role)
        .env("PGWI_DATABASE__SSL_ROOT_CERT", db.server().ca_file())
        .env("PGWI_CREDENTIAL__KIND", "workload-identity")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start the proxy example");
    let started = tokio::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the proxy example did not start listening: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (name, port_text) = (db.name().to_owned(), port.to_string());
    let psql = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port_text,
                "-U",
                &role,
                "-d",
                &name,
            ])
            .args(["-c", "SELECT current_user"])
            .output()
            .expect("psql (Debian's postgresql-client)")
    })
    .await
    .expect("join");
    let logs = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        psql.status.success(),
        "psql through the example failed: {}\n{logs}",
        String::from_utf8_lossy(&psql.stderr)
    );
    let user = String::from_utf8_lossy(&psql.stdout).trim().to_owned();
    assert_eq!(user, format!("{}_px", db.name()));
    let checks = db.server().token_checks_for(&user).expect("token checks");
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c.accepted_unexpired()),
        "{checks:?}"
    );

    terminate(child.id());
    let status = child.wait().expect("wait");
    let logs = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "the example exited {status}:\n{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

/// SIGTERM to `pid`.
fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
