//! `pgwi exec [--] COMMAND [ARGS...]`: runs one command with a private proxy, for tools that speak
//! PostgreSQL but not Entra ID (psql, pg_dump, alembic, a test suite) in CI jobs, Kubernetes Jobs and
//! terminals: no sidecar to stop, no port to choose.
//!
//! The proxy listens on a Unix socket in a fresh directory only this OS user can enter (`0700`; on Windows
//! a loopback port the system picks), the command gets `PGHOST`, `PGPORT`, `PGUSER` (the resolved user,
//! also with `user = "auto"`), `PGDATABASE`, `PGSSLMODE=disable` and `DATABASE_URL`, every signal a
//! supervisor sends pgwi is passed on to it, and pgwi exits with its exit status (128+N when a signal N ended
//! it) after stopping the proxy and removing the directory. A command that cannot be started gets a shell's
//! statuses: 127 when it is not found, 126 when it may not be run.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use pgwi_core::config::ConfigSources;
use pgwi_core::proxy::Proxy;
use pgwi_core::proxy::server::{Listen, ProxyServer};
use pgwi_credentials::{SourceContext, SourceRegistry};

use crate::proxy::{ProxyConfig, proxy_options};
use crate::signals::Forwarder;

/// After the command exits, how long sessions it left behind (a background child's) get to end.
const LEFTOVER_SESSIONS_TIMEOUT: Duration = Duration::from_secs(2);
/// A shell's status for a command that is not found.
const NOT_FOUND: u8 = 127;
/// A shell's status for a command that is found but may not be run.
const NOT_EXECUTABLE: u8 = 126;

/// `pgwi exec`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The command and its arguments; `--` before it keeps pgwi from reading its flags
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// `pgwi exec`: the proxy on a private endpoint, the command with its variables, the command's status.
pub async fn execute(sources: &ConfigSources, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let loaded = pgwi_core::config::load(sources)?;
    let section: ProxyConfig = loaded.section("proxy")?;
    let credential = SourceRegistry::default()
        .build_cached(&loaded.config.credential, &SourceContext::default())?;
    let options = proxy_options(
        section.max_clients.max(1),
        Duration::from_secs(section.startup_timeout_secs.max(1)),
        section.end_sessions_after_token_expiry,
    );
    let proxy = Proxy::start_with(&loaded.config, credential, options).await?;
    let user = proxy
        .user()
        .context("the token names no database user; set database.user")?;
    // Before the directory exists: a signal from now on is held for the command, not the end of pgwi.
    let forwarder = Forwarder::install()?;
    let endpoint = PrivateEndpoint::new()?;
    let server = ProxyServer::new(proxy.clone())
        .listen(endpoint.listen())
        .drain_timeout(LEFTOVER_SESSIONS_TIMEOUT)
        .bind()
        .await?;
    let variables = endpoint.variables(&server.addresses()[0], &user, proxy.database());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(
        async {
            let _ = stopped.await;
        },
        std::future::pending(),
    ));
    let status = run(&args.command, &variables, forwarder).await;
    let _ = stop.send(());
    let _ = serving.await;
    endpoint.remove();
    status
}

/// Runs the command with `variables`, passing signals on; its exit status (a shell's for one that cannot
/// be started, after one error line).
async fn run(
    command: &[OsString],
    variables: &[(&str, String)],
    mut forwarder: Forwarder,
) -> anyhow::Result<ExitCode> {
    let (program, arguments) = command.split_first().context("no command given")?;
    let mut child = match tokio::process::Command::new(program)
        .args(arguments)
        .envs(variables.iter().map(|(name, value)| (name, value)))
        // Each would win over PGHOST/PGPORT in libpq (a service file's values come first).
        .env_remove("PGHOSTADDR")
        .env_remove("PGSERVICE")
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return Ok(cannot_start(program, &error)),
    };
    let pid = child.id().unwrap_or_default();
    tracing::info!(command = %program.to_string_lossy(), pid, "command started");
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            () = forwarder.forward_next(pid) => {}
        }
    };
    let code = exit_code(&status);
    tracing::info!(command = %program.to_string_lossy(), %status, exit_status = code, "command ended");
    Ok(ExitCode::from(code))
}

