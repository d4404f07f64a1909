//! Command-line arguments and what each command does. `main` only parses and calls [`dispatch`].

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use pgwi_core::config::{ConfigSources, Overrides, SslMode};
use pgwi_core::{ConfigError, ConnectError};
use pgwi_credentials::{CredentialError, SourceContext, SourceRegistry};

use crate::{bootstrap, doctor, job, migration, token};

/// Passwordless PostgreSQL for Rust programs on Azure.
///
/// Connects with Microsoft Entra ID tokens (AKS workload identity, the az CLI) or a static password,
/// configured by pgwi.toml profiles, the original demo's DBHOST/DBNAME/DBUSER/SSL_MODE, PGWI_* variables and
/// these flags. Exit status: 0 success, 2 configuration error, 1 runtime failure.
#[derive(Debug, Parser)]
#[command(name = "pgwi", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
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
    #[arg(long, global = true, value_parser = parse_sslmode)]
    sslmode: Option<SslMode>,
    /// Token source: auto, workload-identity, az-cli, static-password (overrides credential.kind)
    #[arg(long, global = true, value_name = "KIND")]
    credential: Option<String>,
}

fn parse_sslmode(value: &str) -> Result<SslMode, String> {
    match value {
        "disable" => Ok(SslMode::Disable),
        "prefer" => Ok(SslMode::Prefer),
        "require" => Ok(SslMode::Require),
        "verify-ca" => Ok(SslMode::VerifyCa),
        "verify-full" => Ok(SslMode::VerifyFull),
        other => Err(format!(
            "{other:?} is not one of disable, prefer, require, verify-ca, verify-full"
        )),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The CronJob's job: apply pending migrations, then write the three inventory rows in one transaction
    Run,
    /// Apply, roll back or list the schema's migrations
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
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
    /// Administrator tasks, run with an administrator's token
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Apply every pending migration
    Up,
    /// Roll back the most recent migrations
    Down {
        /// How many to roll back
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations
    Status,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Create the application's Entra principal, its database and grants (idempotent): the original demo's
    /// manual SQL. Connect as the server's Entra administrator (e.g. --profile admin).
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Args)]
struct BootstrapArgs {
    /// The application's managed identity NAME [config: admin.identity_name]
    #[arg(long)]
    identity_name: Option<String>,
    /// The identity's object (principal) id [config: admin.object_id]
    #[arg(long)]
    object_id: Option<String>,
    /// The application database to create [config: admin.app_database]
    #[arg(long)]
    app_database: Option<String>,
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
            app_sections: vec!["admin".into()],
        }
    }
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

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::warn!("SIGTERM received: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted: stopping"),
    }
}

/// Runs the command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = cli.global.sources();
    match cli.command {
        Command::Run => {
            let signal = tokio::spawn(shutdown_signal());
            let mut config = pgwi_core::config::load(&sources)?.config;
            // The job's steps run one after another: a pool of one makes them share ONE physical connection
            // (with more, a step may open a second while the first is still being returned).
            config.database.max_connections = 1;
            let cancelled = async {
                let _ = signal.await;
            };
            tokio::pin!(cancelled);
            let db = tokio::select! {
                db = pgwi_core::connect(&config) => db?,
                () = &mut cancelled => anyhow::bail!(job::RunError::Cancelled),
            };
            let result = job::run(&db, cancelled).await;
            if tokio::time::timeout(std::time::Duration::from_secs(5), db.close())
                .await
                .is_err()
            {
                tracing::warn!("connections did not close within 5 s; exiting anyway");
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { action } => {
            let config = pgwi_core::config::load(&sources)?.config;
            let db = pgwi_core::connect(&config).await?;
            match action {
                MigrateAction::Up => {
                    let applied =
                        migration::migrate_under_lock(db.connection(), migration::Change::Up)
                            .await?;
                    println!("all migrations applied ({applied} new)");
                }
                MigrateAction::Down { steps } => {
                    let rolled_back = migration::migrate_under_lock(
                        db.connection(),
                        migration::Change::Down(steps),
                    )
                    .await?;
                    println!("rolled back {rolled_back} migration(s)");
                }
                MigrateAction::Status => {
                    for (name, applied) in migration::status(&db).await? {
                        println!("{} {name}", if applied { "applied" } else { "pending" });
                    }
                }
            }
            db.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { raw } => {
            let loaded = pgwi_core::config::load_unchecked(&sources)?.config;
            let source =
                SourceRegistry::default().build(&loaded.credential, &SourceContext::default())?;
            let token = source.token().await?;
            if raw {
                println!("{}", token.secret().expose());
            } else {
                print!(
                    "{}",
                    token::describe(source.as_ref(), &token, loaded.database.user.as_deref())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => {
            let report = doctor::run(&sources, &SourceContext::default()).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Admin {
            action: AdminAction::Bootstrap(args),
        } => {
            let loaded = pgwi_core::config::load(&sources)?;
            let admin_config: bootstrap::AdminConfig = loaded.section("admin")?;
            let config = loaded.config;
            let missing = |flag: &str, key: &str| ConfigError::Rejected {
                key: format!("admin.{key}"),
                origin: "nowhere".into(),
                problem: "is not set".into(),
                fix: format!(
                    "pass {flag} or set admin.{key} (PGWI_ADMIN__{})",
                    key.to_ascii_uppercase()
                ),
            };
            let spec = bootstrap::Bootstrap {
                identity_name: args
                    .identity_name
                    .or(admin_config.identity_name.clone())
                    .ok_or_else(|| missing("--identity-name", "identity_name"))?,
                object_id: args
                    .object_id
                    .or(admin_config.object_id.clone())
                    .ok_or_else(|| missing("--object-id", "object_id"))?,
                database: args
                    .app_database
                    .or(admin_config.app_database.clone())
                    .ok_or_else(|| missing("--app-database", "app_database"))?,
            };
            let credential = SourceRegistry::default()
                .build_cached(&config.credential, &SourceContext::default())?;
            let admin = pgwi_core::connect_with(&config, credential.clone()).await?;
            let steps = bootstrap::run(&admin, &config, credential, &spec)
                .await
                .context("bootstrap")?;
            admin.close().await;
            for step in &steps {
                println!(
                    "{} {}",
                    if step.changed { "created" } else { "exists " },
                    step.what
                );
            }
            tracing::info!(
                changed = steps.iter().filter(|s| s.changed).count(),
                "bootstrap done"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
