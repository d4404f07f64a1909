//! The demo: pgwi's job on a machine with no Azure and no database (`cargo run -p pgwi --example demo`). Starts a disposable PostgreSQL
//! through pgwi-testsupport, then runs the job twice — with a static password, then with workload identity
//! against the local Entra ID stand-in, given the same environment AKS injects — and prints the rows and the
//! token refreshes it saw.
//!
//! The identity's role is a token role: the server accepts any unexpired token the stand-in signed for it,
//! as Azure does. Where the server cannot check tokens (the native backend not running as root), the demo
//! says so and falls back to making each issued token the role's password.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pgwi_core::Config;
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, Environment, SourceContext, SourceRegistry,
};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, IssuedToken, write_token_file};
use pgwi_testsupport::jwt::ServiceAccountToken;
use pgwi_testsupport::{PasswordAuth, TestDatabase, TestPostgres, TestSupportError};

use pgwi::job;

fn config_for(db: &TestDatabase, user: &str) -> Config {
    let mut config = Config::for_server("127.0.0.1", db.server().port(), db.name(), user);
    config.database.ssl_root_cert = Some(db.server().ca_file().to_owned());
    config.database.application_name = "pgwi-demo".into();
    config
}

async fn run_job(
    title: &str,
    config: &Config,
    credential: Arc<CachedTokenSource>,
) -> anyhow::Result<()> {
    println!("\n== {title}");
    let db = pgwi_core::connect_with(config, credential).await?;
    let summary = job::run(&db, std::future::pending()).await?;
    println!(
        "run {} wrote {} rows as {}",
        summary.run_id,
        summary.rows_written,
        db.user()
    );
    for (name, quantity) in job::inventory(&db).await? {
        println!("  {name:<8} {quantity}");
    }
    if db.rotation_stats().current_expiry.is_some() {
        // Tokens here live 6 s and are refreshed 4 s before expiry: wait for one refresh to show it.
        tokio::time::sleep(Duration::from_millis(2600)).await;
    }
    let stats = db.rotation_stats();
    println!(
        "token fetches: {}, pool password rotations: {}, current token expires: {}",
        stats.credential.upstream_fetches,
        stats.rotations,
        stats
            .current_expiry
            .map_or_else(|| "never (static password)".to_owned(), |e| e.to_string())
    );
    db.close().await;
    Ok(())
}

/// Runs the demo.
async fn run() -> anyhow::Result<()> {
    let server = TestPostgres::shared().context("starting a disposable PostgreSQL")?;
    println!(
        "PostgreSQL: {} ({})",
        format_args!("{}:{}", server.host(), server.port()),
        server.description()
    );
    let db = server.fresh_database().await?;

    // 1. A static password, as on a developer's machine.
    let role = db.create_role(PasswordAuth::Scram).await?;
    let static_config = CredentialConfig {
        kind: "static-password".into(),
        ..CredentialConfig::default()
    };
    let ctx = SourceContext {
        env: Environment::from_pairs([("PGPASSWORD", role.password.as_str())]),
        ..SourceContext::default()
    };
    let source = SourceRegistry::default().build_cached(&static_config, &ctx)?;
    run_job("static-password", &config_for(&db, &role.name), source).await?;

    // 2. Workload identity, against the local Entra ID stand-in, with the variables AKS's webhook injects,
    //    into a database of its own (as a fresh Azure database would be).
    let db = Arc::new(server.fresh_database().await?);
    let sa_token = ServiceAccountToken::default().encode();
    let dir = tempfile::tempdir()?;
    let token_file = write_token_file(dir.path(), &sa_token)?;
    let identity = format!("{}_app", db.name());
    // The stand-in's "Azure": the identity is a token role, so the server accepts every unexpired token the
    // stand-in signs for it.
    let token_roles = match db.create_token_role(&identity).await {
        Ok(()) => true,
        Err(TestSupportError::NoTokenChecks(why)) => {
            println!(
                "\nnote: this server cannot check tokens ({why}); each issued token becomes the role's \
                 password instead"
            );
            false
        }
        Err(e) => return Err(e.into()),
    };
    let mut options = if token_roles {
        EntraOptions::for_server(sa_token, server)
    } else {
        EntraOptions::new(sa_token)
    };
    options.identity_name = identity;
    options.token_lifetime = Duration::from_secs(6);
    let entra = EntraStandIn::start(options).await?;
    if !token_roles {
        let hook_db = db.clone();
        entra.set_on_issue(Arc::new(move |issued: IssuedToken| {
            let db = hook_db.clone();
            Box::pin(async move {
                if let Err(e) = db
                    .ensure_role(
                        &issued.identity_name,
                        &issued.token,
                        PasswordAuth::Cleartext,
                    )
                    .await
                {
                    tracing::error!(error = %e, "the demo could not accept a token");
                }
            })
        }));
    }
    let webhook_env = entra.webhook_environment(&token_file);
    println!("\nworkload identity environment (as the AKS webhook injects it):");
    for (name, value) in &webhook_env {
        println!("  {name}={value}");
    }
    let wi_config = CredentialConfig {
        kind: "workload-identity".into(),
        ..CredentialConfig::default()
    };
    let ctx = SourceContext {
        env: Environment::from_pairs(webhook_env),
        azure_client_options: Some(entra.azure_client_options()?),
    };
    let source = SourceRegistry::default().build(&wi_config, &ctx)?;
    let credential = Arc::new(CachedTokenSource::new(
        source,
        CacheOptions {
            refresh_margin: Duration::from_secs(4),
            fetch_timeout: Duration::from_secs(2),
            ..CacheOptions::default()
        },
    ));
    // Short demo tokens: a skew below the cache's 4 s margin (pgwi checks the two against each other).
    let mut wi_run_config = config_for(&db, "auto");
    wi_run_config.credential.expiry_skew_secs = 1;
    run_job(
        "workload-identity (local Entra ID stand-in)",
        &wi_run_config,
        credential,
    )
    .await?;
    println!(
        "\nEntra stand-in issued {} tokens; the same code runs in AKS with `pgwi run`.",
        entra.issued_tokens().len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgwi::telemetry::init(
        "info,sqlx::postgres::notice=warn",
        pgwi::telemetry::LogFormat::detect(),
    );
    pgwi_credentials::install_crypto_provider();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}
