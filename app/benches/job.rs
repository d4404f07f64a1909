//! The CronJob's job, `pgwi run`, against `psql -f` doing the same SQL and against the original demo's
//! Python job (psycopg2), on the test bench's real PostgreSQL with the same TLS (`verify-full` against the
//! run's CA) and the same authentication (SCRAM, password in `PGPASSWORD`). Part of `task bench` (issue #10,
//! figures a and e); no timing is asserted anywhere.
//!
//! Runs are paired — pgwi, psql, Python, pgwi, psql, Python, … (`PGWI_BENCH_RUNS`, default 15, after one
//! warm-up run each) — so machine noise hits all three alike, and each figure is the median over the runs,
//! read as a ratio pgwi / baseline. Every child runs under a small helper (this binary again, with
//! `--measure`) whose only child it is: the helper's `getrusage(RUSAGE_CHILDREN)` is then exactly that
//! child's CPU (user + sys) and peak RSS, and it notes when the child logs `connected` (start-up to first
//! query, figure e). psql's start-up baseline is `psql -c 'SELECT 1'`.
//!
//! - `job.sql` (next to this file) is what the job sends per run on a migrated database, for psql.
//! - The job and psql also run over the server's Unix socket (`database.host` = its directory): no TCP, so
//!   none of sqlx 0.9.0's delayed-ACK stalls (and no TLS): what those cost, next to psql on the same path.
//! - `demo_job.py` is the original demo's job: connect, create the table if needed, three inserts.
//!
//! The pgwi binary is `PGWI_BENCH_PGWI` (what `task bench` builds with `cargo build --release`), else the
//! one Cargo built for this bench. Results go to stdout and, as JSON lines, to `PGWI_BENCH_RESULTS`.
//! `cargo bench -p pgwi --bench job` (the test bench's server: see the README's Test section).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwi_testsupport::{PasswordAuth, TestDatabase, TestPostgres, TestRole};
use serde_json::{Value, json};

mod common;
use common::emit;

/// The SQL psql runs: the job's statements on a migrated database.
const JOB_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/job.sql");
/// The original demo's job.
const DEMO_JOB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/demo_job.py");
/// The log line that says pgwi's first query ran (`SHOW server_version` on the first connection).
const CONNECTED: &str = r#""message":"connected""#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure(&args[2..]);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// One measured child process.
#[derive(Debug, Clone)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
    /// When the first line with the pattern appeared on stderr, from spawn.
    first_match: Option<Duration>,
}

/// Helper mode: `--measure PATTERN -- PROGRAM ARGS...`. Runs PROGRAM (its only child) with the inherited
/// environment, and prints one JSON line: wall, user and sys CPU, peak RSS, exit code, when PATTERN (unless
/// empty) first appeared on its stderr, and, if it failed, the end of its stderr.
fn measure(args: &[String]) {
    let [pattern, dashes, program, rest @ ..] = args else {
        panic!("usage: --measure PATTERN -- PROGRAM ARGS...")
    };
    assert_eq!(dashes, "--", "usage: --measure PATTERN -- PROGRAM ARGS...");
    let began = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let (mut first_match, mut tail) = (None, Vec::new());
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if first_match.is_none() && !pattern.is_empty() && line.contains(pattern.as_str()) {
            first_match = Some(began.elapsed());
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait().expect("waiting for the child");
    let wall = began.elapsed();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    let out = json!({
        "wall_us": wall.as_micros() as u64,
        "cpu_us": micros(usage.user_time()) + micros(usage.system_time()),
        "max_rss_kib": usage.max_rss(),
        "code": status.code(),
        "first_match_us": first_match.map(|d| d.as_micros() as u64),
        "stderr_tail": if status.success() { Vec::new() } else { tail },
    });
    println!("{out}");
}

/// A program to measure, with its environment.
struct Job {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pattern: &'static str,
}

impl Job {
    /// Runs it under the helper; panics (with its stderr, secrets withheld) when it fails.
    fn sample(&self) -> Sample {
        let output = Command::new(std::env::current_exe().expect("this binary"))
            .arg("--measure")
            .arg(self.pattern)
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .expect("running the measuring helper");
        let text = String::from_utf8_lossy(&output.stdout);
        let line: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: the measuring helper printed no result ({e}); its stderr: {}",
                self.name,
                withheld_if_secret(&String::from_utf8_lossy(&output.stderr))
            )
        });
        if line["code"] != json!(0) {
            let tail: Vec<String> =
                serde_json::from_value(line["stderr_tail"].clone()).unwrap_or_default();
            panic!(
                "{} failed (exit {}):\n{}",
                self.name,
                line["code"],
                withheld_if_secret(&tail.join("\n"))
            );
        }
        let micros = |key: &str| line[key].as_u64().map(Duration::from_micros);
        Sample {
            wall: micros("wall_us").expect("wall"),
            cpu: micros("cpu_us").expect("cpu"),
            max_rss_kib: line["max_rss_kib"].as_u64().expect("max rss"),
            first_match: micros("first_match_us"),
        }
    }
}

