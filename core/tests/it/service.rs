//! `core/examples/service.rs` as a user runs it: configured only by `PGWI_*` and the workload-identity
//! webhook's variables, against the token-judging server, through several token lifetimes; and its
//! `/healthz` while the server stops answering.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::ServiceAccountToken;
use pgwi_testsupport::{PasswordAuth, TestDatabase};
use rstest::rstest;

/// The example `name`, built now: `cargo build` costs a second when the example is fresh, and a binary left
/// from an earlier build would test old code. The path is the one cargo reports, whatever the target
/// directory.
pub(crate) fn example_binary(name: &str) -> PathBuf {
    pgwi_testsupport::cargo::build_executable(
        env!("CARGO"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["--quiet", "-p", "pgwi-core", "--example", name],
        name,
        "see the compiler's errors above",
    )
}

/// Kills the service when the test ends, however it ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example service, listening on `port`, configured by `env` alone, its output in `dir`.
fn spawn_service(
    dir: &std::path::Path,
    port: u16,
    env: impl IntoIterator<Item = (String, String)>,
) -> Service {
    let child = Command::new(example_binary("service"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // No test process may ever reach Azure's metadata address.
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
        )
        .env("PGWI_EXAMPLE_ADDR", format!("127.0.0.1:{port}"))
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("start the service");
    Service(child)
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until the service answers HTTP at all.
async fn wait_until_listening(port: u16) {
    let started = tokio::time::Instant::now();
    while healthz(port).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics`' body.
async fn scrape_metrics(port: u16) -> String {
    let (status, body) = pgwi_testsupport::http::get(&format!("127.0.0.1:{port}"), "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET /healthz`: the status code and body.
async fn healthz(port: u16) -> std::io::Result<(u16, String)> {
    pgwi_testsupport::http::get(("127.0.0.1", port), "/healthz").await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_example_serves_through_token_rotations(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the example service runs with 8 s tokens and connections recycled every second; for 26 s
    // (three token lifetimes and more) /healthz is asked ten times a second. Every answer is 200, new
    // connections presented at least four different tokens, the server never saw an expired one, its
    // /metrics counts the token requests and the connections opened, and nothing the service printed at
    // trace level holds a token or password.
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
    let port = free_port();
    let service = spawn_service(
        dir.path(),
        port,
        entra.webhook_environment(&token_file).into_iter().chain([
            (
                "SSL_CERT_FILE".into(),
                entra.ca_file().display().to_string(),
            ),
            ("PGWI_DATABASE__HOST".into(), "127.0.0.1".into()),
            ("PGWI_DATABASE__PORT".into(), db.server().port().to_string()),
            ("PGWI_DATABASE__NAME".into(), db.name().into()),
            ("PGWI_DATABASE__USER".into(), role.clone()),
            (
                "PGWI_DATABASE__SSL_ROOT_CERT".into(),
                db.server().ca_file().display().to_string(),
            ),
            ("PGWI_DATABASE__MAX_LIFETIME_SECS".into(), "1".into()),
            ("PGWI_CREDENTIAL__KIND".into(), "workload-identity".into()),
            ("PGWI_CREDENTIAL__REFRESH_MARGIN_SECS".into(), "4".into()),
            ("PGWI_CREDENTIAL__FETCH_TIMEOUT_SECS".into(), "2".into()),
            ("PGWI_CREDENTIAL__EXPIRY_SKEW_SECS".into(), "1".into()),
            ("RUST_LOG".into(), "trace".into()),
        ]),
    );
    wait_until_listening(port).await;

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
    let exposition = scrape_metrics(port).await;
    let value = |series: &str| {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series}:\n{exposition}"))
    };
    let requests = "pgwi_token_requests_total{source=\"workload-identity\",outcome=\"success\"}";
    assert!(value(requests) >= 4.0, "{exposition}");
    assert!(value("pgwi_token_expiry_timestamp_seconds") > 0.0);
    // Connections recycled every second, each new one logging in: many opened, none failed.
    let opened = "pgwi_pool_connections_opened_total{outcome=\"success\"}";
    assert!(value(opened) >= 4.0, "{exposition}");
    assert!(!exposition.contains("outcome=\"refused\""), "{exposition}");
    assert!(
        exposition.contains("pgwi_pool_connections{state=\"idle\"}"),
        "{exposition}"
    );
    // Shown with --nocapture: what an operator's scrape returns.
    println!("{exposition}");
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

/// A loopback TCP forwarder to the server that can be told to stop answering: from then on it forwards
/// nothing, on the connections it carries and on new ones, which it accepts and holds — a server that hangs
/// (or a network that drops packets) rather than one that refuses.
struct Forwarder {
    port: u16,
    silence: tokio::sync::watch::Sender<bool>,
}

impl Forwarder {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the forwarder");
        let port = listener.local_addr().expect("address").port();
        let (silence, _) = tokio::sync::watch::channel(false);
        let silenced = silence.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, silenced.subscribe()));
            }
        });
        Self { port, silence }
    }

    fn stop_answering(&self) {
        self.silence.send_replace(true);
    }
}

/// Carries `client` to the server until told to be silent; then holds it, answering nothing.
async fn relay(
    mut client: tokio::net::TcpStream,
    target: u16,
    mut silent: tokio::sync::watch::Receiver<bool>,
) {
    if !*silent.borrow_and_update() {
        let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = silent.wait_for(|silent| *silent) => {}
        }
        // The server's side is held too: nothing reaches either end.
        return std::future::pending::<()>().await;
    }
    let _held = client;
    std::future::pending::<()>().await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_while_the_server_does_not_answer(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: the example service runs with a static password through a forwarder, with the pool's
    // acquire timeout at 120 s; /healthz answers 200. Then the forwarder stops answering (connections held,
    // nothing forwarded): /healthz answers 503 with the reason well before the pool would give up (2 s by
    // design, asserted within 30 s), and again on the next probe.
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let forwarder = Forwarder::start(fresh_db.server().port()).await;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let service = spawn_service(
        dir.path(),
        port,
        [
            ("PGWI_DATABASE__HOST", "127.0.0.1".to_owned()),
            ("PGWI_DATABASE__PORT", forwarder.port.to_string()),
            ("PGWI_DATABASE__NAME", fresh_db.name().to_owned()),
            ("PGWI_DATABASE__USER", role.name.clone()),
            (
                "PGWI_DATABASE__SSL_ROOT_CERT",
                fresh_db.server().ca_file().display().to_string(),
            ),
            ("PGWI_DATABASE__CONNECT_TIMEOUT_SECS", "120".to_owned()),
            ("PGWI_CREDENTIAL__KIND", "static-password".to_owned()),
            ("PGPASSWORD", role.password.clone()),
        ]
        .map(|(key, value)| (key.to_owned(), value)),
    );
    wait_until_listening(port).await;
    let (status, body) = healthz(port).await.expect("healthz");
    assert_eq!(status, 200, "{body}");

    forwarder.stop_answering();
    for probe in 1..=2 {
        let answer = tokio::time::timeout(Duration::from_secs(30), healthz(port)).await;
        let (status, body) = answer
            .unwrap_or_else(|_| panic!("probe {probe}: /healthz hung while the server was silent"))
            .expect("healthz");
        assert_eq!(status, 503, "probe {probe}: {body}");
        assert!(body.contains("did not answer"), "probe {probe}: {body}");
    }
    drop(service);
}
