//! What workload identity costs a pgwi-core pool, next to a static password, against the test bench's real
//! PostgreSQL (TLS `verify-full`) and the local Entra ID stand-in. Part of `task bench` (issue #10, figures b,
//! c and f); no timing is asserted anywhere, the figures are printed and written for `bench/report.py`.
//!
//! - **b, token overhead**: N concurrent NEW connections through one pool (its idle connections are held so
//!   every acquire opens one): token requests to Entra, p50/p99 connect latency, batch wall time per
//!   connection.
//! - **c, rotation under load**: W workers running `SELECT 1` through one pool of W connections for
//!   `PGWI_BENCH_ROTATION_SECS` (default 60) while tokens live 10 s and connections are recycled every 2 s:
//!   queries/s (the median of 5 s slices) and failed queries. The three modes' pools live side by side and
//!   take turns slice by slice.
//! - **f, growth**: b at 1, 10, 50, 200 connections and c at 1, 4, 16, 64 workers (`PGWI_BENCH_GROWTH_SECS`
//!   each, default 15; the 16-worker row is c itself), per connection / per worker.
//!
//! Each figure is read as a ratio to a baseline measured in the same run, interleaved with it:
//! - `static (scram)`: a static password on a SCRAM role — the brief's baseline. The server judges a token
//!   role differently (PAM starting the bench's token checker, `pgwi-token-check`, per login), so this ratio
//!   includes the test server's token check, not only pgwi's.
//! - `static (same token check)`: the token role, given one long-lived token as a static password. The
//!   server does exactly the same work as for workload identity, so this ratio is pgwi's own overhead.
//!
//! Results go to stdout and, as JSON lines, to the file `PGWI_BENCH_RESULTS` when set. Run it with
//! `cargo bench -p pgwi-core --bench pool` (the test bench's server: see the README's Test section).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgwi_core::{Config, Connector, RotatingPool};
use pgwi_credentials::{
    CachedTokenSource, CredentialConfig, Environment, SourceContext, SourceRegistry, TokenSource,
};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::jwt::ServiceAccountToken;
use pgwi_testsupport::{PasswordAuth, TestDatabase, TestPostgres};
use sea_orm::sqlx;
use serde_json::json;

/// Connection counts of figure f (b's 200 is the last).
const CONNECTIONS: [usize; 4] = [1, 10, 50, 200];
/// Worker counts of figure f (c's 16 is among them).
const WORKERS: [usize; 4] = [1, 4, 16, 64];
/// The workers of figure c.
const C_WORKERS: usize = 16;
/// Token lifetime and connection lifetime of figure c.
const ROTATION_TOKEN_LIFETIME: Duration = Duration::from_secs(10);
const ROTATION_MAX_LIFETIME_SECS: u64 = 2;
/// How long one mode runs before the next takes its turn (figures c and f).
const SLICE: Duration = Duration::from_secs(5);

/// How the pool gets its password.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Workload identity through the Entra stand-in, on the token role.
    Token,
    /// A static password on a SCRAM role (the brief's baseline).
    Scram,
    /// One long-lived token as a static password, on the token role (the same server-side check).
    SameCheck,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Token, Mode::Scram, Mode::SameCheck];

    fn label(self) -> &'static str {
        match self {
            Mode::Token => "workload identity",
            Mode::Scram => "static (scram)",
            Mode::SameCheck => "static (same token check)",
        }
    }
}

/// The database, its two roles and a way to build each mode's token source.
struct Bench {
    db: TestDatabase,
    scram_role: pgwi_testsupport::TestRole,
    identity: String,
    /// A token for the identity, valid for an hour, used as a static password.
    long_token: String,
    sa_token: String,
    _dir: tempfile::TempDir,
    token_file: std::path::PathBuf,
    results: Results,
}

/// Where the figures go: stdout, and JSON lines in `PGWI_BENCH_RESULTS`.
struct Results {
    file: Option<std::path::PathBuf>,
}