/// Output is printed only when it holds none of the secrets this process issued.
fn withheld_if_secret(text: &str) -> String {
    match pgwi_testsupport::secrets::find_leak(text) {
        Some(_) => "<withheld: it contains a password or token>".into(),
        None => text.to_owned(),
    }
}

/// The interpreter that can import psycopg2: `PGWI_BENCH_PYTHON`, else Debian's, else `python3` on PATH.
fn python_with_psycopg2() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PGWI_BENCH_PYTHON") {
        Some(p) => vec![p.into()],
        None => vec!["/usr/bin/python3".into(), "python3".into()],
    };
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import psycopg2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The original CronJob's variables for `db` as `role`, verify-full against the bench's CA.
fn demo_env(db: &TestDatabase, role: &TestRole) -> Vec<(String, String)> {
    let server = db.server();
    vec![
        ("DBHOST".into(), format!("127.0.0.1:{}", server.port())),
        ("DBNAME".into(), db.name().into()),
        ("DBUSER".into(), role.name.clone()),
        ("SSL_MODE".into(), "verify-full".into()),
        ("PGPASSWORD".into(), role.password.clone()),
        // Never Azure's metadata address, whatever auto tries.
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
        ),
    ]
}

/// psql as the job's baseline: over TCP with `verify-full` against the run's CA, or over the Unix socket
/// (`socket`: its directory and the port in its name; PostgreSQL has no TLS there).
fn psql_job(
    db: &TestDatabase,
    role: &TestRole,
    args: &[&str],
    socket: Option<(&Path, u16)>,
) -> Job {
    let server = db.server();
    let conninfo = match socket {
        None => format!(
            "host=127.0.0.1 port={} dbname={} user={} sslmode=verify-full sslrootcert={}",
            server.port(),
            db.name(),
            role.name,
            server.ca_file().display()
        ),
        Some((dir, port)) => format!(
            "host={} port={port} dbname={} user={} sslmode=disable",
            dir.display(),
            db.name(),
            role.name
        ),
    };
    let mut all: Vec<String> = ["-X", "-q", "-v", "ON_ERROR_STOP=1"]
        .iter()
        .chain(args)
        .map(|s| (*s).to_owned())
        .collect();
    all.push(conninfo);
    Job {
        name: if socket.is_some() {
            "psql (socket)"
        } else {
            "psql"
        },
        program: "psql".into(),
        args: all,
        env: vec![("PGPASSWORD".into(), role.password.clone())],
        pattern: "",
    }
}

