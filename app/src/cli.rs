//! Command-line arguments, and which module runs each command. `main` only parses and calls [`dispatch`].

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pgwi_core::config::{ConfigSources, Overrides, SslMode};
use pgwi_core::{ConfigError, ConnectError};
use pgwi_credentials::CredentialError;

use crate::{bootstrap, doctor, exec, job, migration, proxy, token};

/// Passwordless PostgreSQL on Azure: Microsoft Entra ID tokens instead of stored passwords.
///
/// Gets a token from AKS workload identity, a managed identity, a service principal (client secret or
/// certificate), a GitHub Actions job, the az or azd CLI, or uses a static password locally (--credential;
/// `auto` tries them in order and says which it chose). Configured by pgwi.toml profiles, the original
/// demo's DBHOST/DBNAME/DBUSER/SSL_MODE, PGWI_* variables and these flags. `pgwi doctor` checks a setup and
/// names the fix; `pgwi proxy` serves any client (psql, Python, Go). Exit status: 0 success, 2
/// configuration error, 1 runtime failure.
#[derive(Debug, Parser)]
#[command(name = "pgwi", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (every command)")]
struct GlobalArgs {
    /// Configuration file [default: $PGWI_CONFIG, else ./pgwi.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Profile of the configuration file [default: $PGWI_PROFILE, else default]
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Server host, or host:port (overrides database.host)
    #[arg(long, global = true)]
    host: Option<String>,
    /// Server port (overrides database.port)
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Database name (overrides database.name)
    #[arg(long = "database", global = true, value_name = "NAME")]
    database: Option<String>,
    /// Database user: the managed identity's name, or auto (overrides database.user)
    #[arg(long, global = true)]
    user: Option<String>,
    /// disable, prefer, require, verify-ca or verify-full (overrides database.sslmode)
    #[arg(long, global = true, value_parser = clap::builder::ValueParser::new(<SslMode as std::str::FromStr>::from_str))]
    sslmode: Option<SslMode>,
    // The kinds come from the registry, so a new kind shows here without an edit.
    #[arg(long, global = true, value_name = "KIND", help = credential_help())]
    credential: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The CronJob's job: apply pending migrations, then write the three inventory rows in one transaction
    Run,
    /// Apply, roll back or list the schema's migrations
    Migrate {
        #[command(subcommand)]
        action: migration::Action,
    },
    /// Get a token from the configured source and describe it (never printing it unless --raw)
    Token {
        /// Print the token alone, for PGPASSWORD=$(pgwi token --raw) psql ...
        #[arg(long)]
        raw: bool,
    },
    /// Check configuration, credential, network, TLS, login and privileges, with a fix for each failure
    Doctor {
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// A local PostgreSQL endpoint for any client (psql, Python, Go, pg_dump): each session is logged in
    /// to the configured server with a fresh token; SIGTERM drains
    ///
    /// Clients connect without a password, as the configured user (database.user; `auto` derives it
    /// from the token), over loopback or a Unix socket: `psql -h 127.0.0.1 -U <user> <database>`. The
    /// server is reached with TLS per database.sslmode (verify-full by default) and its authentication
    /// answered with a token valid at that moment (cleartext, as Azure asks an Entra principal; or
    /// SCRAM-SHA-256 with a static password). Configuration: the [proxy] section (listen, healthz,
    /// allow_remote, local_password_file, local_password_env, tls_cert_file, tls_key_file,
    /// channel_binding, max_clients, startup_timeout_secs, socket_mode, min_sigterm_delay_secs,
    /// drain_timeout_secs, quitquitquit, run_connection_test, end_sessions_after_token_expiry); flags
    /// override it. Exit status 0 after a stop by SIGTERM, SIGINT or POST /quitquitquit (what Cloud SQL
    /// Auth Proxy calls --exit-zero-on-sigterm is the default here), 2 for a configuration error, 1 when
    /// the connection test or the start fails.
    Proxy(proxy::ProxyArgs),
    /// Run a command with a private proxy: `pgwi exec -- psql`, `pgwi exec -- pg_dump app > app.sql`
    ///
    /// The proxy listens on a Unix socket in a fresh directory only this OS user can enter (on Windows, a
    /// loopback port), and the command gets PGHOST, PGPORT, PGUSER (the resolved user, also with `auto`),
    /// PGDATABASE, PGSSLMODE=disable and DATABASE_URL pointing at it, so any libpq-based tool or driver
    /// connects without a password. Signals pgwi gets are passed on to the command (a terminal's Ctrl-C
    /// reaches it directly). pgwi exits with the command's exit status (128+N if signal N ended it; 127 if
    /// it is not found, 126 if it may not be run) after stopping the proxy and removing the directory.
    /// The [proxy] section's max_clients, startup_timeout_secs and end_sessions_after_token_expiry apply.
    Exec(exec::ExecArgs),
    /// Administrator tasks, run with an administrator's token
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Create the application's Entra principal, its database and grants (idempotent): the original demo's
    /// manual SQL. Connect as the server's Entra administrator (e.g. --profile admin).
    Bootstrap(bootstrap::BootstrapArgs),
}

/// `--credential`'s help: every kind this build has.
fn credential_help() -> String {
    format!(
        "Token source: {} (overrides credential.kind)",
        pgwi_credentials::SourceRegistry::default()
            .kinds()
            .join(", ")
    )
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: `pgwi exec` shares the terminal with its command, so only
    /// its own start and end lines and warnings; the others say what they do at `info`.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Exec(_) => "warn,pgwi::exec=info",
            _ => "info,sqlx::postgres::notice=warn",
        }
    }
}

