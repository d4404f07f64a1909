//! `pgwi admin bootstrap`: the original demo's manual SQL, idempotent, run with an administrator's token.
//!
//! Creates the application's Entra principal with `pgaadauth_create_principal_with_oid` unless the role
//! exists, grants it to the administrator, creates the application database owned by it, makes it owner of
//! schema `public`, and grants it the database. Running it twice changes nothing.

use anyhow::Context as _;
use pgwi_core::{Config, RotatingPool};
use pgwi_credentials::CachedTokenSource;
use sea_orm::sqlx::{self, PgPool};
use std::sync::Arc;

/// The `admin` section of the configuration: the application identity that `pgwi admin bootstrap` creates
/// on the server (each key can also be given as a flag).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The application's managed identity NAME (the role to create).
    pub identity_name: Option<String>,
    /// Its object (principal) id.
    pub object_id: Option<String>,
    /// The application database to create, owned by that role.
    pub app_database: Option<String>,
}

/// What to bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The managed identity's name: the role to create.
    pub identity_name: String,
    /// The identity's object (principal) id.
    pub object_id: String,
    /// The application database.
    pub database: String,
}

/// Each step and whether it changed something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does.
    pub what: String,
    /// True when it changed something, false when it was already so.
    pub changed: bool,
}

/// PostgreSQL truncates names to 63 bytes; a longer one would silently name something else.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 63 {
        anyhow::bail!(
            "the {what} {name:?} is {} bytes; PostgreSQL names are 1 to 63 bytes (longer ones are \
             truncated): choose a shorter name",
            name.len()
        );
    }
    Ok(())
}

fn ident(name: &str) -> String {
    use sea_orm::sea_query::{Alias, IntoIden as _, PostgresQueryBuilder, QuotedBuilder as _};
    // sea-query's own quoting, as in every statement SeaORM builds (an owned name is escaped).
    let mut quoted = String::new();
    PostgresQueryBuilder.prepare_iden(&Alias::new(name).into_iden(), &mut quoted);
    quoted
}

/// Runs the bootstrap through `admin` (connected to a maintenance database such as `postgres`); connects to
/// the application database with the same credential for the schema step.
pub async fn run(
    admin: &RotatingPool,
    config: &Config,
    credential: Arc<CachedTokenSource>,
    spec: &Bootstrap,
) -> anyhow::Result<Vec<Step>> {
    check_name("identity name", &spec.identity_name)?;
    check_name("database name", &spec.database)?;
    let pool = admin.pool();
    let mut steps = vec![
        ensure_principal(pool, spec).await?,
        ensure_membership(pool, spec).await?,
        ensure_database(pool, spec).await?,
    ];
    let mut app_config = config.clone();
    app_config.database.name = Some(spec.database.clone());
    app_config.database.max_connections = 1;
    let app_db = pgwi_core::connect_with(&app_config, credential)
        .await
        .with_context(|| format!("connecting to {} as the administrator", spec.database))?;
    steps.push(ensure_schema_owner(app_db.pool(), spec).await?);
    // Each privilege on its own: has_database_privilege with a list is true when ANY is held, and PUBLIC
    // holds CONNECT and TEMPORARY by default.
    for privilege in ["CONNECT", "CREATE", "TEMPORARY"] {
        steps.push(ensure_privilege(app_db.pool(), spec, privilege).await?);
    }
    app_db.close().await;
    Ok(steps)
}

/// The Entra principal (`pgaadauth_create_principal_with_oid`), unless the role exists.
async fn ensure_principal(pool: &PgPool, spec: &Bootstrap) -> anyhow::Result<Step> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(&spec.identity_name)
            .fetch_one(pool)
            .await?;
    if !exists {
        sqlx::query(
            "SELECT * FROM pgaadauth_create_principal_with_oid($1, $2, 'service', false, false)",
        )
        .bind(&spec.identity_name)
        .bind(&spec.object_id)
        .execute(pool)
        .await
        .context("creating the Entra principal (is the admin the server's Entra administrator?)")?;
    }
    Ok(Step {
        what: format!(
            "role {} for object id {}",
            spec.identity_name, spec.object_id
        ),
        changed: !exists,
    })
}

/// The administrator becomes a member of the application role (to create a database it owns).
async fn ensure_membership(pool: &PgPool, spec: &Bootstrap) -> anyhow::Result<Step> {
    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(&spec.identity_name)
        .fetch_one(pool)
        .await?;
    if !member {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT {} TO CURRENT_USER",
            ident(&spec.identity_name)
        )))
        .execute(pool)
        .await
        .context("granting the application role to the administrator")?;
    }
    Ok(Step {
        what: format!("{} granted to the administrator", spec.identity_name),
        changed: !member,
    })
}