async fn run() {
    let server = TestPostgres::shared().unwrap_or_else(|e| panic!("the test PostgreSQL: {e}"));
    println!("job bench: PostgreSQL {}", server.description());
    let runs: usize = std::env::var("PGWI_BENCH_RUNS")
        .ok()
        .map(|v| v.parse().expect("PGWI_BENCH_RUNS is a number"))
        .unwrap_or(15);
    assert!(runs >= 10, "PGWI_BENCH_RUNS must be at least 10");
    let pgwi: PathBuf = std::env::var_os("PGWI_BENCH_PGWI")
        .map_or_else(|| env!("CARGO_BIN_EXE_pgwi").into(), Into::into);
    assert!(
        Command::new("psql")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "psql is not on PATH: install the postgresql-client package (task bench does)"
    );

    // pgwi and psql share one database (the same tables, the same work); the demo gets its own, because its
    // table has no key on `name`.
    let db = server.fresh_database().await.expect("a database");
    let role = db.create_role(PasswordAuth::Scram).await.expect("role");
    let mut pgwi_env = demo_env(&db, &role);
    pgwi_env.push((
        "PGWI_DATABASE__SSL_ROOT_CERT".into(),
        server.ca_file().display().to_string(),
    ));
    pgwi_env.push(("PGWI_LOG_FORMAT".into(), "json".into()));
    let pgwi_job = Job {
        name: "pgwi run",
        program: pgwi.clone(),
        args: vec!["run".into()],
        env: pgwi_env,
        pattern: CONNECTED,
    };
    let psql = psql_job(&db, &role, &["-f", JOB_SQL], None);
    let psql_first_query = Job {
        name: "psql -c 'SELECT 1'",
        ..psql_job(&db, &role, &["-c", "SELECT 1"], None)
    };
    // Over the server's Unix socket (`database.host` = its directory, as libpq's host=/dir): no TCP, so none
    // of sqlx 0.9.0's delayed-ACK stalls; no TLS either (PostgreSQL offers none there).
    let socket = server.unix_socket();
    let socket_jobs = socket.map(|(dir, port)| {
        let mut env = pgwi_job.env.clone();
        env.retain(|(k, _)| k != "DBHOST");
        env.push(("DBHOST".into(), dir.display().to_string()));
        env.push(("PGWI_DATABASE__PORT".into(), port.to_string()));
        let pgwi = Job {
            name: "pgwi run (socket)",
            program: pgwi.clone(),
            args: vec!["run".into()],
            env,
            pattern: CONNECTED,
        };
        (
            pgwi,
            psql_job(&db, &role, &["-f", JOB_SQL], Some((dir, port))),
        )
    });

    let python = python_with_psycopg2();
    let demo_db = server.fresh_database().await.expect("a database");
    let demo_role = demo_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let demo = python.as_ref().map(|python| {
        let mut env = demo_env(&demo_db, &demo_role);
        env.push((
            "PGSSLROOTCERT".into(),
            server.ca_file().display().to_string(),
        ));
        Job {
            name: "demo_job.py",
            program: python.clone(),
            args: vec![DEMO_JOB.into()],
            env,
            pattern: "",
        }
    });

    // Warm-up: the first pgwi run applies the migrations, the demo creates its table.
    let jobs: Vec<&Job> = [
        Some(&pgwi_job),
        Some(&psql),
        Some(&psql_first_query),
        socket_jobs.as_ref().map(|(pgwi, _)| pgwi),
        socket_jobs.as_ref().map(|(_, psql)| psql),
        demo.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for job in &jobs {
        job.sample();
    }
    println!(
        "job bench: {runs} paired runs of {}",
        jobs.iter().map(|j| j.name).collect::<Vec<_>>().join(", ")
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); jobs.len()];
    for _ in 0..runs {
        for (job, samples) in jobs.iter().zip(&mut samples) {
            samples.push(job.sample());
        }
    }
    let of = |name: &str| {
        jobs.iter()
            .position(|j| j.name == name)
            .map(|i| samples[i].as_slice())
    };
    let rows_written: i64 =
        sea_orm::sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded'")
            .fetch_one(db.admin())
            .await
            .expect("job_runs");
    println!("job bench: {rows_written} runs recorded in job_runs (pgwi and psql alike)");

    let (pgwi_s, psql_s) = (of("pgwi run").expect("pgwi"), of("psql").expect("psql"));
    report_against(pgwi_s, psql_s, "psql -f job.sql", "<= 1.00 (wall)");
    match (of("demo_job.py"), &python) {
        (Some(demo_s), Some(python)) => report_against(
            pgwi_s,
            demo_s,
            &format!("the original demo's job ({} + psycopg2)", python.display()),
            "-",
        ),
        _ => emit(json!({
            "section": "a", "figure": "vs the original demo's Python job",
            "pgwi": "-", "baseline": "not measured", "ratio": null, "target": "-", "met": null,
            "note": "no python3 that imports psycopg2 (install python3-psycopg2; task bench does)",
        })),
    }
    match (of("pgwi run (socket)"), of("psql (socket)")) {
        (Some(pgwi_socket), Some(psql_socket)) => {
            let wall = |s: &[Sample]| median(&s.iter().map(|s| s.wall).collect::<Vec<_>>());
            for (baseline, name) in [
                (psql_s, "psql -f job.sql over TCP + TLS"),
                (psql_socket, "psql -f job.sql over the socket"),
            ] {
                let (a, b) = (wall(pgwi_socket), wall(baseline));
                emit(json!({
                    "section": "a",
                    "figure": format!("median wall, pgwi run over the Unix socket vs {name}"),
                    "pgwi": ms(a), "baseline": ms(b),
                    "ratio": a.as_secs_f64() / b.as_secs_f64(),
                    "target": "-", "met": null,
                }));
            }
            let (tcp, sock) = (wall(pgwi_s), wall(pgwi_socket));
            emit(json!({
                "section": "a",
                "figure": "median wall, pgwi run over TCP + TLS vs over the Unix socket: what TCP, TLS and the delayed-ACK stalls cost",
                "pgwi": ms(tcp), "baseline": ms(sock),
                "ratio": tcp.as_secs_f64() / sock.as_secs_f64(),
                "target": "-", "met": null,
            }));
        }
        _ => emit(json!({
            "section": "a", "figure": "the job over the Unix socket",
            "pgwi": "-", "baseline": "not measured", "ratio": null, "target": "-", "met": null,
            "note": "this server's socket directory is not reachable from here (an external server)",
        })),
    }
    let connected: Vec<Duration> = pgwi_s.iter().filter_map(|s| s.first_match).collect();
    assert_eq!(
        connected.len(),
        pgwi_s.len(),
        "every pgwi run logs `connected`"
    );
    let startup = median(&connected);
    let first_query = median(
        &of(psql_first_query.name)
            .expect("psql -c")
            .iter()
            .map(|s| s.wall)
            .collect::<Vec<_>>(),
    );
    emit(json!({
        "section": "e",
        "figure": "start-up to first query: exec to pgwi's `connected` log line, vs `psql -c 'SELECT 1'` wall (median)",
        "pgwi": ms(startup), "baseline": ms(first_query),
        "ratio": startup.as_secs_f64() / first_query.as_secs_f64(), "target": "-", "met": null,
    }));
}

