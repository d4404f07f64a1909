//! Running the built `pgwi` with exactly the environment a test gives it.
//!
//! Every run logs at `RUST_LOG=trace` and its whole output (stdout and stderr) is searched for every
//! password and token the test bench has issued in this process: the suite proves, run by run, that no
//! secret leaves pgwi.

use std::process::{Command, Output, Stdio};

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::jwt::ServiceAccountToken;
use sea_orm::sqlx;

/// `pgwi` with a clean environment: PATH, JSON logs at TRACE, an IMDS address on loopback where nothing
/// listens (no test may ever reach Azure's real metadata address; a test with an IMDS stand-in overrides
/// it), and the variables added with [`Pgwi::env`].
pub(crate) struct Pgwi {
    command: Command,
    /// `pgwi token --raw` prints a token on stdout by design: only stderr is searched then.
    secret_on_stdout: bool,
}

impl Pgwi {
    pub(crate) fn new(args: &[&str]) -> Self {
        Self::program(Command::new(env!("CARGO_BIN_EXE_pgwi")), args)
    }

    /// `pgwi.exe` (the Windows build) run by Wine in `prefix`, with the same environment as [`Self::new`].
    pub(crate) fn under_wine(
        exe: &std::path::Path,
        prefix: &std::path::Path,
        args: &[&str],
    ) -> Self {
        let mut wine = Command::new("wine");
        wine.arg(exe);
        Self::program(wine, args)
            .env("WINEPREFIX", prefix.display().to_string())
            .env("WINEDEBUG", "-all")
    }

    fn program(mut command: Command, args: &[&str]) -> Self {
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGWI_LOG_FORMAT", "json")
            .env("RUST_LOG", "trace")
            .env(
                "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
            )
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null());
        Self {
            command,
            secret_on_stdout: false,
        }
    }

    /// The command prints a secret on stdout by design (`pgwi token --raw`).
    pub(crate) fn prints_a_secret(mut self) -> Self {
        self.secret_on_stdout = true;
        self
    }

    pub(crate) fn env(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.command.env(name.as_ref(), value.as_ref());
        self
    }

    pub(crate) fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.command.envs(vars);
        self
    }

    /// The original CronJob's variables for `db` as `user`, verify-full against the bench's CA.
    pub(crate) fn database(self, db: &TestDatabase, user: &str) -> Self {
        self.env("DBHOST", format!("127.0.0.1:{}", db.server().port()))
            .env("DBNAME", db.name())
            .env("DBUSER", user)
            .env("SSL_MODE", "verify-full")
            .env(
                "PGWI_DATABASE__SSL_ROOT_CERT",
                db.server().ca_file().display().to_string(),
            )
    }

    /// [`Self::database`] as `role`, with its password in `PGPASSWORD`.
    pub(crate) fn with_role(self, db: &TestDatabase, role: &pgwi_testsupport::TestRole) -> Self {
        self.database(db, &role.name)
            .env("PGPASSWORD", &role.password)
    }

    pub(crate) async fn output(mut self) -> Output {
        let secret_on_stdout = self.secret_on_stdout;
        let output = tokio::task::spawn_blocking(move || self.command.output().expect("run pgwi"))
            .await
            .expect("join");
        if secret_on_stdout {
            assert_no_secret_in(&output.stderr);
        } else {
            assert_no_secret(&output);
        }
        output
    }

    /// Starts `pgwi` with its output going to files (a pipe nobody reads would stall a chatty child).
    pub(crate) fn spawn(mut self) -> Spawned {
        let dir = tempfile::tempdir().expect("output dir");
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).expect("output file");
        let child = self
            .command
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("spawn pgwi");
        Spawned { child, dir }
    }
}

/// Fails when any secret the bench issued appears in the output (searched in full, never printed).
pub(crate) fn assert_no_secret(output: &Output) {
    assert_no_secret_in(&output.stdout);
    assert_no_secret_in(&output.stderr);
}

fn assert_no_secret_in(bytes: &[u8]) {
    if let Some(leak) = pgwi_testsupport::secrets::find_leak(&text(bytes)) {
        panic!("{leak}");
    }
}

/// A login role with a scram password on `db`.
pub(crate) async fn scram_role(db: &TestDatabase) -> pgwi_testsupport::TestRole {
    db.create_role(pgwi_testsupport::PasswordAuth::Scram)
        .await
        .expect("role")
}

