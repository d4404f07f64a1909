//! `core/examples/service.rs` as a user runs it: configured only by `PGWI_*` and the workload-identity
//! webhook's variables, against the token-judging server, through several token lifetimes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::ServiceAccountToken;
use rstest::rstest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The built example `name`; built here when the test run did not build examples.
pub(crate) fn example_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("test path");
    let profile_dir = deps
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join(name);
    if !binary.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "pgwi-core", "--example", name])
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "building the {name} example failed");
    }
    binary
}

/// Kills the service when the test ends, however it ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /healthz`: the status code and body.
async fn healthz(port: u16) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_owned());
    Ok((status, body))
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_example_serves_through_token_rotations(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the example service runs with 8 s tokens and connections recycled every second; for 26 s
    // (three token lifetimes and more) /healthz is asked ten times a second. Every answer is 200, new
    // connections presented at least four different tokens, the server never saw an expired one, and
    // nothing the service printed at trace level holds a token or password.
    let db = fresh_db;
    let sa_token = ServiceAccountToken::default().encode();
    let dir = tempfile::tempdir().expect("dir");
    let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
    let mut options = EntraOptions::for_server(sa_token, db.server());
    options.identity_name = format!("{}_svc", db.name());
    options.token_lifetime = Duration::from_secs(8);
    let role = options.identity_name.clone();
    db.create_token_role(&role).await.expect("token role");
    let entra = EntraStandIn::start(options).await.expect("entra");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();

    let child = Command::new(example_binary("service"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // No test process may ever reach Azure's metadata address.
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
        )
        .envs(entra.webhook_environment(&token_file))
        .env("SSL_CERT_FILE", entra.ca_file())
        .env("PGWI_EXAMPLE_ADDR", format!("127.0.0.1:{port}"))
        .env("PGWI_DATABASE__HOST", "127.0.0.1")
        .env("PGWI_DATABASE__PORT", db.server().port().to_string())
        .env("PGWI_DATABASE__NAME", db.name())
        .env("PGWI_DATABASE__USER", &role)
        .env("PGWI_DATABASE__SSL_ROOT_CERT", db.server().ca_file())
        .env("PGWI_DATABASE__MAX_LIFETIME_SECS", "1")
        .env("PGWI_CREDENTIAL__KIND", "workload-identity")
        .env("PGWI_CREDENTIAL__REFRESH_MARGIN_SECS", "4")
        .env("PGWI_CREDENTIAL__FETCH_TIMEOUT_SECS", "2")
        .env("PGWI_CREDENTIAL__EXPIRY_SKEW_SECS", "1")
        .env("RUST_LOG", "trace")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("start the service");
    let service = Service(child);
    let started = tokio::time::Instant::now();
    while healthz(port).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let until = tokio::time::Instant::now() + Duration::from_secs(26);
    let (mut answers, mut failures) = (0, Vec::new());
    while tokio::time::Instant::now() < until {
        match healthz(port).await {
            Ok((200, _)) => answers += 1,
            Ok((status, body)) => failures.push(format!("{status}: {body}")),
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        answers + failures.len()
    );
    let checks = db.server().token_checks_for(&role).expect("token checks");
    assert!(checks.iter().all(|c| c.accepted_unexpired()), "{checks:?}");
    let tokens: BTreeSet<i64> = checks.iter().filter_map(|c| c.expires_at).collect();
    assert!(tokens.len() >= 4, "{checks:?}");
    assert!(entra.request_count() >= 4);
    drop(service);
    for stream in ["stdout", "stderr"] {
        let output = std::fs::read_to_string(dir.path().join(stream)).expect("output");
        assert!(
            output.len() > 1000 || stream == "stdout",
            "the service logged at trace level"
        );
        if let Some(leak) = pgwi_testsupport::secrets::find_leak(&output) {
            panic!("service {stream}: {leak}");
        }
    }
}
