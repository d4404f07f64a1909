//! `pgwi proxy` against connecting directly, on the test bench's real PostgreSQL with the same TLS
//! (`verify-full` against the run's CA, on the proxy's upstream hop and on the direct path alike) and the
//! same authentication (the role's SCRAM password: given to pgbench directly, or to the proxy as its static
//! password, which it answers the server's SCRAM exchange with). Part of `task bench` (figure g); no timing
//! is asserted anywhere.
//!
//! Two figures, each from rounds that alternate proxy and direct (`PGWI_BENCH_PROXY_ROUNDS`, default 5,
//! after one warm-up each), so machine noise hits both alike; each is the median over the rounds, read as a
//! ratio proxy / direct:
//! - connect latency: `pgbench -C` (a new connection per transaction) running `SELECT 1`, pgbench's own
//!   "average connection time";
//! - throughput: `pgbench -S` (the built-in select-only script on a scale-1 table) over 4 and over 16
//!   connections, tps.
//!
//! Targets (issue #22): throughput ≥ 0.95× direct at 4 and 16 clients, connect time ≤ direct. Run with
//! `PGWI_TEST_POSTGRES=native` (what `task bench` does for this figure) so the direct path has no Docker
//! userland proxy in front of the server that the proxy's path would hide behind.
//!
//! Clients reach the proxy over loopback without TLS (`sslmode=disable`), as a sidecar's clients do.
//! The pgwi binary is `PGWI_BENCH_PGWI` (what `task bench` builds), else the one Cargo built.
//! `cargo bench -p pgwi --bench proxy` (the test bench's server: see the README's Test section).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwi_testsupport::{PasswordAuth, TestPostgres};
use serde_json::json;

mod common;
use common::emit;