/// A running `pgwi` whose output is collected in files.
pub(crate) struct Spawned {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

/// A test that fails midway must not leave a long-running `pgwi` (a proxy) behind.
impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Spawned {
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The JSON log lines written so far whose message is `message`.
    pub(crate) fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        let stderr = std::fs::read(self.dir.path().join("stderr")).unwrap_or_default();
        text(&stderr)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|json| json["fields"]["message"] == message)
            .collect()
    }

    /// Waits until `count` log lines say `message` (failing with the output when the process exits or
    /// `limit` passes first); those lines.
    pub(crate) async fn wait_for_log(
        &mut self,
        message: &str,
        count: usize,
        limit: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let until = std::time::Instant::now() + limit;
        loop {
            let lines = self.log_lines(message);
            if lines.len() >= count {
                return lines;
            }
            let exited = self.child.try_wait().expect("pgwi's status");
            // It may have logged the line and exited since the lines were read.
            if exited.is_some() {
                let lines = self.log_lines(message);
                if lines.len() >= count {
                    return lines;
                }
            }
            if exited.is_some() || std::time::Instant::now() > until {
                let stderr = std::fs::read(self.dir.path().join("stderr")).unwrap_or_default();
                assert_no_secret_in(&stderr);
                panic!(
                    "pgwi did not log {message:?} {count} time(s) (exit: {exited:?}):\n{}",
                    text(&stderr)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote on stdout so far.
    pub(crate) fn stdout(&self) -> String {
        text(&std::fs::read(self.dir.path().join("stdout")).unwrap_or_default())
    }

    /// Sends `signal` (`TERM`, `INT`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -s {signal} failed");
    }

    /// Whether the process has exited.
    pub(crate) fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("pgwi's status").is_some()
    }

    /// Waits for the exit and returns the whole output, searched for secrets like [`Pgwi::output`]'s.
    pub(crate) fn wait_with_output(mut self) -> std::io::Result<Output> {
        let status = self.child.wait()?;
        let read = |name: &str| std::fs::read(self.dir.path().join(name));
        let output = Output {
            status,
            stdout: read("stdout")?,
            stderr: read("stderr")?,
        };
        assert_no_secret(&output);
        Ok(output)
    }
}

/// The one `error: …` line `pgwi` prints on failure.
pub(crate) fn error_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with both streams when `output` is not a success.
pub(crate) fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "pgwi failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

pub(crate) async fn inventory(db: &TestDatabase) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT name::text, quantity FROM inventory ORDER BY name")
        .fetch_all(db.admin())
        .await
        .expect("inventory")
}

pub(crate) async fn runs(db: &TestDatabase) -> Vec<(String, i32, String)> {
    sqlx::query_as("SELECT outcome, rows_written, credential_kind FROM job_runs ORDER BY id")
        .fetch_all(db.admin())
        .await
        .expect("job_runs")
}

pub(crate) fn demo_rows() -> Vec<(String, i32)> {
    vec![
        ("apple".into(), 100),
        ("banana".into(), 150),
        ("orange".into(), 154),
    ]
}

/// An Entra stand-in over HTTPS whose tokens `db`'s server accepts for the identity's token role (any
/// unexpired one, as on Azure), plus the projected token file: what a workload-identity pod sees.
pub(crate) struct WorkloadIdentity {
    pub(crate) entra: EntraStandIn,
    pub(crate) identity: String,
    pub(crate) sa_token: String,
    pub(crate) token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkloadIdentity {
    pub(crate) async fn start(db: &TestDatabase) -> Self {
        Self::with_token_lifetime(db, None).await
    }

    /// [`Self::start`] with tokens living `lifetime` (`None`: the stand-in's default).
    pub(crate) async fn with_token_lifetime(
        db: &TestDatabase,
        lifetime: Option<std::time::Duration>,
    ) -> Self {
        let sa_token = ServiceAccountToken::default().encode();
        let dir = tempfile::tempdir().expect("dir");
        let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
        let mut options = EntraOptions::for_server(sa_token.clone(), db.server());
        options.identity_name = format!("{}_app", db.name());
        if let Some(lifetime) = lifetime {
            options.token_lifetime = lifetime;
        }
        let identity = options.identity_name.clone();
        db.create_token_role(&identity)
            .await
            .unwrap_or_else(|e| panic!("the identity's token role: {e}"));
        let entra = EntraStandIn::start(options).await.expect("entra");
        Self {
            entra,
            identity,
            sa_token,
            token_file,
            _dir: dir,
        }
    }

    /// The webhook's variables plus the CA that makes the HTTPS stand-in trusted.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let mut env = self.entra.webhook_environment(&self.token_file);
        env.push((
            "SSL_CERT_FILE".into(),
            self.entra.ca_file().display().to_string(),
        ));
        env
    }
}