impl Results {
    fn row(&self, row: serde_json::Value) {
        println!("  {row}");
        if let Some(path) = &self.file {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            writeln!(file, "{row}").expect("writing a result");
        }
    }
}

fn main() {
    pgwi_credentials::install_crypto_provider();
    let server = TestPostgres::shared().unwrap_or_else(|e| panic!("the test PostgreSQL: {e}"));
    println!("pool bench: PostgreSQL {}", server.description());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(server));
}

fn secs_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds"))
            })
            .unwrap_or(default),
    )
}

async fn run(server: &'static TestPostgres) {
    let rotation_secs = secs_from_env("PGWI_BENCH_ROTATION_SECS", 60);
    let growth_secs = secs_from_env("PGWI_BENCH_GROWTH_SECS", 15);
    let bench = Bench::start(server).await;

    println!("b/f: concurrent new connections");
    let mut per_n = Vec::new();
    for n in CONNECTIONS {
        per_n.push((n, bench.connections_round(n).await));
    }
    for (n, figures) in &per_n {
        bench.report_connections(*n, figures);
    }

    println!("c/f: workers through one pool while tokens rotate");
    for workers in WORKERS {
        let duration = if workers == C_WORKERS {
            rotation_secs
        } else {
            growth_secs
        };
        let figures = bench.load(workers, duration).await;
        bench.report_load(workers, duration, &figures);
    }
}

/// One mode's figures for N new connections.
struct ConnectFigures {
    mode: Mode,
    /// Every connection's latency, all rounds.
    latencies: Vec<Duration>,
    /// Batch wall time per round.
    walls: Vec<Duration>,
    /// Token requests to Entra per round (workload identity only).
    token_requests: Vec<usize>,
}

/// One mode's figures under load.
struct LoadFigures {
    mode: Mode,
    queries: u64,
    failed: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    /// Queries/s of each slice this mode ran.
    slice_qps: Vec<f64>,
    token_requests: usize,
    rotations: u64,
    /// Logins the server judged for the token role, and how many were not accepted-and-unexpired.
    logins: usize,
    bad_logins: usize,
}

impl Bench {
    async fn start(server: &'static TestPostgres) -> Self {
        let db = server.fresh_database().await.expect("a database");
        let max: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(db.admin())
            .await
            .expect("max_connections");
        let needed = CONNECTIONS[CONNECTIONS.len() - 1] + 30;
        assert!(
            max.parse::<usize>().unwrap_or(0) >= needed,
            "the test PostgreSQL allows {max} connections; this bench opens {needed}: run it through \
             `task bench`, which serves it from the image bench/postgres builds (max_connections = 300)"
        );
        let scram_role = db
            .create_role(PasswordAuth::Scram)
            .await
            .expect("scram role");
        let identity = format!("{}_id", db.name());
        db.create_token_role(&identity)
            .await
            .unwrap_or_else(|e| panic!("the identity's token role: {e}"));
        let sa_token = ServiceAccountToken::default().encode();
        let dir = tempfile::tempdir().expect("dir");
        let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
        let mut bench = Self {
            db,
            scram_role,
            identity,
            long_token: String::new(),
            sa_token,
            _dir: dir,
            token_file,
            results: Results {
                file: std::env::var_os("PGWI_BENCH_RESULTS").map(Into::into),
            },
        };
        // One hour-long token from the stand-in, for the "same token check" baseline.
        let (entra, source) = bench.workload_identity(Duration::from_secs(3600)).await;
        let token = source.token().await.expect("a long-lived token");
        bench.long_token = token.secret().expose().to_owned();
        pgwi_testsupport::secrets::register(&bench.long_token);
        drop(entra);
        bench
    }