/// Seconds of each throughput run.
const THROUGHPUT_SECS: &str = "8";
/// Transactions (each on a new connection) of each connect-latency run.
const CONNECTS: &str = "150";
/// The client counts of the throughput runs.
const CLIENTS: [usize; 2] = [4, 16];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// pgbench with a clean environment plus `env`; its stdout (panics with stderr when it fails).
fn pgbench(args: &[&str], env: &[(String, String)]) -> String {
    let output = Command::new("pgbench")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .unwrap_or_else(|e| panic!("pgbench (install postgresql): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The number after `label` in pgbench's report.
fn figure(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in pgbench's report:\n{report}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

async fn run() {
    let server = TestPostgres::shared().unwrap_or_else(|e| panic!("the test PostgreSQL: {e}"));
    println!("proxy bench: PostgreSQL {}", server.description());
    let rounds: usize = std::env::var("PGWI_BENCH_PROXY_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("PGWI_BENCH_PROXY_ROUNDS is a number"))
        .unwrap_or(5);
    assert!(rounds >= 3, "PGWI_BENCH_PROXY_ROUNDS must be at least 3");
    let pgwi: PathBuf = std::env::var_os("PGWI_BENCH_PGWI")
        .map_or_else(|| env!("CARGO_BIN_EXE_pgwi").into(), Into::into);

    let db = server.fresh_database().await.expect("a database");
    let role = db.create_role(PasswordAuth::Scram).await.expect("role");
    sqlx_grant(&db, &role.name).await;
    let port = server.port().to_string();
    let direct_env = vec![
        ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
        ("PGPORT".to_owned(), port.clone()),
        ("PGUSER".to_owned(), role.name.clone()),
        ("PGDATABASE".to_owned(), db.name().to_owned()),
        ("PGSSLMODE".to_owned(), "verify-full".to_owned()),
        (
            "PGSSLROOTCERT".to_owned(),
            server.ca_file().display().to_string(),
        ),
        ("PGPASSWORD".to_owned(), role.password.clone()),
    ];
    pgbench(&["-i", "-q", "-s", "1"], &direct_env);

    // The proxy: the same server, TLS and password; its output goes to a file read for the port.
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("proxy.log");
    let mut proxy = Command::new(&pgwi)
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGWI_LOG_FORMAT", "json")
        .env("DBHOST", format!("127.0.0.1:{port}"))
        .env("DBNAME", db.name())
        .env("DBUSER", &role.name)
        .env("SSL_MODE", "verify-full")
        .env("PGWI_DATABASE__SSL_ROOT_CERT", server.ca_file())
        .env("PGWI_CREDENTIAL__KIND", "static-password")
        .env("PGPASSWORD", &role.password)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("pgwi proxy");
    let proxy_port = wait_for_port(&log, &mut proxy);
    let proxy_env = vec![
        ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
        ("PGPORT".to_owned(), proxy_port),
        ("PGUSER".to_owned(), role.name.clone()),
        ("PGDATABASE".to_owned(), db.name().to_owned()),
        ("PGSSLMODE".to_owned(), "disable".to_owned()),
    ];
    let script = dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").expect("script");
    let script = script.display().to_string();
    let connect = |env: &[(String, String)]| {
        figure(
            &pgbench(&["-n", "-C", "-c", "1", "-t", CONNECTS, "-f", &script], env),
            "average connection time = ",
        )
    };
    let select = |env: &[(String, String)], clients: usize| {
        figure(
            &pgbench(
                &[
                    "-n",
                    "-S",
                    "-c",
                    &clients.to_string(),
                    "-j",
                    "2",
                    "-T",
                    THROUGHPUT_SECS,
                ],
                env,
            ),
            "tps = ",
        )
    };

    let (mut connect_proxy, mut connect_direct) = (Vec::new(), Vec::new());
    let mut tps: Vec<(usize, Vec<f64>, Vec<f64>)> = CLIENTS
        .iter()
        .map(|&clients| (clients, Vec::new(), Vec::new()))
        .collect();
    let started = Instant::now();
    for round in 0..=rounds {
        let measured = (connect(&proxy_env), connect(&direct_env));
        let throughput: Vec<(f64, f64)> = CLIENTS
            .iter()
            .map(|&clients| (select(&proxy_env, clients), select(&direct_env, clients)))
            .collect();
        // Round 0 warms caches on both paths and is not counted.
        if round > 0 {
            connect_proxy.push(measured.0);
            connect_direct.push(measured.1);
            for ((_, proxy, direct), (through, straight)) in tps.iter_mut().zip(throughput) {
                proxy.push(through);
                direct.push(straight);
            }
        }
    }
    println!("proxy bench: {rounds} rounds in {:?}", started.elapsed());
    let _ = proxy.kill();
    let _ = proxy.wait();
    let mut output = String::new();
    std::fs::File::open(&log)
        .and_then(|mut f| f.read_to_string(&mut output))
        .expect("proxy log");
    assert!(
        pgwi_testsupport::secrets::find_leak(&output).is_none(),
        "the proxy's log holds a secret"
    );

    let (a, b) = (median(connect_proxy), median(connect_direct));
    emit(json!({
        "section": "g",
        "figure": format!("connect latency through pgwi proxy vs direct ({}): pgbench -C 'SELECT 1', average connection time, median of {rounds} paired rounds", server.description()),
        "pgwi": format!("{a:.2} ms"), "baseline": format!("{b:.2} ms"),
        "ratio": a / b, "target": "≤ 1.0", "met": a <= b,
        "note": "direct: TLS verify-full + SCRAM from pgbench; proxy: plaintext loopback to the proxy, which does TLS verify-full + SCRAM upstream",
    }));
    for (clients, proxy, direct) in tps {
        let (a, b) = (median(proxy), median(direct));
        emit(json!({
            "section": "g",
            "figure": format!("pgbench -S throughput through pgwi proxy vs direct, {clients} connections, {THROUGHPUT_SECS} s, median of {rounds} paired rounds"),
            "pgwi": format!("{a:.0} tps"), "baseline": format!("{b:.0} tps"),
            "ratio": a / b, "target": "≥ 0.95", "met": a / b >= 0.95,
        }));
    }
}

/// The role may create pgbench's tables in schema public.
async fn sqlx_grant(db: &pgwi_testsupport::TestDatabase, role: &str) {
    let quoted = pgwi_testsupport::postgres::quote_ident(role);
    sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(format!(
        "GRANT ALL ON SCHEMA public TO {quoted}"
    )))
    .execute(db.admin())
    .await
    .expect("grant");
}

/// The port of the proxy's `listening` line.
fn wait_for_port(log: &std::path::Path, proxy: &mut std::process::Child) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if json["fields"]["message"] == "listening"
                && let Some(address) = json["fields"]["address"].as_str()
                && let Some((_, port)) = address.rsplit_once(':')
            {
                return port.to_owned();
            }
        }
        assert!(
            proxy.try_wait().expect("status").is_none() && Instant::now() < until,
            "pgwi proxy did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