/// One figure of a sample, as a number.
type Figure = fn(&Sample) -> f64;

fn report_against(pgwi: &[Sample], baseline: &[Sample], name: &str, wall_target: &str) {
    let med = |s: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = s.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    let figures: [(&str, Figure, &str); 3] = [
        ("median wall", |s| s.wall.as_secs_f64() * 1000.0, "ms"),
        (
            "median CPU (user+sys)",
            |s| s.cpu.as_secs_f64() * 1000.0,
            "ms",
        ),
        ("median peak RSS", |s| s.max_rss_kib as f64 / 1024.0, "MiB"),
    ];
    for (figure, f, unit) in figures {
        let (a, b) = (med(pgwi, f), med(baseline, f));
        let is_wall = figure == "median wall";
        let mut row = json!({
            "section": "a",
            "figure": format!("{figure}, pgwi run vs {name}, {} paired runs", pgwi.len()),
            "pgwi": format!("{a:.1} {unit}"), "baseline": format!("{b:.1} {unit}"),
            "ratio": a / b,
            "target": if is_wall { wall_target } else { "-" },
            "met": if is_wall && wall_target != "-" { json!(a <= b) } else { json!(null) },
        });
        if is_wall {
            // Every run's wall time, for app/benches/plot.py's picture of the job.
            let walls = |s: &[Sample]| s.iter().map(f).collect::<Vec<f64>>();
            row["walls_ms"] =
                json!({ "pgwi": walls(pgwi), "baseline": walls(baseline), "baseline_name": name });
        }
        emit(row);
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[(sorted.len() - 1) / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