/// The application database, owned by the application role; one owned by another role is an error.
async fn ensure_database(pool: &PgPool, spec: &Bootstrap) -> anyhow::Result<Step> {
    let role = ident(&spec.identity_name);
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(&spec.database)
    .fetch_optional(pool)
    .await?;
    if let Some(owner) = owner.as_ref().filter(|owner| **owner != spec.identity_name) {
        anyhow::bail!(
            "✗ database {:?} exists but is owned by {owner:?}, not {:?}; fix: as its owner or an \
             administrator run `ALTER DATABASE {} OWNER TO {role}`, or bootstrap another database name",
            spec.database,
            spec.identity_name,
            ident(&spec.database)
        );
    }
    if owner.is_none() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {} OWNER {role}",
            ident(&spec.database)
        )))
        .execute(pool)
        .await
        .context("creating the application database")?;
    }
    Ok(Step {
        what: format!("database {} owned by {}", spec.database, spec.identity_name),
        changed: owner.is_none(),
    })
}

/// Schema `public` of the application database owned by the application role.
async fn ensure_schema_owner(app: &PgPool, spec: &Bootstrap) -> anyhow::Result<Step> {
    let schema_owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'public'",
    )
    .fetch_one(app)
    .await?;
    let owns_schema = schema_owner == spec.identity_name;
    if !owns_schema {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER SCHEMA public OWNER TO {}",
            ident(&spec.identity_name)
        )))
        .execute(app)
        .await
        .context("making the application role owner of schema public")?;
    }
    Ok(Step {
        what: format!("schema public owned by {}", spec.identity_name),
        changed: !owns_schema,
    })
}

/// One database privilege for the application role.
async fn ensure_privilege(app: &PgPool, spec: &Bootstrap, privilege: &str) -> anyhow::Result<Step> {
    let held: bool =
        sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), $2)")
            .bind(&spec.identity_name)
            .bind(privilege)
            .fetch_one(app)
            .await?;
    if !held {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT {privilege} ON DATABASE {} TO {}",
            ident(&spec.database),
            ident(&spec.identity_name)
        )))
        .execute(app)
        .await
        .with_context(|| format!("granting {privilege} on the database to the application role"))?;
    }
    Ok(Step {
        what: format!(
            "{privilege} on database {} granted to {}",
            spec.database, spec.identity_name
        ),
        changed: !held,
    })
}

/// `pgwi admin bootstrap`'s flags; each falls back to the `admin` section of the configuration.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The application's managed identity NAME [config: admin.identity_name]
    #[arg(long)]
    pub identity_name: Option<String>,
    /// The identity's object (principal) id [config: admin.object_id]
    #[arg(long)]
    pub object_id: Option<String>,
    /// The application database to create [config: admin.app_database]
    #[arg(long)]
    pub app_database: Option<String>,
}

impl BootstrapArgs {
    /// The flags over the `admin` section; a missing value is a configuration error naming both.
    fn resolve(self, admin: AdminConfig) -> Result<Bootstrap, pgwi_core::ConfigError> {
        let missing = |flag: &str, key: &str| {
            pgwi_core::ConfigError::rejected(
                format!("admin.{key}"),
                "nowhere",
                "is not set",
                format!(
                    "pass {flag} or set admin.{key} (PGWI_ADMIN__{})",
                    key.to_ascii_uppercase()
                ),
            )
        };
        Ok(Bootstrap {
            identity_name: self
                .identity_name
                .or(admin.identity_name)
                .ok_or_else(|| missing("--identity-name", "identity_name"))?,
            object_id: self
                .object_id
                .or(admin.object_id)
                .ok_or_else(|| missing("--object-id", "object_id"))?,
            database: self
                .app_database
                .or(admin.app_database)
                .ok_or_else(|| missing("--app-database", "app_database"))?,
        })
    }
}

/// `pgwi admin bootstrap`: prints one line per step, `created` or `exists`.
pub async fn execute(
    sources: &pgwi_core::config::ConfigSources,
    args: BootstrapArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let loaded = pgwi_core::config::load(sources)?;
    let spec = args.resolve(loaded.section("admin")?)?;
    let config = loaded.config;
    let credential = pgwi_credentials::SourceRegistry::default().build_cached(
        &config.credential,
        &pgwi_credentials::SourceContext::default(),
    )?;
    let admin = pgwi_core::connect_with(&config, credential.clone()).await?;
    let steps = run(&admin, &config, credential, &spec)
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
    Ok(std::process::ExitCode::SUCCESS)
}