    /// An Entra stand-in issuing tokens of `lifetime` for the identity, and a workload-identity source using it.
    async fn workload_identity(&self, lifetime: Duration) -> (EntraStandIn, Arc<dyn TokenSource>) {
        let mut options = EntraOptions::for_server(self.sa_token.clone(), self.db.server());
        options.identity_name = self.identity.clone();
        options.token_lifetime = lifetime;
        let entra = EntraStandIn::start(options).await.expect("entra stand-in");
        let config = CredentialConfig {
            kind: "workload-identity".into(),
            ..CredentialConfig::default()
        };
        let ctx = SourceContext {
            env: Environment::from_pairs(entra.webhook_environment(&self.token_file)),
            azure_client_options: Some(entra.azure_client_options().expect("client options")),
        };
        let source = SourceRegistry::default()
            .build(&config, &ctx)
            .expect("workload-identity source");
        (entra, source)
    }

    fn static_source(password: &str) -> Arc<dyn TokenSource> {
        let config = CredentialConfig {
            kind: "static-password".into(),
            ..CredentialConfig::default()
        };
        let ctx = SourceContext {
            env: Environment::from_pairs([("PGPASSWORD", password)]),
            ..SourceContext::default()
        };
        SourceRegistry::default()
            .build(&config, &ctx)
            .expect("static-password source")
    }

    fn config(&self, mode: Mode, max_connections: u32, max_lifetime_secs: u64) -> Config {
        let user = match mode {
            Mode::Scram => self.scram_role.name.as_str(),
            Mode::Token | Mode::SameCheck => self.identity.as_str(),
        };
        let server = self.db.server();
        let mut config = Config::for_server("127.0.0.1", server.port(), self.db.name(), user);
        config.database.ssl_root_cert = Some(server.ca_file().to_owned());
        config.database.connect_timeout_secs = 120;
        config.database.max_connections = max_connections;
        config.database.max_lifetime_secs = max_lifetime_secs;
        // Tokens of 10 s (figure c): treat them as expired 2 s early, at most a quarter of their life.
        config.credential.expiry_skew_secs = 2;
        config
    }

    /// A pool for `mode`, and the stand-in behind it for workload identity.
    async fn pool(
        &self,
        mode: Mode,
        max_connections: u32,
        max_lifetime_secs: u64,
        token_lifetime: Duration,
    ) -> (RotatingPool, Option<EntraStandIn>) {
        let config = self.config(mode, max_connections, max_lifetime_secs);
        let (entra, source) = match mode {
            Mode::Token => {
                let (entra, source) = self.workload_identity(token_lifetime).await;
                (Some(entra), source)
            }
            Mode::Scram => (None, Self::static_source(&self.scram_role.password)),
            Mode::SameCheck => (None, Self::static_source(&self.long_token)),
        };
        let source: Arc<dyn TokenSource> =
            CachedTokenSource::wrap(source, config.credential.cache_options());
        let pool = Connector::new(&config)
            .source(source)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{} pool: {e}", mode.label()));
        (pool, entra)
    }

    /// Every mode, interleaved round by round, opening `n` new connections at once.
    async fn connections_round(&self, n: usize) -> Vec<ConnectFigures> {
        // About 400 connections per mode and count (at least 3 rounds, at most 20).
        let rounds = (400 / n).clamp(3, 20);
        let mut figures: Vec<ConnectFigures> = Mode::ALL
            .iter()
            .map(|&mode| ConnectFigures {
                mode,
                latencies: Vec::new(),
                walls: Vec::new(),
                token_requests: Vec::new(),
            })
            .collect();
        for _ in 0..rounds {
            for figure in &mut figures {
                let (latencies, wall, requests) = self.new_connections(figure.mode, n).await;
                figure.latencies.extend(latencies);
                figure.walls.push(wall);
                if let Some(requests) = requests {
                    figure.token_requests.push(requests);
                }
            }
        }
        println!("  {n} connections: {rounds} rounds per mode");
        figures
    }