impl GlobalArgs {
    fn sources(&self) -> ConfigSources {
        ConfigSources {
            file: self.config.clone(),
            profile: self.profile.clone(),
            overrides: Overrides {
                host: self.host.clone(),
                port: self.port,
                name: self.database.clone(),
                user: self.user.clone(),
                sslmode: self.sslmode,
                credential_kind: self.credential.clone(),
            },
            demo_variables: true,
            app_sections: vec!["admin".into(), "proxy".into()],
        }
    }
}

/// The one line `pgwi` prints for a failure: a server error with a known SQLSTATE as the server's words, the
/// code and what to do; anything else as its chain of causes with the repeats (SeaORM wraps sqlx's error
/// and prints it again) left out; then the binary's own hint ([`crate::hints`]).
pub fn describe_error(error: &anyhow::Error) -> String {
    let description = describe_cause(error);
    match crate::hints::for_error(error) {
        Some(hint) => format!("{description}; {hint}"),
        None => description,
    }
}

/// The error in one line: the server's words and pgwi-core's fix for a SQLSTATE it knows, else each cause
/// once.
fn describe_cause(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(db) = database_error(cause)
            && let Some(code) = db.code()
            && let Some(server) = pgwi_core::ConnectError::for_sqlstate(&code, db.message())
        {
            return format!("{error}: {server}");
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|seen| seen.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The SQLSTATE a cause carries: pgwi-core's classified server error, or the server's own inside an sqlx or
/// SeaORM error.
pub(crate) fn sqlstate_in(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(ConnectError::Server { code, .. }) = cause.downcast_ref::<ConnectError>() {
        return Some(code.clone());
    }
    database_error(cause)
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// The server's error inside an sqlx or SeaORM error, if there is one.
fn database_error<'a>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a dyn sea_orm::sqlx::error::DatabaseError> {
    use sea_orm::{DbErr, RuntimeErr};
    let sqlx_error = cause.downcast_ref::<sea_orm::sqlx::Error>().or_else(|| {
        match cause.downcast_ref::<DbErr>()? {
            DbErr::Exec(RuntimeErr::SqlxError(e))
            | DbErr::Query(RuntimeErr::SqlxError(e))
            | DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(&**e),
            _ => None,
        }
    })?;
    sqlx_error.as_database_error()
}

/// Exit status for an error: 2 when the fix is in configuration, else 1.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<ConfigError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<ConnectError>() {
            return if e.is_configuration() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<CredentialError>() {
            return if e.is_configuration() { 2 } else { 1 };
        }
    }
    1
}

/// Runs the command: each lives in its own module.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = cli.global.sources();
    match cli.command {
        Command::Run => job::execute(&sources).await,
        Command::Migrate { action } => migration::execute(&sources, action).await,
        Command::Token { raw } => token::execute(&sources, raw).await,
        Command::Doctor { json } => doctor::execute(&sources, json).await,
        Command::Proxy(args) => proxy::execute(&sources, args).await,
        Command::Exec(args) => exec::execute(&sources, args).await,
        Command::Admin {
            action: AdminAction::Bootstrap(args),
        } => bootstrap::execute(&sources, args).await,
    }
}