/// One error line, and a shell's status: 127 for a command not found, 126 for one that may not be run.
fn cannot_start(program: &std::ffi::OsStr, error: &std::io::Error) -> ExitCode {
    let program = program.to_string_lossy();
    let (status, fix) = match error.kind() {
        std::io::ErrorKind::NotFound => (
            NOT_FOUND,
            "check its name, install it, or give its full path (PATH is searched)",
        ),
        std::io::ErrorKind::PermissionDenied => (
            NOT_EXECUTABLE,
            "make it executable (chmod +x) or run it through its interpreter",
        ),
        _ => (NOT_FOUND, "check the command"),
    };
    tracing::error!(command = %program, %error, exit_status = status, "the command cannot be started");
    eprintln!("error: pgwi exec cannot start {program:?}: {error}; {fix}");
    ExitCode::from(status)
}

/// The command's exit status as pgwi's: its code, or 128+N when signal N ended it (as a shell reports it).
fn exit_code(status: &std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        // Unix statuses are 0-255; a Windows code above that still means failure.
        return u8::try_from(code).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(255);
        }
    }
    1
}

/// Where the private proxy listens: a fresh `0700` directory holding its socket (removed when dropped), or
/// on Windows a loopback port the system picks.
struct PrivateEndpoint {
    #[cfg(unix)]
    directory: tempfile::TempDir,
}

/// The socket's port number (the `.s.PGSQL.5432` file name; libpq's default).
#[cfg(unix)]
const SOCKET_PORT: u16 = 5432;

impl PrivateEndpoint {
    #[cfg(unix)]
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::Builder::new()
            .prefix("pgwi-exec-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("creating a private directory for the proxy's socket (TMPDIR)")?;
        Ok(Self { directory })
    }

    #[cfg(windows)]
    fn new() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    fn listen(&self) -> Listen {
        Listen::Unix {
            dir: self.directory.path().to_path_buf(),
            port: SOCKET_PORT,
        }
    }

    #[cfg(windows)]
    fn listen(&self) -> Listen {
        Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Removes the socket directory (the proxy has removed its socket already); a failure is a warning.
    fn remove(self) {
        #[cfg(unix)]
        {
            let path = self.directory.path().to_path_buf();
            if let Err(error) = self.directory.close() {
                tracing::warn!(directory = %path.display(), %error, "could not remove the socket directory");
            }
        }
    }

    /// The command's libpq variables and `DATABASE_URL` for the proxy bound at `address` (the socket's path,
    /// or `127.0.0.1:PORT`).
    fn variables(
        &self,
        address: &str,
        user: &str,
        database: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        #[cfg(unix)]
        let (host, port) = {
            let _ = address;
            (
                self.directory.path().to_string_lossy().into_owned(),
                SOCKET_PORT.to_string(),
            )
        };
        #[cfg(windows)]
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.to_owned()),
            None => (address.to_owned(), String::new()),
        };
        let mut variables = vec![
            ("PGHOST", host.clone()),
            ("PGPORT", port.clone()),
            ("PGUSER", user.to_owned()),
            ("PGSSLMODE", "disable".to_owned()),
        ];
        if let Some(database) = database {
            variables.push(("PGDATABASE", database.to_owned()));
        }
        variables.push(("DATABASE_URL", database_url(&host, &port, user, database)));
        variables
    }
}

/// `postgresql://USER@/DATABASE?host=DIR&port=PORT&sslmode=disable` (a socket directory, as libpq, psycopg,
/// SQLAlchemy and sqlx read it), or `postgresql://USER@HOST:PORT/DATABASE?sslmode=disable`.
fn database_url(host: &str, port: &str, user: &str, database: Option<&str>) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let user = encode(user);
    let database = database.map(encode).unwrap_or_default();
    if host.starts_with('/') {
        format!(
            "postgresql://{user}@/{database}?host={}&port={port}&sslmode=disable",
            encode(host)
        )
    } else {
        format!("postgresql://{user}@{host}:{port}/{database}?sslmode=disable")
    }
}
