//! `pgwi proxy`'s `GET /metrics`: the numbers read back after real sessions, refusals and token requests,
//! and the exposition checked by Prometheus' own `promtool`.

use super::*;

/// `GET /metrics`' body.
async fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name{labels}` (labels as written in the exposition, `""` for none).
fn sample(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == key).then(|| value.parse().ok()).flatten()
    })
}

/// `promtool check metrics` on `exposition`, or a failure saying how to install it.
fn promtool_check(exposition: &str) {
    use std::io::Write as _;
    let found = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        found,
        "promtool is needed by the metrics test: install Debian's prometheus (apt-get install prometheus)"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n{exposition}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[rstest]
#[tokio::test]
async fn the_proxy_counts_its_sessions_refusals_and_bytes_for_prometheus(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: after 3 psql sessions, a client asking for another user and one sending garbage, /metrics
    // says 3 sessions served, one refusal for each reason, 3 upstream logins timed, bytes both ways, the
    // process's memory; no label holds a client address or a database name; promtool accepts the
    // exposition; and no secret is in it (the proxy's whole output is searched at stop, as always).
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let args = ["--listen", "127.0.0.1:0", "--healthz", "127.0.0.1:0"];
    let running = Running::start(proxy(&db, &wi, &args), 1, true).await;
    let (host, port) = running.tcp();
    let health = running.healthz.clone().expect("health address");
    for i in 0..3 {
        let sql = format!("SELECT {i}");
        let out = psql(&host, port, &wi.identity, db.name(), &sql, &[]).await;
        assert_eq!(assert_ok("psql", &out), i.to_string());
    }
    let (code, _) = login_error(&host, port, "someone_else", db.name(), None).await;
    assert_eq!(code, "28000");
    let mut garbage = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest).await;

    // Each session's end is noticed asynchronously: scrape until the last one is counted.
    let until = tokio::time::Instant::now() + START_LIMIT;
    let exposition = loop {
        let exposition = scrape(&health).await;
        let refusals = |reason: &str| {
            sample(
                &exposition,
                "pgwi_proxy_refusals_total",
                &format!("reason=\"{reason}\""),
            )
        };
        let active = sample(&exposition, "pgwi_proxy_sessions_active", "");
        if refusals("wrong_user").is_some()
            && refusals("bad_startup").is_some()
            && active == Some(0.0)
        {
            break exposition;
        }
        assert!(tokio::time::Instant::now() < until, "{exposition}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = |name: &str, labels: &str| {
        sample(&exposition, name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}}:\n{exposition}"))
    };
    assert_eq!(
        value("pgwi_proxy_sessions_total", "outcome=\"served\""),
        3.0
    );
    assert_eq!(
        value("pgwi_proxy_sessions_total", "outcome=\"refused\""),
        2.0
    );
    assert_eq!(
        value("pgwi_proxy_refusals_total", "reason=\"wrong_user\""),
        1.0
    );
    assert_eq!(
        value("pgwi_proxy_refusals_total", "reason=\"bad_startup\""),
        1.0
    );
    assert_eq!(value("pgwi_proxy_upstream_connect_seconds_count", ""), 3.0);
    assert!(value("pgwi_proxy_bytes_total", "direction=\"from_client\"") > 0.0);
    assert!(value("pgwi_proxy_bytes_total", "direction=\"from_server\"") > 0.0);
    assert_eq!(value("pgwi_proxy_sessions_active", ""), 0.0);
    assert!(value("process_resident_memory_bytes", "") > 0.0);
    for forbidden in ["127.0.0.1", db.name(), "someone_else"] {
        assert!(
            !exposition.contains(forbidden),
            "{forbidden:?} in a label:\n{exposition}"
        );
    }
    promtool_check(&exposition);
    // Shown with --nocapture: what an operator's scrape returns.
    println!("{exposition}");
    running.stop().await;
}

/// Scrapes until `done` holds for the exposition, or fails after [`START_LIMIT`] showing the last one.
async fn scrape_until(address: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let until = tokio::time::Instant::now() + START_LIMIT;
    loop {
        let exposition = scrape(address).await;
        if done(&exposition) {
            return exposition;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "never {what}:\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[rstest]
#[tokio::test]
async fn token_refreshes_move_the_expiry_gauge_and_entra_failures_count_as_failures(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: with 8 s tokens the proxy's refreshes show in /metrics: successful requests to
    // workload-identity counted and timed, and the expiry gauge (the `exp` new connections get, seconds
    // since the epoch) moving forward with each new token; while Entra fails, requests count as failures.
    let _shared = CHECKER_BURST.read().await;
    let db = fresh_db;
    let wi = WorkloadIdentity::with_token_lifetime(&db, Some(SHORT_TOKENS)).await;
    let args = ["--listen", "127.0.0.1:0", "--healthz", "127.0.0.1:0"];
    let pgwi = proxy(&db, &wi, &args).envs(short_token_settings());
    let running = Running::start(pgwi, 1, true).await;
    let health = running.healthz.clone().expect("health address");
    let success = "source=\"workload-identity\",outcome=\"success\"";
    let first = scrape(&health).await;
    let first_expiry = sample(&first, "pgwi_token_expiry_timestamp_seconds", "")
        .unwrap_or_else(|| panic!("no expiry gauge:\n{first}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        first_expiry > now - 1.0,
        "the gauge is not a future expiry: {first_expiry} at {now}"
    );
    let moved = scrape_until(&health, "a refresh moved the expiry gauge", |exposition| {
        sample(exposition, "pgwi_token_expiry_timestamp_seconds", "")
            .is_some_and(|expiry| expiry > first_expiry)
    })
    .await;
    assert!(sample(&moved, "pgwi_token_requests_total", success).is_some_and(|n| n >= 2.0));
    assert!(
        sample(
            &moved,
            "pgwi_token_request_duration_seconds_count",
            "source=\"workload-identity\""
        )
        .is_some_and(|n| n >= 2.0),
        "{moved}"
    );

    wi.entra.set_fault(Some(Fault::ServerError));
    let failing = "source=\"workload-identity\",outcome=\"failure\"";
    scrape_until(&health, "an Entra failure counted", |exposition| {
        sample(exposition, "pgwi_token_requests_total", failing).is_some_and(|n| n >= 1.0)
    })
    .await;
    wi.entra.set_fault(None);
    running.stop().await;
}
