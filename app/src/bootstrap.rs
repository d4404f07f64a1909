//! `pgwi admin bootstrap`: the original demo's manual SQL, idempotent, run with an administrator's token.
//!
//! Creates the application's Entra principal with `pgaadauth_create_principal_with_oid` unless the role
//! exists, grants it to the administrator, creates the application database owned by it, makes it owner of
//! schema `public`, and grants it the database. Running it twice changes nothing.

use anyhow::Context as _;
use pgwi_core::{Config, Database};
use pgwi_credentials::CachedTokenSource;
use sea_orm::sqlx;
use std::sync::Arc;

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

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs the bootstrap through `admin` (connected to a maintenance database such as `postgres`); connects to
/// the application database with the same credential for the schema step.
pub async fn run(
    admin: &Database,
    config: &Config,
    credential: Arc<CachedTokenSource>,
    spec: &Bootstrap,
) -> anyhow::Result<Vec<Step>> {
    let pool = admin.pool();
    let mut steps = Vec::new();
    let role = ident(&spec.identity_name);

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
    steps.push(Step {
        what: format!(
            "role {} for object id {}",
            spec.identity_name, spec.object_id
        ),
        changed: !exists,
    });

    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(&spec.identity_name)
        .fetch_one(pool)
        .await?;
    if !member {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("GRANT {role} TO CURRENT_USER")))
            .execute(pool)
            .await
            .context("granting the application role to the administrator")?;
    }
    steps.push(Step {
        what: format!("{} granted to the administrator", spec.identity_name),
        changed: !member,
    });

    let db_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&spec.database)
            .fetch_one(pool)
            .await?;
    if !db_exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {} OWNER {role}",
            ident(&spec.database)
        )))
        .execute(pool)
        .await
        .context("creating the application database")?;
    }
    steps.push(Step {
        what: format!("database {} owned by {}", spec.database, spec.identity_name),
        changed: !db_exists,
    });

    let mut app_config = config.clone();
    app_config.database.name = Some(spec.database.clone());
    app_config.database.max_connections = 1;
    let app_db = pgwi_core::connect_with(&app_config, credential)
        .await
        .with_context(|| format!("connecting to {} as the administrator", spec.database))?;
    let (schema_owner, can_connect_create): (String, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(nspowner)::text, has_database_privilege($1, current_database(), 'CONNECT, CREATE, TEMPORARY')
         FROM pg_namespace WHERE nspname = 'public'",
    )
    .bind(&spec.identity_name)
    .fetch_one(app_db.pool())
    .await?;
    let owns_schema = schema_owner == spec.identity_name;
    if !owns_schema {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER SCHEMA public OWNER TO {role}"
        )))
        .execute(app_db.pool())
        .await
        .context("making the application role owner of schema public")?;
    }
    steps.push(Step {
        what: format!("schema public owned by {}", spec.identity_name),
        changed: !owns_schema,
    });
    if !can_connect_create {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT ALL ON DATABASE {} TO {role}",
            ident(&spec.database)
        )))
        .execute(app_db.pool())
        .await
        .context("granting the database to the application role")?;
    }
    steps.push(Step {
        what: format!(
            "all privileges on database {} granted to {}",
            spec.database, spec.identity_name
        ),
        changed: !can_connect_create,
    });
    app_db.close().await;
    Ok(steps)
}