    /// Opens `n` new connections at once through a fresh pool; returns each one's latency, the batch's wall
    /// time and, for workload identity, the token requests the pool made in its whole life.
    async fn new_connections(
        &self,
        mode: Mode,
        n: usize,
    ) -> (Vec<Duration>, Duration, Option<usize>) {
        let (pool, entra) = self
            .pool(mode, n as u32 + 4, 1800, Duration::from_secs(3600))
            .await;
        let pool = Arc::new(pool);
        // Hold every connection the pool has (the first one may still be on its way back to the idle
        // queue, so look twice), so that every acquire below opens a new one.
        let mut idle = vec![pool.acquire().await.expect("the first connection")];
        tokio::time::sleep(Duration::from_millis(50)).await;
        while pool.pool().num_idle() > 0 {
            idle.push(pool.acquire().await.expect("an idle connection"));
        }
        let before = pool.pool().size() as usize;
        let start = Arc::new(tokio::sync::Barrier::new(n + 1));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (pool, start) = (pool.clone(), start.clone());
            tasks.spawn(async move {
                start.wait().await;
                let began = Instant::now();
                let conn = pool.acquire().await;
                (began.elapsed(), conn)
            });
        }
        start.wait().await;
        let began = Instant::now();
        let mut latencies = Vec::with_capacity(n);
        let mut held = Vec::with_capacity(n);
        while let Some(joined) = tasks.join_next().await {
            let (latency, conn) = joined.expect("task");
            let conn =
                conn.unwrap_or_else(|e| panic!("{}: a new connection failed: {e}", mode.label()));
            latencies.push(latency);
            held.push(conn);
        }
        let wall = began.elapsed();
        assert_eq!(
            pool.pool().size() as usize,
            before + n,
            "every acquire opened a connection"
        );
        drop(held);
        drop(idle);
        let requests = entra.as_ref().map(EntraStandIn::request_count);
        Arc::try_unwrap(pool).expect("sole owner").close().await;
        (latencies, wall, requests)
    }

    /// For each mode, `workers` tasks running `SELECT 1` through one pool of as many connections, `duration`
    /// each. The three pools live side by side for the whole run and take turns in slices of [`SLICE`]
    /// (token, scram, same check, token, …), so a change in the machine's load hits all three alike; the
    /// workload-identity pool keeps rotating its token through all of it.
    async fn load(&self, workers: usize, duration: Duration) -> Vec<LoadFigures> {
        let checks_before = self.token_checks().len();
        let mut pools = Vec::new();
        for mode in Mode::ALL {
            pools.push(
                self.pool(
                    mode,
                    workers as u32,
                    ROTATION_MAX_LIFETIME_SECS,
                    ROTATION_TOKEN_LIFETIME,
                )
                .await,
            );
        }
        let pools: Vec<(Arc<RotatingPool>, Option<EntraStandIn>)> = pools
            .into_iter()
            .map(|(pool, entra)| (Arc::new(pool), entra))
            .collect();
        // Which mode runs now (an index into Mode::ALL); None: stop.
        let (turn, _) = tokio::sync::watch::channel(Some(usize::MAX));
        // Successful queries per mode, read at each slice's start and end.
        let counters: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (pool, _)) in pools.iter().enumerate() {
            for _ in 0..workers {
                let (pool, mut turn, counters) = (pool.clone(), turn.subscribe(), counters.clone());
                tasks.spawn(async move {
                    let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None);
                    loop {
                        let now = *turn.borrow_and_update();
                        match now {
                            None => break,
                            Some(active) if active == index => {
                                match sqlx::query_scalar::<_, i32>("SELECT 1")
                                    .fetch_one(pool.pool())
                                    .await
                                {
                                    Ok(_) => {
                                        ok += 1;
                                        counters[index].fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        failed += 1;
                                        first_failure.get_or_insert_with(|| e.to_string());
                                    }
                                }
                            }
                            Some(_) => {
                                if turn.changed().await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    (index, ok, failed, first_failure)
                });
            }
        }
        let mut active = [Duration::ZERO; 3];
        let mut slices: [Vec<f64>; 3] = Default::default();
        while active[0] < duration {
            for (index, spent) in active.iter_mut().enumerate() {
                let slice = SLICE.min(duration.saturating_sub(*spent));
                turn.send_replace(Some(index));
                let (began, before) = (Instant::now(), counters[index].load(Ordering::Relaxed));
                tokio::time::sleep(slice).await;
                let elapsed = began.elapsed();
                let done = counters[index].load(Ordering::Relaxed) - before;
                *spent += elapsed;
                slices[index].push(done as f64 / elapsed.as_secs_f64());
            }
        }
        turn.send_replace(None);
        let results = tasks.join_all().await;
        let mut figures = Vec::new();
        for ((index, mode), (pool, entra)) in Mode::ALL.into_iter().enumerate().zip(pools) {
            let rotations = pool.rotation_stats().rotations;
            Arc::try_unwrap(pool).expect("sole owner").close().await;
            let mine = || results.iter().filter(|r| r.0 == index);
            figures.push(LoadFigures {
                mode,
                queries: mine().map(|r| r.1).sum(),
                failed: mine().map(|r| r.2).sum(),
                first_failure: mine().find_map(|r| r.3.clone()),
                elapsed: active[index],
                slice_qps: std::mem::take(&mut slices[index]),
                token_requests: entra.as_ref().map_or(0, EntraStandIn::request_count),
                rotations,
                logins: 0,
                bad_logins: 0,
            });
        }
        // Token checks are per role: the identity's logins are workload identity's and the same check's.
        let checks: Vec<_> = self
            .token_checks()
            .into_iter()
            .skip(checks_before)
            .collect();
        let token = &mut figures[0];
        token.logins = checks.len();
        token.bad_logins = checks.iter().filter(|c| !c.accepted_unexpired()).count();
        for f in &figures {
            println!(
                "  {workers} workers, {}: {:.0} queries/s over {:.0}s, {} failed",
                f.mode.label(),
                f.qps(),
                f.elapsed.as_secs_f64(),
                f.failed
            );
        }
        figures
    }

    fn token_checks(&self) -> Vec<pgwi_testsupport::TokenCheck> {
        self.db
            .server()
            .token_checks_for(&self.identity)
            .expect("token checks")
    }

    fn report_connections(&self, n: usize, figures: &[ConnectFigures]) {
        let [token, scram, same] = figures else {
            unreachable!("three modes")
        };
        let wall_per_conn = |f: &ConnectFigures| median(&f.walls).as_secs_f64() * 1000.0 / n as f64;
        let p = |f: &ConnectFigures, q: f64| percentile(&f.latencies, q).as_secs_f64() * 1000.0;
        let max_requests = token.token_requests.iter().copied().max().unwrap_or(0);
        let mut rows = vec![];
        if n == 200 {
            rows.push(json!({
                "section": "b", "figure": "token requests for 200 new connections (per pool, max over rounds)",
                "pgwi": max_requests.to_string(), "baseline": "-", "ratio": null,
                "target": "exactly 1", "met": token.token_requests.iter().all(|&r| r == 1),
            }));
        }
        if n == 200 {
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                for baseline in [scram, same] {
                    let ratio = p(token, q) / p(baseline, q);
                    rows.push(json!({
                        "section": "b",
                        "figure": format!("{name} connect latency, 200 concurrent new connections, vs {}", baseline.mode.label()),
                        "pgwi": format!("{:.1} ms", p(token, q)),
                        "baseline": format!("{:.1} ms", p(baseline, q)),
                        "ratio": ratio,
                        "target": "within 5%",
                        "met": ratio <= 1.05,
                    }));
                }
            }
        }
        rows.push(json!({
            "section": "f",
            "figure": format!(
                "{n} concurrent new connections: batch wall per connection (p50 latency {:.1} ms; vs scram {:.1} ms, same check {:.2} ms/conn {:.1} ms)",
                p(token, 0.5), p(scram, 0.5), wall_per_conn(same), p(same, 0.5)
            ),
            "pgwi": format!("{:.2} ms", wall_per_conn(token)),
            "baseline": format!("{:.2} ms", wall_per_conn(scram)),
            "ratio": wall_per_conn(token) / wall_per_conn(scram),
            "target": "flat",
            "met": null,
            "n": n,
            "token_requests_max": max_requests,
            // Numbers for app/benches/plot.py's growth picture.
            "ms_per_connection": {
                "pgwi": wall_per_conn(token), "scram": wall_per_conn(scram), "same_check": wall_per_conn(same),
            },
            "p50_ms": { "pgwi": p(token, 0.5), "scram": p(scram, 0.5), "same_check": p(same, 0.5) },
            "p99_ms": { "pgwi": p(token, 0.99), "scram": p(scram, 0.99), "same_check": p(same, 0.99) },
        }));
        for row in rows {
            self.results.row(row);
        }
    }

    fn report_load(&self, workers: usize, duration: Duration, figures: &[LoadFigures]) {
        let [token, scram, same] = figures else {
            unreachable!("three modes")
        };
        let mut rows = vec![];
        for f in figures {
            if let Some(failure) = &f.first_failure {
                println!("  {} first failure: {failure}", f.mode.label());
            }
        }
        if workers == C_WORKERS {
            for baseline in [scram, same] {
                rows.push(json!({
                    "section": "c",
                    "figure": format!("queries/s (median of 5 s slices), {workers} workers, {}s, 10 s tokens, connections recycled every {ROTATION_MAX_LIFETIME_SECS} s, vs {}", duration.as_secs(), baseline.mode.label()),
                    "pgwi": format!("{:.0}", token.qps()),
                    "baseline": format!("{:.0}", baseline.qps()),
                    "ratio": token.qps() / baseline.qps(),
                    "target": ">= 95%", "met": token.qps() / baseline.qps() >= 0.95,
                }));
            }
            rows.push(json!({
                "section": "c",
                "figure": format!("failed queries (token rotations {}, token requests {}; token-role logins judged {}, refused or expired {})", token.rotations, token.token_requests, token.logins, token.bad_logins),
                "pgwi": token.failed.to_string(),
                "baseline": format!("{} / {}", scram.failed, same.failed),
                "ratio": null,
                "target": "0", "met": token.failed == 0 && token.bad_logins == 0,
            }));
        }
        // Total queries/s is the per-query cost (the machine saturates); per worker is what each sees.
        let show =
            |f: &LoadFigures| format!("{:.0} ({:.0}/worker)", f.qps(), f.qps() / workers as f64);
        rows.push(json!({
            "section": "f",
            "figure": format!(
                "{workers} workers, {}s: queries/s (vs same check: {}, ratio {:.2}; token-role logins {}; failed {})",
                duration.as_secs(), show(same), token.qps() / same.qps(), token.logins, token.failed
            ),
            "pgwi": show(token),
            "baseline": show(scram),
            "ratio": token.qps() / scram.qps(),
            "target": "flat",
            "met": null,
            "workers": workers,
            "ratio_same_check": token.qps() / same.qps(),
            // Numbers for app/benches/plot.py's growth picture.
            "queries_per_s": { "pgwi": token.qps(), "scram": scram.qps(), "same_check": same.qps() },
        }));
        for row in rows {
            self.results.row(row);
        }
    }
}

impl LoadFigures {
    /// The median of the slices' queries/s (a neighbour's burst of load spoils one slice, not the figure);
    /// queries over active time when there were no slices.
    fn qps(&self) -> f64 {
        let mut slices = self.slice_qps.clone();
        if slices.is_empty() {
            return self.queries as f64 / self.elapsed.as_secs_f64();
        }
        slices.sort_by(f64::total_cmp);
        slices[(slices.len() - 1) / 2]
    }
}

fn median(values: &[Duration]) -> Duration {
    percentile(values, 0.5)
}

/// The nearest-rank percentile.
fn percentile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
